"""Sharded loss statistics by a ring: column blocks travel between devices, none is gathered.

The gather path (fused.py) holds every device's columns at once, O(B*D) per device. Here
(Inf-CL, Liu et al. 2024) each of the S devices keeps its n rows and passes its column
block, with that block's running column statistics, to the next device S-1 times; every
device merges the tile statistics of its rows against the block in hand. After the last
step each block's column statistics are complete and one more hop takes them home.
Per-device memory is O(n*D) forward and backward; the hop that sends the next block does
not depend on the tile work of the current one, so the scheduler can overlap them.

The backward pass is a second ring: the tile gradient of a loss written in (row, column)
statistics is a function of the *final* statistics and their cotangents (e.g. for CLIP
G_ij = g_i e^{L_ij - r_i} + g_j e^{L_ij - c_j}), so each step calls the implementation's
own backward with the final statistics of its rows and of the block in hand. dy travels
with its block and arrives home with the last hop; it is summed in float32 (each step's
part comes in the embeddings' dtype, as the implementation's backward returns it).
"""
import functools

import jax
import jax.numpy as jnp

from clipjax.kernels import chunked as ck


def _adapters(ops, cfg):
  """(forward, backward, merge, init, has_columns) per statistic, over `ops`'s passes
  (`cfg`: ops.config(block), fixed when the forward is traced).

  forward(rows, cols, scalars, offset) -> (row stats, column stats), tuples of vectors;
  backward(rows, cols, scalars, offset, row, col, g_row, g_col) -> (dx, dy, dscalars);
  offset is the global row id of local row 0 minus that of the block's column 0.
  """
  cf, cb = ops.PASSES['contrastive']
  sf, sb = ops.PASSES['sigmoid']
  af, ab = ops.PASSES['affinity']

  def contrastive_fwd(rows, cols, scalars, offset):
    (r, c), _ = cf(rows[0], cols[0], scalars[0], cfg)
    return (r,), (c,)

  def contrastive_bwd(rows, cols, scalars, offset, row, col, g_row, g_col):
    dx, dy, ds = cb(cfg, (rows[0], cols[0], scalars[0], row[0], col[0]), (g_row[0], g_col[0]))
    return dx, dy, (ds,)

  def sigmoid_fwd(rows, cols, scalars, offset):
    return (sf(rows[0], cols[0], scalars, offset, cfg)[0],), ()

  def sigmoid_bwd(rows, cols, scalars, offset, row, col, g_row, g_col):
    dx, dy, dscalars, _ = sb(cfg, (rows[0], cols[0], scalars, offset), g_row[0])
    return dx, dy, dscalars

  def affinity_fwd(rows, cols, scalars, offset):
    return af(*rows[:1], *cols[:1], *rows[1:], *cols[1:], scalars, cfg)[0]

  def affinity_bwd(rows, cols, scalars, offset, row, col, g_row, g_col):
    grads = ab(cfg, (rows[0], cols[0], rows[1], cols[1], scalars, row, col), (g_row, g_col))
    return grads[0], grads[1], grads[4]

  return {
      'contrastive': (contrastive_fwd, contrastive_bwd, ck.contrastive_merge, (ck.NEG,), True),
      'sigmoid': (sigmoid_fwd, sigmoid_bwd, ck.sum_merge, (0.0,), False),
      'affinity': (affinity_fwd, affinity_bwd, ck.affinity_merge, (ck.NEG, ck.NEG, 0.0), True),
  }


def ring_stats(statistic, ops, block, axes, rows, cols, scalars):
  """Complete (row stats of the local rows, column stats of the local columns).

  Runs inside shard_map over `axes`; rows / cols are tuples of local [n, D] operands
  (student first, then teacher for affinity), scalars a tuple of float32 scalars.
  """
  spec = _adapters(ops, ops.config(block))[statistic]
  rows, cols, scalars = ck.like((rows, cols), (tuple(rows), tuple(cols), tuple(scalars)))
  return _ring(spec, axes, rows, cols, scalars)


def _topology(axes, n):
  """(ring size, hop: a tree sent to the next device, offset: step s -> the global row id
  of local row 0 minus that of the first column of the block in hand)."""
  size = jax.lax.axis_size(axes)
  me = jax.lax.axis_index(axes)
  perm = [(i, (i + 1) % size) for i in range(size)]
  hop = lambda tree: jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), tree)
  offset = lambda s: ((me - (me - s) % size) * n).astype(jnp.int32)
  return size, hop, offset


def _steps(step, carry, size):
  """Runs step(carry, s, last) for s = 0..size-1; only the last one skips sending the block."""
  if size > 1:
    carry, _ = jax.lax.scan(lambda c, s: (step(c, s, False), None), carry, jnp.arange(size - 1))
  return step(carry, jnp.int32(size - 1), True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ring(spec, axes, rows, cols, scalars):
  return _ring_fwd(spec, axes, rows, cols, scalars)[0]


def _ring_fwd(spec, axes, rows, cols, scalars):
  forward, _, merge, init, has_columns = spec
  n, m = rows[0].shape[0], cols[0].shape[0]
  size, hop, offset = _topology(axes, n)
  full = lambda k: ck.like((rows, cols), tuple(jnp.full((k,), v, jnp.float32) for v in init))

  def step(carry, s, last):
    row, block, col = carry
    nxt = block if last else hop(block)
    row_new, col_new = forward(rows, block, scalars, offset(s))
    col = hop(merge(col, col_new)) if has_columns else col
    return merge(row, row_new), nxt, col

  row, _, col = _steps(step, (full(n), cols, full(m) if has_columns else ()), size)
  return (row, col), (rows, cols, scalars, row, col)


def _ring_bwd(spec, axes, res, cot):
  _, backward, _, _, has_columns = spec
  rows, cols, scalars, row, col = res
  g_row, g_col = cot
  size, hop, offset = _topology(axes, rows[0].shape[0])
  if not has_columns:
    g_col = ()
  zeros = lambda a: ck.like((rows, cols), jnp.zeros(a.shape, jnp.float32))

  def step(carry, s, last):
    dx, dscalars, (block, col_k, g_col_k), dy = carry
    travelling = (block, col_k, g_col_k)
    nxt = travelling if last else hop(travelling)
    ddx, ddy, dsc = backward(rows, block, scalars, offset(s), row, col_k, g_row, g_col_k)
    dy = hop(dy + ddy.astype(jnp.float32))
    dscalars = tuple(a + b.astype(jnp.float32) for a, b in zip(dscalars, dsc))
    return dx + ddx.astype(jnp.float32), dscalars, nxt, dy

  carry = (zeros(rows[0]), tuple(zeros(s) for s in scalars), (cols, col, g_col), zeros(cols[0]))
  dx, dscalars, _, dy = _steps(step, carry, size)
  d_rows = (dx.astype(rows[0].dtype),) + tuple(jnp.zeros_like(a) for a in rows[1:])
  d_cols = (dy.astype(cols[0].dtype),) + tuple(jnp.zeros_like(a) for a in cols[1:])
  d_scalars = tuple(d.astype(s.dtype) for d, s in zip(dscalars, scalars))
  return d_rows, d_cols, d_scalars


_ring.defvjp(_ring_fwd, _ring_bwd)
