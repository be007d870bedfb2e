"""Pure-XLA tiled loss statistics: no B x B array in the forward or the backward pass.

Every loss here is a function of per-row and per-column statistics of an implicit logit
matrix `L = scale * x @ y.T`. `_sweep` visits it tile by tile (outer `lax.scan` over row
blocks, inner over column blocks) and merges tile statistics online; the custom VJPs
save only the inputs and the O(B) statistics and recompute each tile in `_sweep_grad`.
Peak memory is O(B*D + block^2). Rows and columns are padded to the block and masked.
"""
import functools

import jax
import jax.numpy as jnp

NEG = -1e30  # finite "-inf": a fully masked row gives garbage, never NaN, and is sliced off
DEFAULT_BLOCK = 1024


def _dot(a, b):
  return jnp.einsum('id,jd->ij', a, b, preferred_element_type=jnp.float32)


def block_size(n, block):
  """The tile edge for `n` rows: `block`, or `n` rounded up to 8 when smaller."""
  return min(block, -(-n // 8) * 8)


def _blocks(a, block):
  """[n, ...] -> [n_blocks, block, ...], zero-padded."""
  n = a.shape[0]
  pad = -n % block
  a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
  return a.reshape((-1, block) + a.shape[1:])


def _ids(i, block, n):
  ids = i * block + jnp.arange(block)
  return ids, ids < n


def lse(x, axis):
  """Log-sum-exp over `axis` of a masked (NEG-filled) tile."""
  m = jnp.max(x, axis=axis, keepdims=True)
  return (m + jnp.log(jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def merge_lse(a, b):
  return jnp.logaddexp(a, b)


def merge_weighted(acc, new):
  """Merges (lse, softmax-weighted mean) pairs: the online rescaling of flash attention."""
  (l1, w1), (l2, w2) = acc, new
  l = jnp.logaddexp(l1, l2)
  return l, jnp.exp(l1 - l) * w1 + jnp.exp(l2 - l) * w2


def _sweep(tile_fn, merge_fn, init, rows, cols, n, m, block_r, block_c):
  """Merged statistics of every tile: (row stats [n]..., col stats [m]...).

  tile_fn(row_blocks, col_blocks, (row_ids, row_valid), (col_ids, col_valid)) returns
  (row_stats, col_stats), tuples of [block] vectors; merge_fn(acc, new) combines two
  tuples (row and column stats share one merge); init is the identity element.
  """
  rows = tuple(_blocks(a, block_r) for a in rows)
  cols = tuple(_blocks(a, block_c) for a in cols)
  nbr, nbc = rows[0].shape[0], cols[0].shape[0]

  def outer(col_acc, xs):
    i, row_blk = xs
    rid = _ids(i, block_r, n)

    def inner(row_acc, ys):
      j, col_blk, col_acc_j = ys
      row_new, col_new = tile_fn(row_blk, col_blk, rid, _ids(j, block_c, m))
      return merge_fn(row_acc, row_new), merge_fn(col_acc_j, col_new)

    row_init = _like((rows, cols), tuple(jnp.full((block_r,), v, jnp.float32) for v in init))
    row_acc, col_acc = jax.lax.scan(inner, row_init, (jnp.arange(nbc), cols, col_acc))
    return col_acc, row_acc

  col_init = _like((rows, cols), tuple(jnp.full((nbc, block_c), v, jnp.float32) for v in init))
  col_acc, row_acc = jax.lax.scan(outer, col_init, (jnp.arange(nbr), rows))
  return (tuple(a.reshape(-1)[:n] for a in row_acc), tuple(a.reshape(-1)[:m] for a in col_acc))


def _sweep_grad(tile_fn, rows, cols, row_aux, col_aux, n, m, block_r, block_c, num_extras):
  """Recomputes every tile's logit gradient G; returns (G @ y, G.T @ x, extras).

  x = rows[0] and y = cols[0] are the embeddings that receive gradients; row_aux /
  col_aux are per-row / per-column vectors (saved statistics, cotangents) that tile_fn
  needs; tile_fn returns (G [block_r, block_c] f32, tuple of `num_extras` scalars).
  """
  rows = tuple(_blocks(a, block_r) for a in rows)
  cols = tuple(_blocks(a, block_c) for a in cols)
  row_aux = tuple(_blocks(a, block_r) for a in row_aux)
  col_aux = tuple(_blocks(a, block_c) for a in col_aux)
  nbr, nbc = rows[0].shape[0], cols[0].shape[0]

  def outer(carry, xs):
    dy, extras = carry
    i, row_blk, raux = xs
    rid = _ids(i, block_r, n)

    def inner(carry, ys):
      dx, extras = carry
      j, col_blk, caux, dy_j = ys
      g, tile_extras = tile_fn(row_blk, col_blk, raux, caux, rid, _ids(j, block_c, m))
      dx = dx + g @ col_blk[0].astype(jnp.float32)
      dy_j = dy_j + g.T @ row_blk[0].astype(jnp.float32)
      return (dx, tuple(a + b for a, b in zip(extras, tile_extras))), dy_j

    dx0 = _like((rows, cols, row_aux, col_aux), jnp.zeros((block_r, rows[0].shape[-1]), jnp.float32))
    (dx, extras), dy = jax.lax.scan(inner, (dx0, extras), (jnp.arange(nbc), cols, col_aux, dy))
    return (dy, extras), dx

  dy0 = jnp.zeros((nbc, block_c, cols[0].shape[-1]), jnp.float32)
  extras0 = tuple(jnp.zeros((), jnp.float32) for _ in range(num_extras))
  dy0, extras0 = _like((rows, cols, row_aux, col_aux), (dy0, extras0))
  (dy, extras), dx = jax.lax.scan(outer, (dy0, extras0), (jnp.arange(nbr), rows, row_aux))
  return dx.reshape(-1, dx.shape[-1])[:n], dy.reshape(-1, dy.shape[-1])[:m], extras


def _like(refs, tree):
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


def _valid(rid, cid):
  return rid[1][:, None] & cid[1][None, :]


def _f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _cast_like(g, x):
  return g.astype(x.dtype).reshape(jnp.shape(x))


# ---------------------------------------------------------------- contrastive (InfoNCE)


def _contrastive_tile(scale, rows, cols, rid, cid):
  logits = jnp.where(_valid(rid, cid), scale * _dot(rows[0], cols[0]), NEG)
  return (lse(logits, 1),), (lse(logits, 0),)


def contrastive_stats(x, y, scale, block=DEFAULT_BLOCK):
  """(row_lse [n], col_lse [m]) of L = scale * x @ y.T, in float32."""
  return _contrastive_stats(x, y, _like((x, y), scale), block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _contrastive_stats(x, y, scale, block):
  return _contrastive_fwd(x, y, scale, block)[0]


def _contrastive_fwd(x, y, scale, block):
  n, m = x.shape[0], y.shape[0]
  merge = lambda a, b: (merge_lse(a[0], b[0]),)
  (r,), (c,) = _sweep(functools.partial(_contrastive_tile, scale), merge, (NEG,),
                      (x,), (y,), n, m, block_size(n, block), block_size(m, block))
  return (r, c), (x, y, scale, r, c)


def _contrastive_bwd(block, res, cot):
  x, y, scale, r, c = res
  gr, gc = cot

  def tile(rows, cols, raux, caux, rid, cid):
    sim = _dot(rows[0], cols[0])
    logits = scale * sim
    (r, gr), (c, gc) = raux, caux
    g = gr[:, None] * jnp.exp(logits - r[:, None]) + gc[None, :] * jnp.exp(logits - c[None, :])
    g = jnp.where(_valid(rid, cid), g, 0.0)
    return g, (jnp.sum(g * sim),)

  n, m = x.shape[0], y.shape[0]
  dx, dy, (ds,) = _sweep_grad(tile, (x,), (y,), (r, gr), (c, gc), n, m,
                              block_size(n, block), block_size(m, block), 1)
  return _cast_like(scale * dx, x), _cast_like(scale * dy, y), _cast_like(ds, scale)


_contrastive_stats.defvjp(_contrastive_fwd, _contrastive_bwd)


# ---------------------------------------------------------------- sigmoid (SigLIP)


def _sigmoid_logits(scale, bias, offset, rows, cols, rid, cid):
  """Logits and labels z (+1 on the global diagonal, -1 elsewhere) of one tile."""
  sim = _dot(rows[0], cols[0])
  z = jnp.where((offset + rid[0])[:, None] == cid[0][None, :], 1.0, -1.0)
  return sim, scale * sim + bias, z


def _sigmoid_tile(scale, bias, offset, rows, cols, rid, cid):
  _, logits, z = _sigmoid_logits(scale, bias, offset, rows, cols, rid, cid)
  loss = jnp.where(_valid(rid, cid), jax.nn.softplus(-z * logits), 0.0)
  return (jnp.sum(loss, 1),), (jnp.sum(loss, 0),)


def sigmoid_rows(x, y, scale, bias, row_offset, block=DEFAULT_BLOCK):
  """Per-row sum_j -log sigmoid(z_ij * (scale * x_i.y_j + bias)), z = +1 iff row_offset+i == j."""
  scale, bias, row_offset = _like((x, y), (scale, bias, row_offset))
  return _sigmoid_rows(x, y, scale, bias, row_offset, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _sigmoid_rows(x, y, scale, bias, row_offset, block):
  return _sigmoid_fwd(x, y, scale, bias, row_offset, block)[0]


def _sigmoid_fwd(x, y, scale, bias, row_offset, block):
  n, m = x.shape[0], y.shape[0]
  tile = functools.partial(_sigmoid_tile, scale, bias, row_offset)
  (rows,), _ = _sweep(tile, lambda a, b: (a[0] + b[0],), (0.0,), (x,), (y,), n, m,
                      block_size(n, block), block_size(m, block))
  return rows, (x, y, scale, bias, row_offset)


def _sigmoid_bwd(block, res, g_rows):
  x, y, scale, bias, row_offset = res

  def tile(rows, cols, raux, caux, rid, cid):
    sim, logits, z = _sigmoid_logits(scale, bias, row_offset, rows, cols, rid, cid)
    g = jnp.where(_valid(rid, cid), -z * jax.nn.sigmoid(-z * logits) * raux[0][:, None], 0.0)
    return g, (jnp.sum(g * sim), jnp.sum(g))

  n, m = x.shape[0], y.shape[0]
  dx, dy, (ds, db) = _sweep_grad(tile, (x,), (y,), (g_rows,), (), n, m,
                                 block_size(n, block), block_size(m, block), 2)
  return (_cast_like(scale * dx, x), _cast_like(scale * dy, y), _cast_like(ds, scale),
          _cast_like(db, bias), None)


_sigmoid_rows.defvjp(_sigmoid_fwd, _sigmoid_bwd)


# ---------------------------------------------------------------- affinity mimicking


def _affinity_logits(s_scale, t_scale, rows, cols, rid, cid):
  sim = _dot(rows[0], cols[0])
  valid = _valid(rid, cid)
  student = s_scale * sim
  teacher = jnp.where(valid, t_scale * _dot(rows[1], cols[1]), NEG)
  return sim, student, jnp.where(valid, student, NEG), teacher


def _affinity_tile(s_scale, t_scale, rows, cols, rid, cid):
  _, student, masked, teacher = _affinity_logits(s_scale, t_scale, rows, cols, rid, cid)

  def stats(axis):
    t_lse = lse(teacher, axis)
    p = jnp.exp(teacher - jnp.expand_dims(t_lse, axis))
    return lse(masked, axis), t_lse, jnp.sum(p * student, axis)

  return stats(1), stats(0)


def _merge_affinity(acc, new):
  return (merge_lse(acc[0], new[0]),) + merge_weighted(acc[1:], new[1:])


def affinity_stats(xs, ys, xt, yt, s_scale, t_scale, block=DEFAULT_BLOCK):
  """Row and column statistics of student S = s_scale xs@ys.T and teacher T = t_scale xt@yt.T.

  Returns ((s_lse, t_lse, w) per row, the same per column), w = sum_j softmax(T)_j S_j, so
  the soft-target CE of a row is s_lse - w. The teacher gets no gradient.
  """
  s_scale, t_scale = _like((xs, ys, xt, yt), (s_scale, t_scale))
  return _affinity_stats(xs, ys, xt, yt, s_scale, t_scale, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _affinity_stats(xs, ys, xt, yt, s_scale, t_scale, block):
  return _affinity_fwd(xs, ys, xt, yt, s_scale, t_scale, block)[0]


def _affinity_fwd(xs, ys, xt, yt, s_scale, t_scale, block):
  n, m = xs.shape[0], ys.shape[0]
  row, col = _sweep(functools.partial(_affinity_tile, s_scale, t_scale), _merge_affinity,
                    (NEG, NEG, 0.0), (xs, xt), (ys, yt), n, m,
                    block_size(n, block), block_size(m, block))
  return (row, col), (xs, ys, xt, yt, s_scale, t_scale, row, col)


def _affinity_bwd(block, res, cot):
  xs, ys, xt, yt, s_scale, t_scale, row, col = res
  (g_rs, _, g_rw), (g_cs, _, g_cw) = cot

  def tile(rows, cols, raux, caux, rid, cid):
    sim, student, _, teacher = _affinity_logits(s_scale, t_scale, rows, cols, rid, cid)
    (rs, rt, g_rs, g_rw), (cs, ct, g_cs, g_cw) = raux, caux
    g = (g_rs[:, None] * jnp.exp(student - rs[:, None])
         + g_rw[:, None] * jnp.exp(teacher - rt[:, None])
         + g_cs[None, :] * jnp.exp(student - cs[None, :])
         + g_cw[None, :] * jnp.exp(teacher - ct[None, :]))
    g = jnp.where(_valid(rid, cid), g, 0.0)
    return g, (jnp.sum(g * sim),)

  n, m = xs.shape[0], ys.shape[0]
  dx, dy, (ds,) = _sweep_grad(
      tile, (xs, xt), (ys, yt), (row[0], row[1], g_rs, g_rw), (col[0], col[1], g_cs, g_cw),
      n, m, block_size(n, block), block_size(m, block), 1)
  zeros = lambda a: jnp.zeros_like(a)
  return (_cast_like(s_scale * dx, xs), _cast_like(s_scale * dy, ys), zeros(xt), zeros(yt),
          _cast_like(ds, s_scale), zeros(t_scale))


_affinity_stats.defvjp(_affinity_fwd, _affinity_bwd)
