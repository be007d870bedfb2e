"""Pure-XLA tiled loss statistics: no B x B array in the forward or the backward pass.

Every loss here is a function of per-row and per-column statistics of an implicit logit
matrix `L = scale * x @ y.T`. `_sweep` visits it tile by tile (outer `lax.scan` over row
blocks, inner over column blocks) and merges tile statistics online; the custom VJPs
save only the inputs and the O(B) statistics, and `_sweep_grad` recomputes each tile.
Peak memory is O(B*D + block^2). Rows and columns are padded to the block and masked.

The per-tile maths (`*_tile`, `*_grad_tile`) is shared with the Pallas kernels.
Tile functions take (scalars, sims, [row aux, col aux,] rid, cid): sims are the tile's
x_i.y_j products, one per (row, column) operand pair (the student's, then the teacher's
for affinity), computed by the caller (Pallas accumulates them over feature chunks);
rid / cid are (global ids, valid mask) of the tile's rows / columns.
"""
import functools

import jax
import jax.numpy as jnp

NEG = -1e30  # finite "-inf": a fully masked row gives garbage, never NaN, and is sliced off
DEFAULT_BLOCK = 1024
GPU_BLOCK = 8192  # H100: 0.87-0.94x the B x B XLA time at B = 16k (kernels/README.md)


def default_block():
  """Tile edge: large on GPU, where a tile is one big matmul and the scan steps are
  launches; cache-sized on CPU."""
  return GPU_BLOCK if jax.default_backend() == 'gpu' else DEFAULT_BLOCK


