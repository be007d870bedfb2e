"""Losses assembled from tiled statistics, on one device or sharded over the batch.

With a mesh whose batch axes (`data`, `fsdp`) have more than one device, each device
keeps its rows and, with `collective='gather'`, all-gathers the columns (O(B*D) per
device, never B x B). Row statistics are then complete locally; column statistics are
partial over the local rows and are merged across devices with a log-sum-exp all-reduce
of O(B) floats; gradients flow back through the collectives (the gather's transpose is a
reduce-scatter of the column gradients). `collective='ring'` passes column blocks around
the devices instead (ring.py): O(n*D) per device for n local rows. Either equals the
single-device loss on the global batch.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clipjax.kernels import chunked
from clipjax.kernels import ring

BATCH_AXES = ('data', 'fsdp')
IMPLEMENTATIONS = ('auto', 'xla', 'chunked', 'pallas')
COLLECTIVES = ('gather', 'ring')


def resolve(implementation, collective='gather'):
  """'auto' -> the tiled XLA path on every backend: on an H100 it beat the Pallas kernels
  (1.2-3x slower than XLA's B x B version) and matched or beat XLA (kernels/README.md)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation={implementation!r}; expected one of {IMPLEMENTATIONS}')
  if collective not in COLLECTIVES:
    raise ValueError(f'collective={collective!r}; expected one of {COLLECTIVES}')
  if collective == 'ring' and implementation == 'xla':
    raise ValueError("collective='ring' needs a tiled implementation ('auto', 'chunked' or "
                     "'pallas'); 'xla' leaves the collectives to GSPMD")
  return 'chunked' if implementation == 'auto' else implementation


def _ops(implementation, collective):
  resolve(implementation, collective)
  if implementation == 'pallas':
    from clipjax.kernels import pallas_losses  # pylint: disable=g-import-not-at-top
    return pallas_losses
  return chunked


def _batch_axes(mesh):
  """Mesh axes (of `mesh`, or else the one set by jax.set_mesh) that split the batch."""
  context = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  if context is None or context.empty:
    return ()
  return tuple(a for a in BATCH_AXES if a in context.axis_names and context.shape[a] > 1)


def _run(body, args, replicated, mesh, num_rows, implementation):
  """Sums body(*args, *replicated, axes=...) over devices under shard_map, or calls it.

  Each device returns its partial sum (a varying value), so autodiff through the
  collectives inside is exact whether or not shard_map checks varying axes: Pallas
  interpret mode cannot run with check_vma on, compiled kernels and XLA can.
  """
  axes = _batch_axes(mesh)
  if not axes:
    return body(*args, *replicated, axes=())
  context = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  shards = 1
  for a in axes:
    shards *= context.shape[a]
  if num_rows % shards:
    raise ValueError(f'clipjax.kernels: batch of {num_rows} rows does not split over mesh '
                     f'axes {axes} ({shards} shards)')
  spec = P(axes)
  check_vma = True
  if implementation == 'pallas':
    from clipjax.kernels import target  # pylint: disable=g-import-not-at-top
    check_vma = not target.current()[1]
  fn = jax.shard_map(lambda *a: body(*a, axes=axes)[None], mesh=mesh,
                     in_specs=(spec,) * len(args) + (P(),) * len(replicated), out_specs=spec,
                     check_vma=check_vma)
  return jnp.sum(fn(*args, *replicated))


def _gather(a, axes):
  return jax.lax.all_gather(a, axes, tiled=True) if axes else a


def _psum(a, axes):
  return jax.lax.psum(a, axes) if axes else a


def _offset(n, axes):
  return (jax.lax.axis_index(axes) * n).astype(jnp.int32) if axes else jnp.int32(0)


def _combine_lse(v, axes):
  """Log-sum-exp of per-device partial LSEs (an all-reduce of O(B) floats)."""
  if not axes:
    return v
  m = jax.lax.pmax(jax.lax.stop_gradient(v), axes)
  return m + jnp.log(jax.lax.psum(jnp.exp(v - m), axes))


