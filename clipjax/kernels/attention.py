"""Attention over a padded token set with a per-example key keep-mask, flash style.

`masked_attention(q, k, v, keep_mask)` equals softmax(q k^T / sqrt(D) masked) v for
q, k, v [B, T, H, D] and keep_mask bool [B, T] (True = a real key). Queries at dropped
positions are still computed (callers ignore them). Implementations:
  'xla'      the reference: materialises [B, H, T, T] logits.
  'chunked'  lax.scan over key blocks with an online softmax; the custom VJP saves only
             the output and the row LSE and recomputes each block (the flash-attention
             backward: delta = rowsum(dO * O), dS = P * (dP - delta)).
  'pallas'   the same in Pallas kernels (grid over batch, heads and query blocks; a
             dq kernel over query blocks and a dk/dv kernel over key blocks in the
             backward), lowered by Triton on a GPU and by Mosaic on a TPU, where blocks
             follow its (8, 128) rule: the mask is a [B, 1, T] row and the per-query
             statistics [B, H, T, 1] columns. See target.py for interpret mode.
  'auto'     'pallas' on GPU (measured faster there), 'chunked' elsewhere.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from clipjax.kernels import target
from clipjax.kernels.pallas_losses import pow2_block

NEG = -1e30
CHUNKED_BLOCK = 128
PALLAS_BLOCK = 64
TPU_LANES = 128  # a TPU block's last dimension: the key block of the [B, 1, T] mask
NUM_WARPS = 4
NUM_STAGES = 2


def masked_attention(q, k, v, keep_mask=None, *, causal=False, implementation='auto', block=None):
  """Scaled dot-product attention whose keys are restricted to keep_mask [B, T] (and to
  positions <= the query's when causal)."""
  if implementation not in ('auto', 'xla', 'chunked', 'pallas'):
    raise ValueError(f'masked_attention: implementation={implementation!r}; expected '
                     "'auto', 'xla', 'chunked' or 'pallas'")
  if implementation == 'auto':
    implementation = 'pallas' if jax.default_backend() == 'gpu' else 'chunked'
  if keep_mask is None:
    keep_mask = jnp.ones(k.shape[:2], bool)
  if keep_mask.shape != k.shape[:2]:
    raise ValueError(f'masked_attention: keep_mask shape {keep_mask.shape} != keys [B, T] '
                     f'{k.shape[:2]}')
  if implementation == 'xla':
    return reference_attention(q, k, v, keep_mask, causal)
  if implementation == 'chunked':
    fn, cfg = _chunked, (block or CHUNKED_BLOCK, causal)
  else:  # the target is fixed when the forward is traced, for the backward too
    fn, cfg = _pallas, (block or PALLAS_BLOCK, causal) + tuple(target.current())
  # [B, T, H, D] -> [B, H, T, D]: blocks run along T.
  to_bh = lambda a: jnp.swapaxes(a, 1, 2)
  out = fn(to_bh(q), to_bh(k), to_bh(v), keep_mask.astype(jnp.float32), cfg)
  return jnp.swapaxes(out, 1, 2)


def reference_attention(q, k, v, keep_mask, causal=False):
  """The readable reference (same maths as clipjax.models.layers.attention)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  t = q.shape[1]
  mask = keep_mask[:, None, None, :]
  if causal:
    mask = mask & (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])
  logits = jnp.where(mask, logits, NEG)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


def _pad_t(a, block, axis):
  pad = -a.shape[axis] % block
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, pad)
  return jnp.pad(a, widths)


def _block(t, block):
  return min(block, -(-t // 8) * 8)


# ---------------------------------------------------------------- chunked (lax.scan)


def _key_blocks(k, v, keep, bk):
  """[B, H, T, D] keys/values and [B, T] mask -> per-block stacks along a leading axis."""
  b, h, _, d = k.shape
  k, v, keep = _pad_t(k, bk, 2), _pad_t(v, bk, 2), _pad_t(keep, bk, 1)
  nb = k.shape[2] // bk
  split = lambda a: jnp.moveaxis(a.reshape(b, h, nb, bk, d), 2, 0)
  return split(k), split(v), jnp.moveaxis(keep.reshape(b, nb, bk), 1, 0)


def _mask(s, keep, qid, kid, causal):
  """Masks a [..., q, k] logit tile: dropped keys, and future keys when causal."""
  ok = keep > 0
  if causal:
    ok = ok & (kid[None, :] <= qid[:, None])
  return jnp.where(ok, s, NEG)


def _logits(q, k_blk, keep_blk, kid, causal):
  s = jnp.einsum('bhqd,bhkd->bhqk', q, k_blk, preferred_element_type=jnp.float32)
  s = s * q.shape[-1] ** -0.5
  return _mask(s, keep_blk[:, None, None, :], jnp.arange(q.shape[2]), kid, causal)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked(q, k, v, keep, cfg):
  return _chunked_fwd(q, k, v, keep, cfg)[0]


def _key_ids(nb, bk):
  return jnp.arange(nb * bk).reshape(nb, bk)


def _chunked_fwd(q, k, v, keep, cfg):
  block, causal = cfg
  bk = _block(k.shape[2], block)
  kb, vb, keepb = _key_blocks(k, v, keep, bk)
  b, h, t, d = q.shape

  def step(carry, blk):
    m, l, acc = carry
    k_blk, v_blk, keep_blk, kid = blk
    s = _logits(q, k_blk, keep_blk, kid, causal)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None])
    corr = jnp.exp(m - m_new)
    acc = acc * corr[..., None] + jnp.einsum('bhqk,bhkd->bhqd', p, v_blk.astype(jnp.float32))
    return (m_new, l * corr + p.sum(-1), acc), None

  init = (jnp.full((b, h, t), NEG, jnp.float32), jnp.zeros((b, h, t), jnp.float32),
          jnp.zeros((b, h, t, d), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, keepb, _key_ids(kb.shape[0], bk)))
  out = (acc / l[..., None]).astype(q.dtype)
  return out, (q, k, v, keep, out, m + jnp.log(l))


def _chunked_bwd(cfg, res, d_out):
  block, causal = cfg
  q, k, v, keep, out, lse = res
  bk = _block(k.shape[2], block)
  kb, vb, keepb = _key_blocks(k, v, keep, bk)
  t = k.shape[2]
  scale = q.shape[-1] ** -0.5
  qf, do = q.astype(jnp.float32), d_out.astype(jnp.float32)
  delta = jnp.sum(do * out.astype(jnp.float32), -1)

  def step(dq, blk):
    k_blk, v_blk, keep_blk, kid = blk
    p = jnp.exp(_logits(q, k_blk, keep_blk, kid, causal) - lse[..., None])
    dv = jnp.einsum('bhqk,bhqd->bhkd', p, do)
    dp = jnp.einsum('bhqd,bhkd->bhqk', do, v_blk.astype(jnp.float32))
    ds = p * (dp - delta[..., None]) * scale
    dq = dq + jnp.einsum('bhqk,bhkd->bhqd', ds, k_blk.astype(jnp.float32))
    return dq, (jnp.einsum('bhqk,bhqd->bhkd', ds, qf), dv)

  dq, (dk, dv) = jax.lax.scan(step, jnp.zeros_like(qf), (kb, vb, keepb, _key_ids(kb.shape[0], bk)))
  merge = lambda a: jnp.moveaxis(a, 0, 2).reshape(a.shape[1], a.shape[2], -1, a.shape[-1])[:, :, :t]
  return (dq.astype(q.dtype), merge(dk).astype(k.dtype), merge(dv).astype(v.dtype),
          jnp.zeros_like(keep))


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ---------------------------------------------------------------- Pallas


def _pad_all(q, k, v, keep, block, tpu):
  """Pads T to the block, and on a GPU D to a power of two (>= 16) as Triton requires."""
  if tpu:
    bt = -(-block // TPU_LANES) * TPU_LANES
    d_pad = 0
  else:
    bt = pow2_block(q.shape[2], block)
    d_pad = max(16, 1 << (q.shape[-1] - 1).bit_length()) - q.shape[-1]
  pad = lambda a: jnp.pad(_pad_t(a, bt, 2), ((0, 0), (0, 0), (0, 0), (0, d_pad)))
  return pad(q), pad(k), pad(v), _pad_t(keep, bt, 1), bt


def _key_row(ref, sl, tpu):
  """The mask of keys `sl` as a [1, bk] row ([B, 1, T] blocks on a TPU, [B, T] on a GPU)."""
  return ref[:, sl] if tpu else ref[sl][None, :]


def _query_col(ref, sl, tpu):
  """Per-query statistics of queries `sl` as a [bq, 1] column."""
  return ref[sl, :] if tpu else ref[sl][:, None]


def _spec(t, d, bt, along):
  """BlockSpec for [B, H, T, D] arrays: the block `along` grid axis 2, or all of T."""
  if along:
    return pl.BlockSpec((None, None, bt, d), lambda b, h, i: (b, h, i, 0))
  return pl.BlockSpec((None, None, t, d), lambda b, h, i: (b, h, 0, 0))


def _ids(i, bt):
  return i * bt + jax.lax.broadcasted_iota(jnp.int32, (bt,), 0)


def _at(j, bt):
  """Rows j*bt .. (j+1)*bt of a ref, aligned to the block (a hint Mosaic needs)."""
  return pl.ds(pl.multiple_of(j * bt, bt), bt)


def _dot(a, b, contract_a, contract_b):
  """a . b over the named axes in float32: transposed operands without an in-kernel
  transpose."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _attn_fwd_kernel(scale, bt, nk, causal, tpu, q_ref, k_ref, v_ref, keep_ref, o_ref, lse_ref):
  q = q_ref[...]
  qid = _ids(pl.program_id(2), bt)

  def body(j, carry):
    m, l, acc = carry
    sl = _at(j, bt)
    s = _dot(q, k_ref[sl, :], 1, 1) * scale
    s = _mask(s, _key_row(keep_ref, sl, tpu), qid, _ids(j, bt), causal)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[:, None])
    corr = jnp.exp(m - m_new)
    acc = acc * corr[:, None] + jnp.dot(p, v_ref[sl, :].astype(jnp.float32),
                                        preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc

  init = (jnp.full((bt,), NEG, jnp.float32), jnp.zeros((bt,), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, nk, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse = m + jnp.log(l)
  lse_ref[...] = lse[:, None] if tpu else lse


def _attn_dq_kernel(scale, bt, nk, causal, tpu, q_ref, k_ref, v_ref, keep_ref, do_ref, lse_ref,
                    delta_ref, dq_ref):
  q, do = q_ref[...], do_ref[...].astype(jnp.float32)
  qid = _ids(pl.program_id(2), bt)
  every = slice(None)
  lse, delta = _query_col(lse_ref, every, tpu), _query_col(delta_ref, every, tpu)

  def body(j, dq):
    sl = _at(j, bt)
    k = k_ref[sl, :].astype(jnp.float32)
    s = _dot(q, k_ref[sl, :], 1, 1) * scale
    s = _mask(s, _key_row(keep_ref, sl, tpu), qid, _ids(j, bt), causal)
    p = jnp.exp(s - lse)
    dp = _dot(do, v_ref[sl, :].astype(jnp.float32), 1, 1)
    return dq + jnp.dot(p * (dp - delta) * scale, k, preferred_element_type=jnp.float32)

  dq_ref[...] = jax.lax.fori_loop(0, nk, body, jnp.zeros(q.shape, jnp.float32)).astype(dq_ref.dtype)


def _attn_dkv_kernel(scale, bt, nq, causal, tpu, q_ref, k_ref, v_ref, keep_ref, do_ref, lse_ref,
                     delta_ref, dk_ref, dv_ref):
  k, v = k_ref[...], v_ref[...].astype(jnp.float32)
  keep = _key_row(keep_ref, slice(None), tpu)
  kid = _ids(pl.program_id(2), bt)

  def body(i, carry):
    dk, dv = carry
    sl = _at(i, bt)
    q = q_ref[sl, :]
    do = do_ref[sl, :].astype(jnp.float32)
    s = _dot(q, k, 1, 1) * scale
    s = _mask(s, keep, _ids(i, bt), kid, causal)
    p = jnp.exp(s - _query_col(lse_ref, sl, tpu))
    dp = _dot(do, v, 1, 1)
    ds = p * (dp - _query_col(delta_ref, sl, tpu)) * scale
    dv = dv + _dot(p, do, 0, 0)
    dk = dk + _dot(ds, q.astype(jnp.float32), 0, 0)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, nq, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, kind, interpret, *args):
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape,
                        **target.call_kwargs(kind, interpret, num_warps=NUM_WARPS,
                                             num_stages=NUM_STAGES,
                                             dimension_semantics=('parallel',) * 3))(*args)


def _layout(keep, b, h, tp, bt, tpu):
  """Mask and per-query statistic arrays and BlockSpecs: (keep array, keep whole, keep block,
  stat shape, stat block, stat whole)."""
  if tpu:
    return (keep[:, None, :], pl.BlockSpec((None, 1, tp), lambda b, h, i: (b, 0, 0)),
            pl.BlockSpec((None, 1, bt), lambda b, h, i: (b, 0, i)), (b, h, tp, 1),
            pl.BlockSpec((None, None, bt, 1), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, tp, 1), lambda b, h, i: (b, h, 0, 0)))
  return (keep, pl.BlockSpec((None, tp), lambda b, h, i: (b, 0)),
          pl.BlockSpec((None, bt), lambda b, h, i: (b, i)), (b, h, tp),
          pl.BlockSpec((None, None, bt), lambda b, h, i: (b, h, i)),
          pl.BlockSpec((None, None, tp), lambda b, h, i: (b, h, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pallas(q, k, v, keep, cfg):
  return _pallas_fwd(q, k, v, keep, cfg)[0]


def _pallas_fwd(q, k, v, keep, cfg):
  block, causal, kind, interpret = cfg
  tpu = kind == 'tpu'
  b, h, t, d = q.shape
  qp, kp, vp, keepp, bt = _pad_all(q, k, v, keep, block, tpu)
  tp, dp = qp.shape[2], qp.shape[3]
  keepp, keep_full, _, stat_shape, stat_blk, _ = _layout(keepp, b, h, tp, bt, tpu)
  kernel = functools.partial(_attn_fwd_kernel, d ** -0.5, bt, tp // bt, causal, tpu)
  out, lse = _call(
      kernel, (b, h, tp // bt),
      [_spec(tp, dp, bt, True), _spec(tp, dp, bt, False), _spec(tp, dp, bt, False), keep_full],
      [_spec(tp, dp, bt, True), stat_blk],
      [jax.ShapeDtypeStruct(qp.shape, q.dtype), jax.ShapeDtypeStruct(stat_shape, jnp.float32)],
      kind, interpret, qp, kp, vp, keepp)
  out = out[:, :, :t, :d]
  return out, (q, k, v, keep, out, lse)


def _pallas_bwd(cfg, res, d_out):
  block, causal, kind, interpret = cfg
  q, k, v, keep, out, lse = res
  tpu = kind == 'tpu'
  b, h, t, d = q.shape
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)
  qp, kp, vp, keepp, bt = _pad_all(q, k, v, keep, block, tpu)
  dop = _pad_all(d_out, k, v, keep, block, tpu)[0]
  tp, dp = qp.shape[2], qp.shape[3]
  keepp, keep_full, keep_blk, _, row_blk, row_full = _layout(keepp, b, h, tp, bt, tpu)
  delta = _pad_t(delta, bt, 2).reshape(lse.shape)
  grid = (b, h, tp // bt)
  blk, full = _spec(tp, dp, bt, True), _spec(tp, dp, bt, False)
  dq = _call(functools.partial(_attn_dq_kernel, d ** -0.5, bt, tp // bt, causal, tpu), grid,
             [blk, full, full, keep_full, blk, row_blk, row_blk], blk,
             jax.ShapeDtypeStruct(qp.shape, q.dtype), kind, interpret, qp, kp, vp, keepp, dop,
             lse, delta)
  dk, dv = _call(functools.partial(_attn_dkv_kernel, d ** -0.5, bt, tp // bt, causal, tpu), grid,
                 [full, blk, blk, keep_blk, full, row_full, row_full], [blk, blk],
                 [jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
                 kind, interpret, qp, kp, vp, keepp, dop, lse, delta)
  crop = lambda a: a[:, :, :t, :d]
  return crop(dq), crop(dk), crop(dv), jnp.zeros_like(keep)


_pallas.defvjp(_pallas_fwd, _pallas_bwd)