def dot_t(a, b):
  """a @ b.T accumulated in float32."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def block_size(n, block):
  """The tile edge for `n` rows: `block`, or `n` rounded up to 8 when smaller."""
  return min(block, -(-n // 8) * 8)


def lse(x, axis):
  """Log-sum-exp over `axis` of a masked (NEG-filled) tile."""
  m = jnp.max(x, axis=axis, keepdims=True)
  return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(x - m), axis=axis))


def merge_weighted(acc, new):
  """Merges (lse, softmax-weighted mean) pairs: the online rescaling of flash attention."""
  (l1, w1), (l2, w2) = acc, new
  l = jnp.logaddexp(l1, l2)
  return l, jnp.exp(l1 - l) * w1 + jnp.exp(l2 - l) * w2


def valid(rid, cid):
  return rid[1][:, None] & cid[1][None, :]


# ---------------------------------------------------------------- per-tile maths


def sims_of(rows, cols):
  """The x.y tile of every (row, column) operand pair."""
  return tuple(dot_t(r, c) for r, c in zip(rows, cols))


def contrastive_tile(scalars, sims, rid, cid):
  """Row and column LSE of one tile of L = scale * x @ y.T."""
  logits = jnp.where(valid(rid, cid), scalars[0] * sims[0], NEG)
  return (lse(logits, 1),), (lse(logits, 0),)


def contrastive_merge(acc, new):
  return (jnp.logaddexp(acc[0], new[0]),)


def contrastive_grad_tile(scalars, sims, raux, caux, rid, cid):
  """dLoss/dL = gr_i softmax_row + gc_j softmax_col; extras: row sums of G * x.y."""
  sim = sims[0]
  logits = scalars[0] * sim
  (r, gr), (c, gc) = raux, caux
  g = gr[:, None] * jnp.exp(logits - r[:, None]) + gc[None, :] * jnp.exp(logits - c[None, :])
  g = jnp.where(valid(rid, cid), g, 0.0)
  return g, (jnp.sum(g * sim, 1),)


def _sigmoid_logits(scalars, sims, rid, cid):
  """x.y, logits and labels z (+1 on the global diagonal, -1 elsewhere) of one tile."""
  sim = sims[0]
  z = jnp.where(rid[0][:, None] == cid[0][None, :], 1.0, -1.0)
  return sim, scalars[0] * sim + scalars[1], z


def sigmoid_tile(scalars, sims, rid, cid):
  """Row and column sums of -log sigmoid(z * logits) over one tile."""
  _, logits, z = _sigmoid_logits(scalars, sims, rid, cid)
  loss = jnp.where(valid(rid, cid), jax.nn.softplus(-z * logits), 0.0)
  return (jnp.sum(loss, 1),), (jnp.sum(loss, 0),)


def sum_merge(acc, new):
  return tuple(a + b for a, b in zip(acc, new))


def sigmoid_grad_tile(scalars, sims, raux, caux, rid, cid):
  """Cotangents per row (raux) and/or per column (caux); extras: row sums of G*x.y and G."""
  sim, logits, z = _sigmoid_logits(scalars, sims, rid, cid)
  cot = raux[0][:, None] + caux[0][None, :]
  g = jnp.where(valid(rid, cid), -z * jax.nn.sigmoid(-z * logits) * cot, 0.0)
  return g, (jnp.sum(g * sim, 1), jnp.sum(g, 1))


def _affinity_logits(scalars, sims, rid, cid):
  """x.y of the student, its logits (raw, masked) and the masked teacher logits."""
  sim = sims[0]
  ok = valid(rid, cid)
  student = scalars[0] * sim
  teacher = jnp.where(ok, scalars[1] * sims[1], NEG)
  return sim, student, jnp.where(ok, student, NEG), teacher


def affinity_tile(scalars, sims, rid, cid):
  """(student LSE, teacher LSE, teacher-softmax-weighted student logit) per row and column."""
  _, student, masked, teacher = _affinity_logits(scalars, sims, rid, cid)

  def stats(axis):
    t_lse = lse(teacher, axis)
    p = jnp.exp(teacher - jnp.expand_dims(t_lse, axis))
    return lse(masked, axis), t_lse, jnp.sum(p * student, axis)

  return stats(1), stats(0)


def affinity_merge(acc, new):
  return (jnp.logaddexp(acc[0], new[0]),) + merge_weighted(acc[1:], new[1:])


def affinity_grad_tile(scalars, sims, raux, caux, rid, cid):
  """Student logit gradient: cotangents of (s_lse, w) per row and per column."""
  sim, student, _, teacher = _affinity_logits(scalars, sims, rid, cid)
  (rs, rt, g_rs, g_rw), (cs, ct, g_cs, g_cw) = raux, caux
  g = (g_rs[:, None] * jnp.exp(student - rs[:, None])
       + g_rw[:, None] * jnp.exp(teacher - rt[:, None])
       + g_cs[None, :] * jnp.exp(student - cs[None, :])
       + g_cw[None, :] * jnp.exp(teacher - ct[None, :]))
  g = jnp.where(valid(rid, cid), g, 0.0)
  return g, (jnp.sum(g * sim, 1),)


# ---------------------------------------------------------------- tiled sweeps


def _blocks(a, block):
  """[n, ...] -> [n_blocks, block, ...], zero-padded."""
  pad = -a.shape[0] % block
  a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
  return a.reshape((-1, block) + a.shape[1:])


def _ids(i, block, n, offset=0):
  local = i * block + jnp.arange(block)
  return offset + local, local < n


def like(refs, tree):
  """`tree` typed as varying over every mesh axis the refs vary over.

  Under shard_map, scan carries and custom-VJP operands must agree on which mesh axes
  they vary over; casting a replicated scale to varying makes autodiff psum its gradient.
  """
  varying = lambda a: jax.typeof(a).manual_axis_type.varying
  vma = set().union(*(varying(r) for r in jax.tree.leaves(refs)))

  def cast(a):
    a = jnp.asarray(a)
    missing = tuple(sorted(vma - varying(a)))
    return jax.lax.pcast(a, missing, to='varying') if missing else a

  return jax.tree.map(cast, tree)


def _sweep(tile_fn, merge_fn, init, rows, cols, n, m, block, row_offset=0):
  """Merged statistics of every tile: (row stats [n]..., col stats [m]...).

  tile_fn(sims, rid, cid) returns (row_stats, col_stats), tuples of [block]
  vectors; merge_fn(acc, new) combines two such tuples; init is its identity element.
  """
  br, bc = block_size(n, block), block_size(m, block)
  rows = tuple(_blocks(a, br) for a in rows)
  cols = tuple(_blocks(a, bc) for a in cols)
  nbr, nbc = rows[0].shape[0], cols[0].shape[0]
  full = lambda shape: like((rows, cols, row_offset),
                            tuple(jnp.full(shape, v, jnp.float32) for v in init))

  def outer(col_acc, xs):
    i, row_blk = xs
    rid = _ids(i, br, n, row_offset)

    def inner(row_acc, ys):
      j, col_blk, col_acc_j = ys
      row_new, col_new = tile_fn(sims_of(row_blk, col_blk), rid, _ids(j, bc, m))
      return merge_fn(row_acc, row_new), merge_fn(col_acc_j, col_new)

    row_acc, col_acc = jax.lax.scan(inner, full((br,)), (jnp.arange(nbc), cols, col_acc))
    return col_acc, row_acc

  col_acc, row_acc = jax.lax.scan(outer, full((nbc, bc)), (jnp.arange(nbr), rows))
  return tuple(a.reshape(-1)[:n] for a in row_acc), tuple(a.reshape(-1)[:m] for a in col_acc)


def _sweep_grad(tile_fn, rows, cols, row_aux, col_aux, n, m, block, num_extras, row_offset=0):
  """Recomputes every tile's logit gradient G; returns (G @ y, G.T @ x, extras).

  x = rows[0] and y = cols[0] receive gradients; row_aux / col_aux are per-row /
  per-column vectors (saved statistics, cotangents); tile_fn returns (G, per-row extras),
  and the extras are summed to scalars.
  """
  br, bc = block_size(n, block), block_size(m, block)
  rows = tuple(_blocks(a, br) for a in rows)
  cols = tuple(_blocks(a, bc) for a in cols)
  row_aux = tuple(_blocks(a, br) for a in row_aux)
  col_aux = tuple(_blocks(a, bc) for a in col_aux)
  nbr, nbc = rows[0].shape[0], cols[0].shape[0]
  refs = (rows, cols, row_aux, col_aux, row_offset)

  def outer(carry, xs):
    dy, extras = carry
    i, row_blk, raux = xs
    rid = _ids(i, br, n, row_offset)

    def inner(carry, ys):
      dx, extras = carry
      j, col_blk, caux, dy_j = ys
      g, tile_extras = tile_fn(sims_of(row_blk, col_blk), raux, caux, rid, _ids(j, bc, m))
      dx = dx + g @ col_blk[0].astype(jnp.float32)
      dy_j = dy_j + g.T @ row_blk[0].astype(jnp.float32)
      return (dx, tuple(a + jnp.sum(b) for a, b in zip(extras, tile_extras))), dy_j

    dx0 = like(refs, jnp.zeros((br, rows[0].shape[-1]), jnp.float32))
    (dx, extras), dy = jax.lax.scan(inner, (dx0, extras), (jnp.arange(nbc), cols, col_aux, dy))
    return (dy, extras), dx

  dy0 = jnp.zeros((nbc, bc, cols[0].shape[-1]), jnp.float32)
  extras0 = tuple(jnp.zeros((), jnp.float32) for _ in range(num_extras))
  carry0 = like(refs, (dy0, extras0))
  (dy, extras), dx = jax.lax.scan(outer, carry0, (jnp.arange(nbr), rows, row_aux))
  return dx.reshape(-1, dx.shape[-1])[:n], dy.reshape(-1, dy.shape[-1])[:m], extras


def cast_like(g, x):
  return g.astype(x.dtype).reshape(jnp.shape(x))


# ---------------------------------------------------------------- public statistics


def contrastive_stats(x, y, scale, block=DEFAULT_BLOCK):
  """(row_lse [n], col_lse [m]) of L = scale * x @ y.T, in float32."""
  return _contrastive_stats(x, y, like((x, y), jnp.asarray(scale, jnp.float32)), block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _contrastive_stats(x, y, scale, block):
  return _contrastive_fwd(x, y, scale, block)[0]


def _contrastive_fwd(x, y, scale, block):
  tile = functools.partial(contrastive_tile, (scale,))
  (r,), (c,) = _sweep(tile, contrastive_merge, (NEG,), (x,), (y,), x.shape[0], y.shape[0], block)
  return (r, c), (x, y, scale, r, c)


def _contrastive_bwd(block, res, cot):
  x, y, scale, r, c = res
  tile = functools.partial(contrastive_grad_tile, (scale,))
  dx, dy, (ds,) = _sweep_grad(tile, (x,), (y,), (r, cot[0]), (c, cot[1]),
                              x.shape[0], y.shape[0], block, 1)
  return cast_like(scale * dx, x), cast_like(scale * dy, y), cast_like(ds, scale)


_contrastive_stats.defvjp(_contrastive_fwd, _contrastive_bwd)


def sigmoid_rows(x, y, scale, bias, row_offset, block=DEFAULT_BLOCK):
  """Per-row sum_j -log sigmoid(z_ij (scale x_i.y_j + bias)), z = +1 iff row_offset+i == j."""
  scalars = like((x, y), (jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)))
  return _sigmoid_rows(x, y, scalars, like((x, y), jnp.asarray(row_offset, jnp.int32)), block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_rows(x, y, scalars, row_offset, block):
  return _sigmoid_fwd(x, y, scalars, row_offset, block)[0]


def _sigmoid_fwd(x, y, scalars, row_offset, block):
  tile = functools.partial(sigmoid_tile, scalars)
  (rows,), _ = _sweep(tile, sum_merge, (0.0,), (x,), (y,), x.shape[0], y.shape[0], block,
                      row_offset)
  return rows, (x, y, scalars, row_offset)


def _sigmoid_bwd(block, res, g_rows):
  x, y, scalars, row_offset = res
  tile = functools.partial(sigmoid_grad_tile, scalars)
  g_cols = like(g_rows, jnp.zeros((y.shape[0],), jnp.float32))
  dx, dy, (ds, db) = _sweep_grad(tile, (x,), (y,), (g_rows,), (g_cols,), x.shape[0], y.shape[0],
                                 block, 2, row_offset)
  scale = scalars[0]
  return (cast_like(scale * dx, x), cast_like(scale * dy, y),
          (cast_like(ds, scale), cast_like(db, scalars[1])), None)


_sigmoid_rows.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def affinity_stats(xs, ys, xt, yt, s_scale, t_scale, block=DEFAULT_BLOCK):
  """Row and column statistics of student S = s_scale xs@ys.T and teacher T = t_scale xt@yt.T.

  Returns ((s_lse, t_lse, w) per row, the same per column), w = sum_j softmax(T)_j S_j, so
  the soft-target CE of a row is s_lse - w. The teacher gets no gradient.
  """
  scalars = like((xs, ys, xt, yt),
                 (jnp.asarray(s_scale, jnp.float32), jnp.asarray(t_scale, jnp.float32)))
  return _affinity_stats(xs, ys, xt, yt, scalars, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _affinity_stats(xs, ys, xt, yt, scalars, block):
  return _affinity_fwd(xs, ys, xt, yt, scalars, block)[0]


def _affinity_fwd(xs, ys, xt, yt, scalars, block):
  tile = functools.partial(affinity_tile, scalars)
  row, col = _sweep(tile, affinity_merge, (NEG, NEG, 0.0), (xs, xt), (ys, yt),
                    xs.shape[0], ys.shape[0], block)
  return (row, col), (xs, ys, xt, yt, scalars, row, col)


def _affinity_bwd(block, res, cot):
  xs, ys, xt, yt, scalars, row, col = res
  (g_rs, _, g_rw), (g_cs, _, g_cw) = cot
  tile = functools.partial(affinity_grad_tile, scalars)
  dx, dy, (ds,) = _sweep_grad(tile, (xs, xt), (ys, yt), (row[0], row[1], g_rs, g_rw),
                              (col[0], col[1], g_cs, g_cw), xs.shape[0], ys.shape[0], block, 1)
  s_scale = scalars[0]
  return (cast_like(s_scale * dx, xs), cast_like(s_scale * dy, ys), jnp.zeros_like(xt),
          jnp.zeros_like(yt), (cast_like(ds, s_scale), jnp.zeros_like(scalars[1])))


_affinity_stats.defvjp(_affinity_fwd, _affinity_bwd)

def config(block):
  """The statistics' non-differentiable configuration (PASSES' `block` argument)."""
  return block


# Each statistic's (forward, backward) for callers that split the sweep over devices (ring.py);
# their `block` argument is config(block).
PASSES = {'contrastive': (_contrastive_fwd, _contrastive_bwd),
          'sigmoid': (_sigmoid_fwd, _sigmoid_bwd),
          'affinity': (_affinity_fwd, _affinity_bwd)}
