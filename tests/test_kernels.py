"""Tiled loss kernels and masked attention against the readable references.

Sizes are deliberately not multiples of the tile (block 16, batch 37) so padding and
masking are exercised; several tiles per axis exercise the online merges. 'pallas_tpu'
runs the Mosaic TPU kernels in JAX's TPU interpreter on the CPU.
"""
import contextlib
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import losses
from clipjax.kernels import fused
from clipjax.kernels import target
from clipjax.kernels.attention import masked_attention
from clipjax.models import layers
from tests.test_losses import assert_leaves_close

IMPLS = ('chunked', 'pallas', 'pallas_tpu')
BLOCK = 16


def _on_target(impl):
  """(implementation, context): 'pallas_tpu' is 'pallas' under TPU interpret mode."""
  if impl == 'pallas_tpu':
    return 'pallas', target.use('tpu', interpret=True)
  return impl, contextlib.nullcontext()


@pytest.fixture(autouse=True)
def _float32_matmuls_on_gpu():
  """GPUs run float32 matmuls as TF32 by default (XLA and Triton alike, ~1e-3 relative
  error); the float32 tolerances below are for float32 arithmetic, so ask for it there."""
  if jax.default_backend() != 'gpu':
    yield
    return
  with jax.default_matmul_precision('highest'):
    yield


def _emb(seed, n, d, dtype, norm=1.0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d))
  return jnp.asarray(norm * a / np.linalg.norm(a, axis=1, keepdims=True), dtype)


CASES = {
    'clip': (fused.clip_loss, losses.clip_loss, 2, lambda s: (s,)),
    'siglip': (fused.siglip_loss, losses.siglip_loss, 2, lambda s: (s, -10.0)),
    'affinity': (fused.affinity_mimicking_loss, losses.affinity_mimicking_loss, 4,
                 lambda s: (s, 50.0)),
}


# ~10x the worst error measured against the float32 XLA reference, relative to each leaf's
# largest entry (1.1e-6, 7.1e-6 and 4.6e-5 measured; logits of +-1e4 leave float32 ~3
# significant digits in the softmax, which both paths round differently).
REL_TOL = {(14.3, 1.0): 1e-5, (1e-3, 1.0): 5e-5, (100.0, 10.0): 4e-4}


def _leaves(value_and_grads):
  loss, grads = value_and_grads
  return (loss,) + tuple(grads)


def _compare(case, impl, n, dtype, scale, norm=1.0, block=BLOCK):
  kernel, reference, num_emb, scalars = CASES[case]
  embs = [_emb(i, n, 24, dtype, norm) for i in range(num_emb)]
  args = embs + [jnp.float32(a) for a in scalars(scale)]
  argnums = tuple(range(len(args)))
  want = jax.value_and_grad(functools.partial(reference, implementation='xla'), argnums)(*args)
  impl, context = _on_target(impl)
  with context:
    got = jax.jit(jax.value_and_grad(
        functools.partial(kernel, implementation=impl, block=block), argnums))(*args)
  return got, want


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case,n', [('clip', 37), ('siglip', 37), ('affinity', 37), ('clip', 5)])
def test_tiled_matches_reference_float32(impl, case, n):
  got, want = _compare(case, impl, n, jnp.float32, 14.3)
  assert_leaves_close(_leaves(got), _leaves(want), REL_TOL[14.3, 1.0])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('scale,norm', [(1e-3, 1.0), (100.0, 10.0)])
def test_tiled_extreme_temperatures(impl, case, scale, norm):
  got, want = _compare(case, impl, 37, jnp.float32, scale, norm)
  assert np.isfinite(float(got[0]))
  assert_leaves_close(_leaves(got), _leaves(want), REL_TOL[scale, norm])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', sorted(CASES))
def test_tiled_bfloat16(impl, case):
  """bf16 embeddings, f32 accumulation: agrees with the reference on the same bf16 inputs."""
  got, want = _compare(case, impl, 37, jnp.bfloat16, 14.3)
  assert got[1][0].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
  assert_leaves_close(got[1], want[1], 3e-2)  # bf16 gradients: 6.7e-3 (one ulp) measured


