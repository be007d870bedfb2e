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


def random_keep(rng, batch, patches, kept):
  """[B, K] sorted kept patch indices and the same as a bool [B, N] mask."""
  idx = np.sort(np.stack([rng.permutation(patches)[:kept] for _ in range(batch)]), axis=1)
  mask = np.zeros((batch, patches), bool)
  np.put_along_axis(mask, idx, True, axis=1)
  return jnp.asarray(idx), jnp.asarray(mask)


@pytest.mark.parametrize('impl,pool', [('xla', 'cls'), ('chunked', 'cls'), ('pallas', 'cls'),
                                       ('chunked', 'gap')])
def test_masked_tokens_equal_the_gathered_tokens(impl, pool):
  """A-CLIP's two ways of dropping patches: masking them out of every attention's keys
  over the full sequence gives, for the kept tokens and the pooled output, what the ViT
  gives on the gathered tokens alone (float32, 1e-5)."""
  model = tiny(attention_impl=impl, pool=pool, patch_size=4)  # 64 patches
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  images = jax.random.normal(jax.random.PRNGKey(3), (3, 32, 32, 3))
  idx, mask = random_keep(np.random.default_rng(0), 3, 64, 27)
  run = lambda **kw: model.apply(v, method=lambda m: m.visual(images, **kw))
  g_emb, g_pooled, g_tokens = run(keep_indices=idx)
  m_emb, m_pooled, m_tokens = run(token_keep=mask)
  np.testing.assert_allclose(m_emb, g_emb, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m_pooled, g_pooled, rtol=1e-5, atol=1e-5)
  offset = int(pool == 'cls')
  kept = jnp.take_along_axis(m_tokens[:, offset:], idx[..., None], axis=1)
  np.testing.assert_allclose(kept, g_tokens[:, offset:], rtol=1e-5, atol=1e-5)
  # The mask is real: the full sequence without it gives another embedding.
  assert np.abs(np.asarray(run()[0] - m_emb)).max() > 1e-3


@pytest.mark.parametrize('impl', ['xla', 'chunked'])
def test_text_padding_is_masked_out_of_attention(impl):
  """The text tower's tokens up to the end-of-text token are those of the unpadded text,
  and padding tokens attend to the text only (not to each other)."""
  model = tiny(attention_impl=impl)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  ids = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0], [1, 7, 8, 9, 11, 2, 0, 0, 0, 0, 0, 0]])
  padded = model.apply(v, method=lambda m: m.textual(ids))[1]
  for row, length in enumerate((4, 6)):
    alone = model.apply(v,
                        method=lambda m, i=ids[row:row + 1, :length]: m.textual(i))[1]
    np.testing.assert_allclose(padded[row, :length], alone[0], rtol=1e-5, atol=1e-5)
  # A padding token sees the text and itself, not the padding before it: changing the pad
  # at position 5 leaves position 7 alone (causal attention alone would let it through).
  other = ids.at[0, 5].set(9)
  changed = model.apply(v, method=lambda m: m.textual(other))[1]
  np.testing.assert_allclose(changed[0, 7], padded[0, 7], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(changed[0, 5] - padded[0, 5])).max() > 1e-3


def test_class_token_attention_is_sown_on_request(model_and_params):
  """With 'intermediates' mutable every block sows its class-token attention row, the
  softmax of the full attention map's first row (computed here in float64)."""
  model, params = model_and_params
  images = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 32, 3))
  _, state = model.apply({'params': params}, images, method='encode_image',
                         mutable=['intermediates'])
  rows = state['intermediates']['visual']['transformer']
  assert sorted(rows) == ['block_0', 'block_1']
  (got,) = rows['block_0']['attn']['cls_attention']
  assert got.shape == (2, 4, 17)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
  # float64 reference: q, k of block 0 from its input (ln_1 of ln_pre of the embedded tokens).
  _, inter = model.apply({'params': params}, images, method='encode_image',
                         capture_intermediates=True, mutable=['intermediates'])
  x = np.asarray(inter['intermediates']['visual']['transformer']['block_0']['ln_1']['__call__'][0],
                 np.float64)
  attn = params['visual']['transformer']['block_0']['attn']
  proj = lambda n: np.einsum('btw,whd->bthd', x, np.asarray(attn[n]['kernel'], np.float64)) + \
      np.asarray(attn[n]['bias'], np.float64)
  q, k = proj('query'), proj('key')
  logits = np.einsum('bhd,bkhd->bhk', q[:, 0], k) / np.sqrt(q.shape[-1])
  want = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_flops_fall_with_the_kept_tokens():
  """Compiled FLOPs (XLA cost analysis) of a ViT forward and backward on the gathered
  tokens fall in proportion to the tokens kept (within 15%), the masked path's do not."""
  model = build_clip('tiny', vocab_size=100, context_length=12, patch_size=4,
                     vision=dict(width=128, layers=2, heads=4))
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
  images = jnp.zeros((8, 32, 32, 3))

  def flops(**kw):
    loss = lambda p: model.apply(p, method=lambda m: m.visual(images, **kw)[0]).sum()
    cost = jax.jit(jax.grad(loss)).lower(v).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)['flops']
  full = flops()
  for kept in (16, 32, 48):
    idx, mask = random_keep(np.random.default_rng(kept), 8, 64, kept)
    ratio = flops(keep_indices=idx) / full
    assert ratio == pytest.approx((kept + 1) / 65, rel=0.15), kept
    assert flops(token_keep=mask) / full > 0.95


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
