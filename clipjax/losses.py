"""Contrastive losses: the readable references every kernel is tested against.

Embeddings arrive L2-normalised; `logit_scale` is the multiplier itself (exp of the
learned log-scale, as open_clip passes it). Under `jit` with batch-sharded inputs,
GSPMD gathers the columns, so each loss equals the single-device loss on the global batch.
"""
import jax
import jax.numpy as jnp


def _check(implementation):
  if implementation != 'xla':
    raise ValueError(f'clipjax.losses: implementation={implementation!r} is not available; use "xla".')


def _logits(a, b, scale):
  return scale * jnp.einsum('id,jd->ij', a, b, preferred_element_type=jnp.float32)


def clip_loss(image_emb, text_emb, logit_scale, *, implementation='xla'):
  """Symmetric InfoNCE: mean of image->text and text->image cross-entropy."""
  _check(implementation)
  logits = _logits(image_emb, text_emb, logit_scale)
  labels = jnp.arange(logits.shape[0])
  diag = logits[labels, labels]
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias, *, implementation='xla'):
  """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023), summed over pairs / batch size."""
  _check(implementation)
  logits = _logits(image_emb, text_emb, logit_scale) + logit_bias
  n = logits.shape[0]
  signs = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n


def affinity_mimicking_loss(student_img, student_txt, teacher_img, teacher_txt,
                            student_scale, teacher_scale, *, implementation='xla'):
  """TinyCLIP affinity mimicking: soft-target CE of student affinities vs the teacher's.

  ½·CE(softmax_row(student) | softmax_row(teacher)) + ½·the same over columns
  (text->image), each a mean over rows. The teacher is a fixed target: no gradient
  reaches its embeddings or scale (TinyCLIP runs it under no_grad).
  """
  _check(implementation)
  teacher_img, teacher_txt, teacher_scale = jax.lax.stop_gradient(
      (teacher_img, teacher_txt, teacher_scale))
  student = _logits(student_img, student_txt, student_scale)
  teacher = _logits(teacher_img, teacher_txt, teacher_scale)

  def soft_ce(s, t):
    return jnp.mean(-jnp.sum(jax.nn.softmax(t, axis=1) * jax.nn.log_softmax(s, axis=1), axis=1))

  return 0.5 * (soft_ce(student, teacher) + soft_ce(student.T, teacher.T))