def _mine(v, n, axes):
  """This device's slice of a gathered per-column vector."""
  return jax.lax.dynamic_slice_in_dim(v, _offset(n, axes), n) if axes else v


def clip_loss(image_emb, text_emb, logit_scale, *, implementation, mesh=None, block=None,
              collective='gather'):
  """Symmetric InfoNCE from the tiled (row, column) log-sum-exps."""
  ops = _ops(implementation, collective)
  block = block or ops.default_block()
  num = image_emb.shape[0]

  def body(x, y, scale, axes):
    if collective == 'ring' and axes:
      (row_lse,), (col_lse,) = ring.ring_stats('contrastive', ops, block, axes, (x,), (y,),
                                               (scale,))
    else:
      row_lse, col_lse = ops.contrastive_stats(x, _gather(y, axes), scale, block)
      col_lse = _mine(_combine_lse(col_lse, axes), x.shape[0], axes)
    diag = scale * jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32), axis=1)
    return 0.5 * jnp.sum(row_lse + col_lse - 2 * diag) / num

  return _run(body, (image_emb, text_emb), (jnp.asarray(logit_scale, jnp.float32),), mesh, num,
              implementation)


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias, *, implementation, mesh=None,
                block=None, collective='gather'):
  """Sigmoid loss: per-row sums over the tiles, positives on the global diagonal."""
  ops = _ops(implementation, collective)
  block = block or ops.default_block()
  num = image_emb.shape[0]

  def body(x, y, scale, bias, axes):
    if collective == 'ring' and axes:
      (rows,), _ = ring.ring_stats('sigmoid', ops, block, axes, (x,), (y,), (scale, bias))
    else:
      rows = ops.sigmoid_rows(x, _gather(y, axes), scale, bias, _offset(x.shape[0], axes),
                              block)
    return jnp.sum(rows) / num

  replicated = (jnp.asarray(logit_scale, jnp.float32), jnp.asarray(logit_bias, jnp.float32))
  return _run(body, (image_emb, text_emb), replicated, mesh, num, implementation)


def affinity_mimicking_loss(student_img, student_txt, teacher_img, teacher_txt, student_scale,
                            teacher_scale, *, implementation, mesh=None, block=None,
                            collective='gather'):
  """TinyCLIP soft-target CE, both directions, from one pass over student and teacher tiles."""
  ops = _ops(implementation, collective)
  block = block or ops.default_block()
  num = student_img.shape[0]

  def body(xs, ys, xt, yt, s_scale, t_scale, axes):
    if collective == 'ring' and axes:
      row, col = ring.ring_stats('affinity', ops, block, axes, (xs, xt), (ys, yt),
                                 (s_scale, t_scale))
      return 0.5 * jnp.sum(row[0] - row[2] + col[0] - col[2]) / num
    n = xs.shape[0]
    row, col = ops.affinity_stats(xs, _gather(ys, axes), xt, _gather(yt, axes),
                                  s_scale, t_scale, block)
    col_s, col_t, col_w = col
    full_t = _combine_lse(col_t, axes)
    col_w = _psum(jax.lax.stop_gradient(jnp.exp(col_t - full_t)) * col_w, axes)
    col_s = _combine_lse(col_s, axes)
    row_ce = jnp.sum(row[0] - row[2])
    col_ce = jnp.sum(_mine(col_s, n, axes) - _mine(col_w, n, axes))
    return 0.5 * (row_ce + col_ce) / num

  replicated = (jnp.asarray(student_scale, jnp.float32),
                jax.lax.stop_gradient(jnp.asarray(teacher_scale, jnp.float32)))
  args = (student_img, student_txt) + jax.lax.stop_gradient((teacher_img, teacher_txt))
  return _run(body, args, replicated, mesh, num, implementation)
