"""Contrastive and distillation losses behind one `implementation=` switch.

Embeddings arrive L2-normalised; `logit_scale` is the multiplier itself (exp of the
learned log-scale, as open_clip passes it). Implementations:
  'xla'      the readable references below; B x B logits, GSPMD gathers columns under jit.
  'chunked'  tiled XLA with custom VJPs (clipjax/kernels/chunked.py): O(B*D) memory.
  'pallas'   Pallas kernels (clipjax/kernels/pallas_losses.py): Triton on a GPU, Mosaic
             on a TPU, interpret mode on a CPU; the least memory, but slower than
             'chunked' on an H100.
  'auto'     'chunked' everywhere (1024-row tiles on CPU/TPU, 8192 on GPU).
The lean paths run per device under `shard_map` when a mesh with batch axes (`data`,
`fsdp`) is passed or set with `jax.set_mesh`, where `collective` says how columns meet
rows: 'gather' (all-gather, O(B*D) per device) or 'ring' (blocks passed around the
devices, O(B*D / devices)); every path equals the single-device loss on the global
batch. See clipjax/kernels/README.md.
"""
import jax
import jax.numpy as jnp

from clipjax.kernels import fused


def _logits(a, b, scale):
  return scale * jnp.einsum('id,jd->ij', a, b, preferred_element_type=jnp.float32)


def clip_loss(image_emb, text_emb, logit_scale, *, implementation='auto', mesh=None,
              collective='gather'):
  """Symmetric InfoNCE: mean of image->text and text->image cross-entropy."""
  implementation = fused.resolve(implementation, collective)
  if implementation != 'xla':
    return fused.clip_loss(image_emb, text_emb, logit_scale, implementation=implementation,
                           mesh=mesh, collective=collective)
  logits = _logits(image_emb, text_emb, logit_scale)
  labels = jnp.arange(logits.shape[0])
  diag = logits[labels, labels]
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias, *, implementation='auto',
                mesh=None, collective='gather'):
  """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023), summed over pairs / batch size."""
  implementation = fused.resolve(implementation, collective)
  if implementation != 'xla':
    return fused.siglip_loss(image_emb, text_emb, logit_scale, logit_bias,
                             implementation=implementation, mesh=mesh, collective=collective)
  logits = _logits(image_emb, text_emb, logit_scale) + logit_bias
  n = logits.shape[0]
  signs = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n


def simclr_loss(a, b, temperature):
  """SLIP's image-image NT-Xent over the global batch: row i of `a` is scored against
  every row of `b` and every other row of `a` (its own similarity masked), its positive
  is row i of `b`; the same from `b`'s side; the mean of both cross-entropies. `a`, `b`
  L2-normalised [N, D]."""
  n = a.shape[0]
  labels = jnp.arange(n)
  self_mask = jnp.eye(n, dtype=bool)

  def side(x, y):
    xy = _logits(x, y, 1.0 / temperature)
    xx = jnp.where(self_mask, -1e9, _logits(x, x, 1.0 / temperature))
    logits = jnp.concatenate([xy, xx], axis=1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - xy[labels, labels])
  return 0.5 * (side(a, b) + side(b, a))


def byol_loss(online, target):
  """BYOL's regression, 2 - 2 cos(online, target) averaged over rows; no gradient into
  `target`."""
  target = jax.lax.stop_gradient(target)
  normalise = lambda x: x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
  cos = jnp.sum(normalise(online.astype(jnp.float32)) * normalise(target.astype(jnp.float32)), -1)
  return jnp.mean(2.0 - 2.0 * cos)


def affinity_mimicking_loss(student_img, student_txt, teacher_img, teacher_txt,
                            student_scale, teacher_scale, *, implementation='auto', mesh=None,
                            collective='gather'):
  """TinyCLIP affinity mimicking: soft-target CE of student affinities vs the teacher's.

  ½·CE(softmax_row(student) | softmax_row(teacher)) + ½·the same over columns
  (text->image), each a mean over rows. The teacher is a fixed target: no gradient
  reaches its embeddings or scale (TinyCLIP runs it under no_grad).
  """
  implementation = fused.resolve(implementation, collective)
  if implementation != 'xla':
    return fused.affinity_mimicking_loss(
        student_img, student_txt, teacher_img, teacher_txt, student_scale, teacher_scale,
        implementation=implementation, mesh=mesh, collective=collective)
  teacher_img, teacher_txt, teacher_scale = jax.lax.stop_gradient(
      (teacher_img, teacher_txt, teacher_scale))
  student = _logits(student_img, student_txt, student_scale)
  teacher = _logits(teacher_img, teacher_txt, teacher_scale)

  def soft_ce(s, t):
    return jnp.mean(-jnp.sum(jax.nn.softmax(t, axis=1) * jax.nn.log_softmax(s, axis=1), axis=1))

  return 0.5 * (soft_ce(student, teacher) + soft_ce(student.T, teacher.T))
