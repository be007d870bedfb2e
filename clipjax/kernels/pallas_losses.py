"""Pallas kernels for the tiled loss statistics (same API and maths as `chunked`).

GPU (Triton) layout, after jax's Pallas GPU flash attention: the grid runs over row
blocks, each program `fori_loop`s over column blocks of the (HBM-resident) column
embeddings, accumulating every x.y tile over feature chunks, and merges tile statistics
online. Programs never write to a shared output, so column statistics come from a second
launch with rows and columns swapped (L.T = scale * y @ x.T), and the backward pass is two
launches too (dx over row blocks, dy over column blocks), each recomputing its tiles from
the saved O(B) statistics. On an H100 they are slower than `chunked` (kernels/README.md),
which is why 'auto' does not pick them.

TPU (Mosaic) layout: the grid is (row blocks, column blocks) and runs in order, so one
forward launch computes each tile once and accumulates both statistics in its outputs:
the row statistics in the row block's output (revisited over consecutive column steps),
the column statistics in one [1, m] output that stays in VMEM for the whole launch. The
backward is a dx launch and a dy launch (rows and columns swapped), each accumulating
its block over the inner grid axis: 5 tile matmuls in all, against 4 for `chunked`.
`target.current()` picks the layout; see target.py for interpret mode.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from clipjax.kernels import chunked as ck
from clipjax.kernels import target

# GPU defaults measured on an H100 (kernels/README.md, "Tile sizes").
DEFAULT_BLOCK = (128, 64)  # (rows a program keeps, columns per loop step)
D_CHUNK = 64  # feature slice of every tile product (shared-memory bound, see _chunk)
GRAD_WIDTH = 256  # dx features per gradient program; None: all (see _grad_call)
NUM_WARPS = 8
NUM_STAGES = 3
# TPU tile (rows, columns): a choice, not a measurement (no TPU was lent). Rows are
# rounded to 8 sublanes, columns to 128 lanes, as Mosaic's block rules require.
TPU_BLOCK = (256, 512)


def default_block():
  return TPU_BLOCK if target.current()[0] == 'tpu' else DEFAULT_BLOCK


def _gpu_call_kwargs(interpret):
  return target.call_kwargs('gpu', interpret, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
                            dimension_semantics=None)


def pow2_block(n, block):
  """The tile edge: `block`, or less for small `n`; a power of two >= 16 (Triton's `dot`
  needs every operand edge >= 16, its tensors power-of-two sizes)."""
  return max(16, min(block, 1 << (n - 1).bit_length()))


def _tiles(n, m, block):
  """(row edge, column edge) of a launch over n rows x m columns; `block` is an int or a
  (rows, columns) pair, rows being the block a program keeps, columns the block it loops over."""
  br, bc = block if isinstance(block, tuple) else (block, block)
  return pow2_block(n, br), pow2_block(m, bc)


def _pad_rows(a, rows):
  """Zero-pads the leading axis to `rows` (a TPU block may span a whole feature axis)."""
  return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def _pad(a, rows):
  """Zero-pads rows to `rows` and the feature axis to a power of two (Triton block rule)."""
  if a.ndim == 1:
    return _pad_rows(a, rows)
  width = max(16, 1 << (a.shape[1] - 1).bit_length())
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, width - a.shape[1])))


def _operands(*groups):
  """Casts every operand to the union of their varying mesh axes (shard_map), and the
  ShapeDtypeStruct factory whose outputs vary the same way."""
  groups = ck.like(groups, groups)
  mat = jax.typeof(jax.tree.leaves(groups)[0]).manual_axis_type
  return groups, lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, manual_axis_type=mat)


def _ids(i, block, n, offset):
  local = i * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
  return offset + local, local < n


def _chunk(width):
  """Feature-chunk width: the x.y products are accumulated over slices of D this wide, so
  a dot's operands (tile x chunk) fit Triton's shared memory even for D = 512 float32."""
  return min(D_CHUNK, width)


def _sims(row_refs, col_refs, j, br, bc):
  """x.y tiles [br, bc] of column block j, one per (row, column) operand pair, summed over
  feature chunks loaded from the refs (row chunks come from L2, not registers)."""
  sims = []
  for r, c in zip(row_refs, col_refs):
    width = r.shape[-1]
    bd = _chunk(width)

    def body(k, acc, r=r, c=c, bd=bd):
      f = pl.ds(pl.multiple_of(k * bd, bd), bd)
      return acc + ck.dot_t(r[:, f], c[pl.ds(j * bc, bc), f])

    sims.append(jax.lax.fori_loop(0, width // bd, body, jnp.zeros((br, bc), jnp.float32)))
  return tuple(sims)


def _scalars_and_offsets(scalars, offsets):
  return (jnp.stack([jnp.asarray(s, jnp.float32) for s in scalars]),
          jnp.stack([jnp.asarray(o, jnp.int32) for o in offsets]))


def _sweep_call(tile_fn, merge_fn, init, rows, cols, scalars, offsets, n, m, block, interpret):
  """Row statistics of every tile row: grid over row blocks, loop over column blocks."""
  br, bc = _tiles(n, m, block)
  n_pad, m_pad = -(-n // br) * br, -(-m // bc) * bc
  rows = [_pad(a, n_pad) for a in rows]
  cols = [_pad(a, m_pad) for a in cols]
  nr, nc = len(rows), len(cols)

  def kernel(*refs):
    row_refs, col_refs = refs[:nr], refs[nr:nr + nc]
    scalar_ref, offset_ref = refs[nr + nc:nr + nc + 2]
    outs = refs[nr + nc + 2:]
    scal = tuple(scalar_ref[k] for k in range(len(scalars)))
    rid = _ids(pl.program_id(0), br, n, offset_ref[0])

    def body(j, acc):
      sims = _sims(row_refs, col_refs, j, br, bc)
      row_new, _ = tile_fn(scal, sims, rid, _ids(j, bc, m, offset_ref[1]))
      return merge_fn(acc, row_new)

    acc = jax.lax.fori_loop(0, m_pad // bc, body,
                            tuple(jnp.full((br,), v, jnp.float32) for v in init))
    for out, a in zip(outs, acc):
      out[...] = a

  row_spec = lambda a: pl.BlockSpec((br, a.shape[1]), lambda i: (i, 0))
  full = lambda a: pl.BlockSpec(a.shape, lambda i: (0,) * a.ndim)
  scalar_arr, offset_arr = _scalars_and_offsets(scalars, offsets)
  (rows, cols, scalar_arr, offset_arr), out = _operands(rows, cols, scalar_arr, offset_arr)
  outs = pl.pallas_call(
      kernel, grid=(n_pad // br,),
      in_specs=[row_spec(a) for a in rows] + [full(a) for a in cols]
      + [full(scalar_arr), full(offset_arr)],
      out_specs=[pl.BlockSpec((br,), lambda i: (i,)) for _ in init],
      out_shape=[out((n_pad,)) for _ in init],
      name='tiled_loss_stats', **_gpu_call_kwargs(interpret),
  )(*rows, *cols, scalar_arr, offset_arr)
  return tuple(o[:n] for o in outs)


def _grad_call(tile_fn, rows, cols, row_aux, col_aux, scalars, offsets, n, m, block, num_extras,
               interpret):
  """G @ y per row block (recomputing tiles) and per-row extras, summed to scalars.

  The grid is (row blocks, output slices of GRAD_WIDTH features): a program accumulates
  its slice of dx as a few [br, chunk] register tiles. Slicing the output bounds the
  registers held for large D, at the price of recomputing the tile's x.y per slice.
  """
  br, bc = _tiles(n, m, block)
  n_pad, m_pad = -(-n // br) * br, -(-m // bc) * bc
  width_in = rows[0].shape[1]
  rows = [_pad(a, n_pad) for a in rows]
  cols = [_pad(a, m_pad) for a in cols]
  row_aux = [_pad(a, n_pad) for a in row_aux]
  col_aux = [_pad(a, m_pad) for a in col_aux]
  nr, nc, nra, nca = len(rows), len(cols), len(row_aux), len(col_aux)
  width = rows[0].shape[1]
  bd = _chunk(width)
  bo = max(bd, min(GRAD_WIDTH or width, width))
  splits = width // bo

  def kernel(*refs):
    it = iter(refs)
    row_refs = [next(it) for _ in range(nr)]
    col_refs = [next(it) for _ in range(nc)]
    raux_refs = [next(it) for _ in range(nra)]
    caux_refs = [next(it) for _ in range(nca)]
    scalar_ref, offset_ref, dx_ref = next(it), next(it), next(it)
    extra_refs = list(it)
    scal = tuple(scalar_ref[k] for k in range(len(scalars)))
    rid = _ids(pl.program_id(0), br, n, offset_ref[0])
    first = pl.program_id(1) * bo
    raux = tuple(r[...] for r in raux_refs)
    y = col_refs[0]

    def body(j, carry):
      dx, extras = carry
      sl = pl.ds(j * bc, bc)
      caux = tuple(c[sl] for c in caux_refs)
      sims = _sims(row_refs, col_refs, j, br, bc)
      g, new = tile_fn(scal, sims, raux, caux, rid, _ids(j, bc, m, offset_ref[1]))
      g = g.astype(y.dtype)  # bf16 operands run the bf16 tensor cores (f32 accumulation)
      dx = tuple(acc + jnp.dot(g, y[sl, pl.ds(pl.multiple_of(first + t * bd, bd), bd)],
                               preferred_element_type=jnp.float32)
                 for t, acc in enumerate(dx))
      return dx, tuple(a + b for a, b in zip(extras, new))

    init = (tuple(jnp.zeros((br, bd), jnp.float32) for _ in range(bo // bd)),
            tuple(jnp.zeros((br,), jnp.float32) for _ in range(num_extras)))
    dx, extras = jax.lax.fori_loop(0, m_pad // bc, body, init)
    for t, acc in enumerate(dx):
      dx_ref[:, pl.ds(t * bd, bd)] = acc
    for out, a in zip(extra_refs, extras):
      out[...] = a

  row_spec = lambda a: (pl.BlockSpec((br,), lambda i, s: (i,)) if a.ndim == 1
                        else pl.BlockSpec((br, a.shape[1]), lambda i, s: (i, 0)))
  full = lambda a: pl.BlockSpec(a.shape, lambda i, s: (0,) * a.ndim)
  scalar_arr, offset_arr = _scalars_and_offsets(scalars, offsets)
  (rows, cols, row_aux, col_aux, scalar_arr, offset_arr), out = _operands(
      rows, cols, row_aux, col_aux, scalar_arr, offset_arr)
  dx, *extras = pl.pallas_call(
      kernel, grid=(n_pad // br, splits),
      in_specs=[row_spec(a) for a in rows] + [full(a) for a in cols]
      + [row_spec(a) for a in row_aux] + [full(a) for a in col_aux]
      + [full(scalar_arr), full(offset_arr)],
      out_specs=[pl.BlockSpec((br, bo), lambda i, s: (i, s))]
      + [pl.BlockSpec((None, br), lambda i, s: (s, i)) for _ in range(num_extras)],
      out_shape=[out((n_pad, width))] + [out((splits, n_pad)) for _ in range(num_extras)],
      name='tiled_loss_grad', **_gpu_call_kwargs(interpret),
  )(*rows, *cols, *row_aux, *col_aux, scalar_arr, offset_arr)
  return dx[:n, :width_in], tuple(jnp.sum(e[0, :n]) for e in extras)


def _tpu_tiles(n, m, block):
  """(row edge, column edge) on a TPU: rows a multiple of 8, columns of 128 lanes."""
  br, bc = block if isinstance(block, tuple) else (block, block)
  up = lambda a, k: -(-a // k) * k
  return min(up(br, 8), up(n, 8)), min(up(bc, 128), up(m, 128))


def _tpu_call(kernel, grid, in_specs, out_specs, out_shape, interpret, name, *args):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      name=name, **target.call_kwargs('tpu', interpret, num_warps=None, num_stages=None,
                                      dimension_semantics=('arbitrary', 'arbitrary')),
  )(*args)


def _smem():
  return pl.BlockSpec(memory_space=pltpu.SMEM)


def _tpu_sweep_call(tile_fn, merge_fn, init, rows, cols, scalars, offsets, n, m, block,
                    interpret, columns):
  """Row and (when `columns`) column statistics from one launch over every tile.

  Row statistics live in [n, 1] outputs (a row reduction's natural sublane layout), column
  statistics in [1, m] outputs whose single block stays resident; both are merged in place
  as the in-order grid visits their tiles. The grid cannot be split over cores, since
  every row block adds to the same column outputs.
  """
  br, bc = _tpu_tiles(n, m, block)
  n_pad, m_pad = -(-n // br) * br, -(-m // bc) * bc
  rows = [_pad_rows(a, n_pad) for a in rows]
  cols = [_pad_rows(a, m_pad) for a in cols]
  nr, nc, ns = len(rows), len(cols), len(init)

  def kernel(*refs):
    row_refs, col_refs = refs[:nr], refs[nr:nr + nc]
    scalar_ref, offset_ref = refs[nr + nc:nr + nc + 2]
    row_outs, col_outs = refs[nr + nc + 2:nr + nc + 2 + ns], refs[nr + nc + 2 + ns:]
    i, j = pl.program_id(0), pl.program_id(1)
    scal = tuple(scalar_ref[k] for k in range(len(scalars)))
    sims = tuple(ck.dot_t(r[...], c[...]) for r, c in zip(row_refs, col_refs))
    row_new, col_new = tile_fn(scal, sims, _ids(i, br, n, offset_ref[0]),
                               _ids(j, bc, m, offset_ref[1]))
    lanes = pl.ds(pl.multiple_of(j * bc, 128), bc)

    @pl.when(j == 0)
    def _():
      for out, v in zip(row_outs, init):
        out[...] = jnp.full(out.shape, v, jnp.float32)

    @pl.when(i == 0)
    def _():
      for out, v in zip(col_outs, init):
        out[:, lanes] = jnp.full((1, bc), v, jnp.float32)

    merged = merge_fn(tuple(out[:, 0] for out in row_outs), row_new)
    for out, a in zip(row_outs, merged):
      out[...] = a[:, None]
    if columns:
      merged = merge_fn(tuple(out[0, lanes] for out in col_outs), col_new)
      for out, a in zip(col_outs, merged):
        out[:, lanes] = a[None, :]

  scalar_arr, offset_arr = _scalars_and_offsets(scalars, offsets)
  (rows, cols, scalar_arr, offset_arr), out = _operands(rows, cols, scalar_arr, offset_arr)
  row_out = [pl.BlockSpec((br, 1), lambda i, j: (i, 0)) for _ in init]
  col_out = [pl.BlockSpec((1, m_pad), lambda i, j: (0, 0)) for _ in init] if columns else []
  outs = _tpu_call(
      kernel, (n_pad // br, m_pad // bc),
      [pl.BlockSpec((br, a.shape[1]), lambda i, j: (i, 0)) for a in rows]
      + [pl.BlockSpec((bc, a.shape[1]), lambda i, j: (j, 0)) for a in cols] + [_smem(), _smem()],
      row_out + col_out,
      [out((n_pad, 1)) for _ in init] + ([out((1, m_pad)) for _ in init] if columns else []),
      interpret, 'tiled_loss_stats_tpu', *rows, *cols, scalar_arr, offset_arr)
  row = tuple(o[:n, 0] for o in outs[:ns])
  return row, tuple(o[0, :m] for o in outs[ns:])


def _tpu_grad_call(tile_fn, rows, cols, row_aux, col_aux, scalars, offsets, n, m, block,
                   num_extras, interpret):
  """G @ y and the per-row extras, each row block accumulated over the column steps."""
  br, bc = _tpu_tiles(n, m, block)
  n_pad, m_pad = -(-n // br) * br, -(-m // bc) * bc
  rows = [_pad_rows(a, n_pad) for a in rows]
  cols = [_pad_rows(a, m_pad) for a in cols]
  row_aux = [_pad_rows(a, n_pad)[:, None] for a in row_aux]
  col_aux = [_pad_rows(a, m_pad)[None, :] for a in col_aux]
  nr, nc, nra, nca = len(rows), len(cols), len(row_aux), len(col_aux)

  def kernel(*refs):
    it = iter(refs)
    row_refs = [next(it) for _ in range(nr)]
    col_refs = [next(it) for _ in range(nc)]
    raux = tuple(next(it)[:, 0] for _ in range(nra))
    caux = tuple(next(it)[0, :] for _ in range(nca))
    scalar_ref, offset_ref, dx_ref = next(it), next(it), next(it)
    extra_refs = list(it)
    i, j = pl.program_id(0), pl.program_id(1)
    scal = tuple(scalar_ref[k] for k in range(len(scalars)))
    sims = tuple(ck.dot_t(r[...], c[...]) for r, c in zip(row_refs, col_refs))
    g, new = tile_fn(scal, sims, raux, caux, _ids(i, br, n, offset_ref[0]),
                     _ids(j, bc, m, offset_ref[1]))

    @pl.when(j == 0)
    def _():
      for out in [dx_ref] + extra_refs:
        out[...] = jnp.zeros(out.shape, jnp.float32)

    y = col_refs[0][...]
    dx_ref[...] += jnp.dot(g.astype(y.dtype), y, preferred_element_type=jnp.float32)
    for out, a in zip(extra_refs, new):
      out[...] += a[:, None]

  row_blk = lambda a: pl.BlockSpec((br, a.shape[1]), lambda i, j: (i, 0))
  col_blk = lambda a: pl.BlockSpec((bc, a.shape[1]), lambda i, j: (j, 0))
  scalar_arr, offset_arr = _scalars_and_offsets(scalars, offsets)
  (rows, cols, row_aux, col_aux, scalar_arr, offset_arr), out = _operands(
      rows, cols, row_aux, col_aux, scalar_arr, offset_arr)
  width = rows[0].shape[1]
  dx, *extras = _tpu_call(
      kernel, (n_pad // br, m_pad // bc),
      [row_blk(a) for a in rows] + [col_blk(a) for a in cols] + [row_blk(a) for a in row_aux]
      + [pl.BlockSpec((1, bc), lambda i, j: (0, j)) for _ in col_aux] + [_smem(), _smem()],
      [pl.BlockSpec((br, width), lambda i, j: (i, 0))]
      + [pl.BlockSpec((br, 1), lambda i, j: (i, 0)) for _ in range(num_extras)],
      [out((n_pad, width))] + [out((n_pad, 1)) for _ in range(num_extras)],
      interpret, 'tiled_loss_grad_tpu', *rows, *cols, *row_aux, *col_aux, scalar_arr, offset_arr)
  return dx[:n], tuple(jnp.sum(e[:n]) for e in extras)


def config(block):
  """The non-differentiable configuration of a statistic: (tile, target kind, interpret).
  The target is read once, when the forward is traced, so a backward pass traced later
  (outside `target.use`) runs the same layout."""
  return (block,) + tuple(target.current())


def _stats(tile_fn, merge_fn, init, rows, cols, scalars, row_offset, cfg, columns=True):
  """(row statistics, column statistics or ()) on the target `cfg` names."""
  block, kind, interpret = cfg
  n, m = rows[0].shape[0], cols[0].shape[0]
  if kind == 'tpu':
    return _tpu_sweep_call(tile_fn, merge_fn, init, rows, cols, scalars, _off(row_offset, 0),
                           n, m, block, interpret, columns)
  row = _sweep_call(tile_fn, merge_fn, init, rows, cols, scalars, _off(row_offset, 0), n, m,
                    block, interpret)
  col = _sweep_call(tile_fn, merge_fn, init, cols, rows, scalars, _off(0, row_offset), m, n,
                    block, interpret) if columns else ()
  return row, col


def _grad(tile_fn, rows, cols, row_aux, col_aux, scalars, row_offset, cfg, num_extras):
  """(dx, dy, extras): G @ y from a launch over row blocks, G.T @ x from one over columns."""
  block, kind, interpret = cfg
  call = _tpu_grad_call if kind == 'tpu' else _grad_call
  n, m = rows[0].shape[0], cols[0].shape[0]
  dx, extras = call(tile_fn, rows, cols, row_aux, col_aux, scalars, _off(row_offset, 0), n, m,
                    block, num_extras, interpret)
  dy, _ = call(tile_fn, cols, rows, col_aux, row_aux, scalars, _off(0, row_offset), m, n, block,
               num_extras, interpret)
  return dx, dy, extras


def _off(*offsets):
  return tuple(jnp.asarray(o, jnp.int32) for o in offsets)


# ---------------------------------------------------------------- public statistics


def contrastive_stats(x, y, scale, block=DEFAULT_BLOCK):
  """(row_lse [n], col_lse [m]) of L = scale * x @ y.T, in float32."""
  scale = ck.like((x, y), jnp.asarray(scale, jnp.float32))
  return _contrastive_stats(x, y, scale, config(block))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _contrastive_stats(x, y, scale, cfg):
  return _contrastive_fwd(x, y, scale, cfg)[0]


def _contrastive_fwd(x, y, scale, cfg):
  (r,), (c,) = _stats(ck.contrastive_tile, ck.contrastive_merge, (ck.NEG,), [x], [y], (scale,),
                      0, cfg)
  return (r, c), (x, y, scale, r, c)


def _contrastive_bwd(cfg, res, cot):
  x, y, scale, r, c = res
  dx, dy, (ds,) = _grad(ck.contrastive_grad_tile, [x], [y], [r, cot[0]], [c, cot[1]], (scale,),
                        0, cfg, 1)
  return ck.cast_like(scale * dx, x), ck.cast_like(scale * dy, y), ck.cast_like(ds, scale)


_contrastive_stats.defvjp(_contrastive_fwd, _contrastive_bwd)


def sigmoid_rows(x, y, scale, bias, row_offset, block=DEFAULT_BLOCK):
  """Per-row sum_j -log sigmoid(z_ij (scale x_i.y_j + bias)), z = +1 iff row_offset+i == j."""
  scalars = ck.like((x, y), (jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)))
  return _sigmoid_rows(x, y, scalars, ck.like((x, y), jnp.asarray(row_offset, jnp.int32)),
                       config(block))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_rows(x, y, scalars, row_offset, cfg):
  return _sigmoid_fwd(x, y, scalars, row_offset, cfg)[0]


def _sigmoid_fwd(x, y, scalars, row_offset, cfg):
  (rows,), _ = _stats(ck.sigmoid_tile, ck.sum_merge, (0.0,), [x], [y], scalars, row_offset, cfg,
                      columns=False)
  return rows, (x, y, scalars, row_offset)


def _sigmoid_bwd(cfg, res, g_rows):
  x, y, scalars, row_offset = res
  g_cols = jnp.zeros((y.shape[0],), jnp.float32)
  dx, dy, (ds, db) = _grad(ck.sigmoid_grad_tile, [x], [y], [g_rows], [g_cols], scalars,
                           row_offset, cfg, 2)
  scale = scalars[0]
  return (ck.cast_like(scale * dx, x), ck.cast_like(scale * dy, y),
          (ck.cast_like(ds, scale), ck.cast_like(db, scalars[1])), None)


_sigmoid_rows.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def affinity_stats(xs, ys, xt, yt, s_scale, t_scale, block=DEFAULT_BLOCK):
  """Row and column (s_lse, t_lse, w) statistics; see `chunked.affinity_stats`."""
  scalars = ck.like((xs, ys, xt, yt),
                    (jnp.asarray(s_scale, jnp.float32), jnp.asarray(t_scale, jnp.float32)))
  return _affinity_stats(xs, ys, xt, yt, scalars, config(block))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _affinity_stats(xs, ys, xt, yt, scalars, cfg):
  return _affinity_fwd(xs, ys, xt, yt, scalars, cfg)[0]


def _affinity_fwd(xs, ys, xt, yt, scalars, cfg):
  row, col = _stats(ck.affinity_tile, ck.affinity_merge, (ck.NEG, ck.NEG, 0.0), [xs, xt],
                    [ys, yt], scalars, 0, cfg)
  return (row, col), (xs, ys, xt, yt, scalars, row, col)


def _affinity_bwd(cfg, res, cot):
  xs, ys, xt, yt, scalars, row, col = res
  (g_rs, _, g_rw), (g_cs, _, g_cw) = cot
  raux, caux = [row[0], row[1], g_rs, g_rw], [col[0], col[1], g_cs, g_cw]
  dx, dy, (ds,) = _grad(ck.affinity_grad_tile, [xs, xt], [ys, yt], raux, caux, scalars, 0,
                        cfg, 1)
  s_scale = scalars[0]
  return (ck.cast_like(s_scale * dx, xs), ck.cast_like(s_scale * dy, ys), jnp.zeros_like(xt),
          jnp.zeros_like(yt), (ck.cast_like(ds, s_scale), jnp.zeros_like(scalars[1])))


_affinity_stats.defvjp(_affinity_fwd, _affinity_bwd)

# Each statistic's (forward, backward) for callers that split the sweep over devices (ring.py);
# their `cfg` argument is config(block).
PASSES = {'contrastive': (_contrastive_fwd, _contrastive_bwd),
          'sigmoid': (_sigmoid_fwd, _sigmoid_bwd),
          'affinity': (_affinity_fwd, _affinity_bwd)}
