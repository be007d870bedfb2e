"""Model behaviour: shapes, causal text pooling, token keeping, temperature, named sizes."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.models import build_clip


def tiny(**kw):
  return build_clip('tiny', vocab_size=100, context_length=12, eot_token_id=2, **kw)


@pytest.fixture(scope='module')
def model_and_params():
  model = tiny()
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                               jnp.zeros((1, 12), jnp.int32))['params'])
  return model, params


def test_outputs_are_normalised_and_scale_initialised(model_and_params):
  model, params = model_and_params
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
  ids = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0]] * 3)
  out = model.apply({'params': params}, images, ids)
  assert out['image_emb'].shape == (3, 64) and out['text_emb'].shape == (3, 64)
  np.testing.assert_allclose(np.linalg.norm(out['image_emb'], axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(out['logit_scale'], 1 / 0.07, rtol=1e-5)
  assert 'logit_bias' not in out


def test_logit_scale_clamped_at_100(model_and_params):
  model, params = model_and_params
  params = dict(params, log_logit_scale=jnp.asarray(math.log(1000.0)))
  scale = model.apply({'params': params}, method=lambda m: m.logit_scale())
  assert float(scale) == pytest.approx(100.0)


def test_siglip_init():
  model = tiny(init_logit_scale=10.0, init_logit_bias=-10.0)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  out = model.apply(v, jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 12), jnp.int32))
  assert float(out['logit_scale']) == pytest.approx(10.0)
  assert float(out['logit_bias']) == -10.0


def test_text_pools_at_eot_and_is_causal(model_and_params):
  model, params = model_and_params
  a = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0]])
  b = jnp.array([[1, 5, 6, 2, 9, 9, 9, 9, 9, 9, 9, 9]])   # differs only after EOT
  c = jnp.array([[1, 5, 7, 2, 0, 0, 0, 0, 0, 0, 0, 0]])   # differs before EOT
  enc = lambda ids: model.apply({'params': params}, ids, method='encode_text')
  np.testing.assert_allclose(enc(a), enc(b), atol=1e-6)
  assert np.abs(np.asarray(enc(a) - enc(c))).max() > 1e-4


def test_keep_indices(model_and_params):
  model, params = model_and_params
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
  enc = lambda keep=None: model.apply({'params': params}, images, keep, method='encode_image')
  all_tokens = jnp.tile(jnp.arange(16)[None], (2, 1))
  np.testing.assert_allclose(enc(), enc(all_tokens), atol=1e-5)
  # Permuting kept tokens does not matter (positions are added before gathering)...
  np.testing.assert_allclose(enc(), enc(all_tokens[:, ::-1]), atol=1e-4)
  # ...but dropping half of them does.
  half = model.apply({'params': params}, images, all_tokens[:, :8], method='encode_image')
  assert half.shape == (2, 64) and np.abs(np.asarray(half - enc())).max() > 1e-3


@pytest.mark.parametrize('pool', ['map', 'gap'])
def test_pooling_heads(pool):
  model = tiny(pool=pool)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  emb = model.apply(v, jnp.ones((2, 32, 32, 3)), method='encode_image')
  assert emb.shape == (2, 64) and np.isfinite(np.asarray(emb)).all()


@pytest.mark.parametrize('name,expected_millions', [
    ('ViT-B/32', 151.3), ('ViT-B/16', 149.6), ('ViT-L/14', 427.6)])
def test_named_sizes_match_openai_parameter_counts(name, expected_millions):
  """Parameter counts of OpenAI's released CLIP models (open_clip model_profile.csv)."""
  model = build_clip(name)
  s = model.vision['image_size']
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)),
                          jnp.zeros((1, 77), jnp.int32))
  n = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))
  assert n / 1e6 == pytest.approx(expected_millions, rel=0.01)


def test_bfloat16_compute_keeps_float32_params():
  model = tiny(dtype=jnp.bfloat16)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(v)))
  out = model.apply(v, jnp.ones((2, 32, 32, 3)), jnp.ones((2, 12), jnp.int32))
  assert out['image_emb'].dtype == jnp.float32


@pytest.mark.parametrize('impl', ['chunked', 'pallas'])
def test_attention_kernels_are_drop_in_for_both_towers(model_and_params, impl):
  model, params = model_and_params
  fast = tiny(attention_impl=impl)
  images = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
  ids = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0, 0, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  keep = jnp.tile(jnp.arange(0, 16, 3)[None], (2, 1))
  for method, args in (('encode_text', (ids,)), ('encode_image', (images, keep))):
    want = model.apply({'params': params}, *args, method=method)
    got = fast.apply({'params': params}, *args, method=method)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