@pytest.mark.parametrize('case', sorted(CASES))
def test_pallas_feature_chunks_and_gradient_slices(case, monkeypatch):
  """D = 24 (padded to 32) in 16-wide chunks, dx in two 16-feature slices, 32x16 tiles."""
  from clipjax.kernels import pallas_losses  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pallas_losses, 'D_CHUNK', 16)
  monkeypatch.setattr(pallas_losses, 'GRAD_WIDTH', 16)
  got, want = _compare(case, 'pallas', 37, jnp.float32, 14.3, block=(32, 16))
  assert_leaves_close(_leaves(got), _leaves(want), REL_TOL[14.3, 1.0])


@pytest.mark.parametrize('case', sorted(CASES))
def test_tpu_kernels_over_several_column_blocks(case):
  """300 columns are three 128-lane blocks: the resident column statistics and the dy
  launch's accumulation over row blocks both merge across grid steps."""
  got, want = _compare(case, 'pallas_tpu', 300, jnp.float32, 14.3, block=(64, 128))
  assert_leaves_close(_leaves(got), _leaves(want), REL_TOL[14.3, 1.0])


@pytest.mark.parametrize('kind,platform,call,loss_calls', [('tpu', 'tpu', 'tpu_custom_call', 3),
                                                          ('gpu', 'cuda', '__gpu$xla.gpu.triton', 4)])
def test_kernels_lower_for_accelerators_from_a_cpu_host(kind, platform, call, loss_calls):
  """Lowering (Pallas to Mosaic TPU or to Triton, with their block and lowering rules) runs
  on any host: the accelerators' programs are compiled kernels, never an interpreter. A
  TPU loss is one forward launch and a dx and a dy launch, a GPU loss two of each."""
  embs = [_emb(i, 40, 24, jnp.bfloat16) for i in range(4)]
  q, k, v, _, keep = _attention_inputs(jnp.bfloat16)
  lowered = lambda fn, *args: jax.jit(fn).trace(*args).lower(
      lowering_platforms=(platform,)).as_text()
  with target.use(kind, interpret=False):
    for name, (kernel, _, num_emb, scalars) in CASES.items():
      args = embs[:num_emb] + [jnp.float32(a) for a in scalars(14.3)]
      loss = functools.partial(kernel, implementation='pallas')
      calls = lowered(jax.grad(loss, tuple(range(num_emb))), *args).count(call)
      assert calls == loss_calls - (name == 'siglip' and kind == 'gpu'), name  # no columns
    attention = lambda q, k, v: jnp.sum(masked_attention(q, k, v, keep, implementation='pallas'))
    assert lowered(jax.grad(attention, (0, 1, 2)), q, k, v).count(call) == 3


@pytest.mark.parametrize('backend,want', [('tpu', ('tpu', False)), ('gpu', ('gpu', False)),
                                          ('cpu', ('gpu', True))])
def test_pallas_compiles_on_accelerators_and_announces_the_interpreter(backend, want,
                                                                        monkeypatch, caplog):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  monkeypatch.setattr(target, '_announced', set())
  with caplog.at_level(logging.WARNING):
    assert target.current() == want
    assert target.current() == want
  announced = [r for r in caplog.records if 'interpret mode' in r.getMessage()]
  assert len(announced) == (1 if backend == 'cpu' else 0)
  kwargs = target.call_kwargs(*want, num_warps=4, num_stages=2, dimension_semantics=None)
  assert bool(kwargs['interpret']) == want[1]


def test_pallas_refuses_a_backend_without_kernels(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'metal')
  with pytest.raises(NotImplementedError, match="'metal' backend"):
    target.current()


def test_tiled_block_choice_does_not_change_result():
  """One tile and ragged 8-row tiles give the same statistics (16 is covered above)."""
  results = [_compare('affinity', 'chunked', 37, jnp.float32, 14.3, block=b)[0] for b in (8, 64)]
  assert_leaves_close(_leaves(results[1]), _leaves(results[0]), REL_TOL[14.3, 1.0])


