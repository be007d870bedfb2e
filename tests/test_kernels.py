"""Tiled loss kernels and masked attention against the readable references.

Sizes are deliberately not multiples of the tile (block 16, batch 37) so padding and
masking are exercised; several tiles per axis exercise the online merges.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import losses
from clipjax.kernels import fused

IMPLS = ('chunked', 'pallas')
BLOCK = 16


def _emb(seed, n, d, dtype, norm=1.0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d))
  return jnp.asarray(norm * a / np.linalg.norm(a, axis=1, keepdims=True), dtype)


def _max_err(got, want):
  return max(float(jnp.max(jnp.abs(jnp.asarray(g, jnp.float32) - jnp.asarray(w, jnp.float32))))
             for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def _scale_of(tree):
  return max(1.0, max(float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32))))
                      for a in jax.tree.leaves(tree)))


CASES = {
    'clip': (fused.clip_loss, losses.clip_loss, 2, lambda s: (s,)),
    'siglip': (fused.siglip_loss, losses.siglip_loss, 2, lambda s: (s, -10.0)),
    'affinity': (fused.affinity_mimicking_loss, losses.affinity_mimicking_loss, 4,
                 lambda s: (s, 50.0)),
}


def _compare(case, impl, n, dtype, scale, norm=1.0, block=BLOCK):
  kernel, reference, num_emb, scalars = CASES[case]
  embs = [_emb(i, n, 24, dtype, norm) for i in range(num_emb)]
  args = embs + [jnp.float32(a) for a in scalars(scale)]
  argnums = tuple(range(len(args)))
  want = jax.value_and_grad(functools.partial(reference, implementation='xla'), argnums)(*args)
  got = jax.jit(jax.value_and_grad(
      functools.partial(kernel, implementation=impl, block=block), argnums))(*args)
  return got, want


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case,n', [('clip', 37), ('siglip', 37), ('affinity', 37), ('clip', 5)])
def test_tiled_matches_reference_float32(impl, case, n):
  got, want = _compare(case, impl, n, jnp.float32, 14.3)
  assert _max_err(got, want) < 2e-5 * _scale_of(want)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('scale,norm', [(1e-3, 1.0), (100.0, 10.0)])
def test_tiled_extreme_temperatures(impl, case, scale, norm):
  got, want = _compare(case, impl, 37, jnp.float32, scale, norm)
  assert np.isfinite(float(got[0]))
  assert _max_err(got, want) < 2e-5 * max(1.0, scale * norm ** 2) * _scale_of(want)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', sorted(CASES))
def test_tiled_bfloat16(impl, case):
  """bf16 embeddings, f32 accumulation: agrees with the reference on the same bf16 inputs."""
  got, want = _compare(case, impl, 37, jnp.bfloat16, 14.3)
  assert got[1][0].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-4)
  assert _max_err(got[1], want[1]) < 1e-2 * _scale_of(want[1])


def test_tiled_block_choice_does_not_change_result():
  """One tile and ragged 8-row tiles give the same statistics (16 is covered above)."""
  results = [_compare('affinity', 'chunked', 37, jnp.float32, 14.3, block=b)[0] for b in (8, 64)]
  for r in results[1:]:
    assert _max_err(r, results[0]) < 1e-5 * _scale_of(results[0])


def test_auto_resolves_to_chunked_on_cpu():
  assert fused.resolve('auto') == ('pallas' if jax.default_backend() == 'gpu' else 'chunked')
  with pytest.raises(ValueError, match='implementation'):
    fused.resolve('triton')