def test_auto_resolves_to_chunked():
  """Measured on an H100 the tiled XLA path beats the Pallas kernels (kernels/README.md)."""
  assert fused.resolve('auto') == 'chunked'
  with pytest.raises(ValueError, match='implementation'):
    fused.resolve('triton')
  with pytest.raises(ValueError, match="collective='ring' needs a tiled"):
    fused.resolve('xla', 'ring')
  with pytest.raises(ValueError, match='collective'):
    fused.resolve('auto', 'allgather')


def _attention_inputs(dtype, b=2, t=21, h=3, d=8):
  rng = np.random.default_rng(0)
  q, k, v, d_out = (jnp.asarray(rng.normal(size=(b, t, h, d)), dtype) for _ in range(4))
  keep = jnp.asarray(rng.random((b, t)) < 0.6).at[:, 0].set(True)
  keep = keep.at[1].set(jnp.arange(t) == 5)  # the second example keeps a single token
  return q, k, v, d_out, keep


def _attention_vjp(impl, q, k, v, d_out, keep, causal=False, block=None):
  fn = lambda q, k, v: masked_attention(q, k, v, keep, causal=causal, implementation=impl,
                                        block=block)
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(d_out)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype,tol,causal', [(jnp.float32, 2e-6, False),  # 2.8e-7 measured
                                              (jnp.bfloat16, 3e-2, False),  # 4.5e-3
                                              (jnp.float32, 2e-6, True)])
def test_masked_attention_matches_reference(impl, dtype, tol, causal):
  """Ragged blocks (T=21, block 8), a one-token mask, forward and all input gradients."""
  q, k, v, d_out, keep = _attention_inputs(dtype)
  if causal:  # every query keeps at least token 0
    keep = keep.at[1].set(jnp.arange(keep.shape[1]) % 5 == 0)
  impl, context = _on_target(impl)
  run = functools.partial(_attention_vjp, impl, causal=causal, block=8)
  with context:
    got = jax.jit(run)(q, k, v, d_out, keep)
  want = _attention_vjp('xla', q, k, v, d_out, keep, causal)
  assert got[0].dtype == dtype and got[1][0].dtype == dtype
  assert_leaves_close((got[0],) + tuple(got[1]), (want[0],) + tuple(want[1]), tol)
  if causal:
    return
  # The one-token example attends to token 5 only: every query returns v[1, 5].
  np.testing.assert_allclose(np.asarray(got[0][1], np.float32),
                             np.broadcast_to(np.asarray(v[1, 5], np.float32), got[0][1].shape),
                             rtol=tol, atol=tol)


def test_masked_attention_equals_model_attention_with_key_mask():
  """Drop-in for clipjax.models.layers.attention with mask = keep[:, None, None, :]."""
  q, k, v, _, keep = _attention_inputs(jnp.float32)
  want = layers.attention(q, k, v, keep[:, None, None, :])
  got = masked_attention(q, k, v, keep, implementation='chunked')
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  full = masked_attention(q, k, v, implementation='chunked')
  np.testing.assert_allclose(np.asarray(full), np.asarray(layers.attention(q, k, v)),
                             rtol=1e-5, atol=1e-5)
  causal = jnp.tril(jnp.ones((q.shape[1],) * 2, bool))
  keep = keep.at[1].set(jnp.arange(keep.shape[1]) % 5 == 0)  # no query without a key
  got = masked_attention(q, k, v, keep, causal=True, implementation='chunked')
  want = layers.attention(q, k, v, causal & keep[:, None, None, :])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_backward_runs_the_layout_its_forward_was_traced_with():
  """A vjp taken under `target.use` and pulled back outside it: the TPU forward saved
  [B, H, T, 1] statistics, which only the TPU backward reads."""
  q, k, v, d_out, keep = _attention_inputs(jnp.float32)
  with target.use('tpu', interpret=True):
    _, vjp = jax.vjp(lambda q, k, v: masked_attention(q, k, v, keep, implementation='pallas'),
                     q, k, v)
  got = vjp(d_out)
  want = _attention_vjp('xla', q, k, v, d_out, keep)[1]
  assert_leaves_close(got, want, 2e-6)
