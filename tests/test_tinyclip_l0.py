"""TinyCLIP automatic inheritance: masked towers, fold-and-prune, the sparsity Lagrangian."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clipjax import models
from clipjax.convert import load
from clipjax.methods import l0

TOWERS = ('visual', 'textual')
STEPS = 600


@pytest.fixture(scope='module')
def tiny():
  model = models.build_clip('tiny', vocab_size=50, context_length=12, eot_token_id=2,
                            vision=dict(width=64, heads=4, layers=2),
                            text=dict(width=64, heads=4, layers=2))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(3, 50, size=(3, 12)).astype(np.int32)
  ids[:, 7] = 2
  params = load.unbox(model.init(jax.random.PRNGKey(0), images, ids))['params']
  return model, params, {'visual': images, 'textual': ids}


def encode(model, params, tower, inputs, masks=None):
  """The real tower under structured masks, at the sizes `params` have (pruned or not)."""
  sizes = {'vision' if t == 'visual' else 'text': l0.pruned_sizes(params, t) for t in TOWERS}
  model = model.clone(vision=dict(model.vision, **sizes['vision']),
                      text=dict(model.text, **sizes['text']))
  method = 'encode_image' if tower == 'visual' else 'encode_text'
  return model.apply({'params': params}, inputs[tower], masks=masks, method=method)


def random_logas(params, seed):
  rng = np.random.default_rng(seed)
  return {t: jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(1.0, 3.0, a.shape), jnp.float32),
                                    l0.init_logas(l0.tower_dims(params, t))) for t in TOWERS}


def test_unit_masks_equal_the_model(tiny):
  model, params, inputs = tiny
  for tower, method in zip(TOWERS, ('encode_image', 'encode_text')):
    ones = jax.tree_util.tree_map(jnp.ones_like, l0.init_logas(l0.tower_dims(params, tower)))
    want = model.apply({'params': params}, inputs[tower], method=method)
    for masks in (None, ones):
      got = encode(model, params, tower, inputs, masks)
      np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_hard_concrete_statistics():
  loga = jnp.array([-3.0, 0.0, 3.0])
  z = jax.vmap(lambda r: l0.sample({'a': loga}, r)['a'])(jax.random.split(jax.random.PRNGKey(0), 20000))
  assert float(z.min()) == 0.0 and float(z.max()) == 1.0
  np.testing.assert_allclose(np.mean(np.asarray(z) > 0, 0), l0.score(loga), atol=0.01)
  assert l0.clamp({'a': jnp.array([10.0, -10.0])})['a'].tolist() == pytest.approx([4.6052, -4.6052], abs=1e-4)


def test_deterministic_mask_zeros_the_expected_count():
  loga = np.array([[4.0, -4.0, 0.5, -0.2], [3.0, 3.0, 3.0, -3.0]], np.float32)
  z = l0.deterministic(loga)
  for row, zr in zip(loga, z):
    assert np.sum(zr == 0) == round(4 - float(jnp.sum(l0.score(row))))
    kept = zr > 0
    np.testing.assert_allclose(zr[kept], 1 / (1 + np.exp(-row[kept] / l0.BETA * l0.MAGIC)), rtol=1e-6)


def test_pruned_dense_model_equals_masked_model(tiny):
  model, params, inputs = tiny
  masks = l0.deterministic_masks(random_logas(params, 1))
  pruned = l0.prune(params, masks)
  for tower in TOWERS:
    got = encode(model, pruned, tower, inputs)
    want = encode(model, params, tower, inputs, masks[tower])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert l0.prunable_count(pruned, tower) < l0.prunable_count(params, tower)
    kept = int(np.sum(masks[tower]['hidden'] > 0))
    assert pruned[tower]['proj'].shape[0] == kept < 64


def test_pruned_student_is_a_clip_model(tiny):
  """Under `pruned_sizes` (per-layer heads and neurons) the pruned params are an ordinary
  CLIPModel computing the masked model, also with a layer's heads or neurons all gone."""
  model, params, inputs = tiny
  logas = random_logas(params, 3)
  logas['visual']['heads'] = logas['visual']['heads'].at[0].set(-10.0)
  logas['textual']['intermediate'] = logas['textual']['intermediate'].at[1].set(-10.0)
  masks = l0.deterministic_masks(logas)
  pruned = l0.prune(params, masks)
  sizes = {t: l0.pruned_sizes(pruned, t) for t in TOWERS}
  assert sizes['visual']['layer_heads'][0] == 0 and sizes['textual']['layer_mlp'][1] == 0
  student = model.clone(vision=dict(model.vision, **sizes['visual']),
                        text=dict(model.text, **sizes['textual']))
  abstract = load.unbox(load.abstract_params(student, inputs['visual'][:1], inputs['textual'][:1]))
  assert jax.tree_util.tree_map(np.shape, abstract) == jax.tree_util.tree_map(np.shape, pruned)
  for tower, method in zip(TOWERS, ('encode_image', 'encode_text')):
    got = student.apply({'params': pruned}, inputs[tower], method=method)
    want = encode(model, params, tower, inputs, masks[tower])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('target', [0.25, 0.5, 0.75])
def test_lagrangian_reaches_target_and_prune_matches_it(target):
  """The Lagrangian against a stand-in task loss that prefers dense models (what the
  distillation loss does): the multipliers grow until the expected sparsity meets the
  ramped target; the pruned model's prunable parameters then match it within 2%."""
  model = models.build_clip('tiny', vocab_size=50, context_length=12, eot_token_id=2,
                            vision=dict(width=256, heads=8, layers=2),
                            text=dict(width=128, heads=4, layers=2))
  params = load.unbox(load.abstract_params(model, jnp.zeros((1, 32, 32, 3)),
                                           jnp.zeros((1, 12), jnp.int32)))
  dims = {t: l0.tower_dims(params, t) for t in TOWERS}
  state = {'masks': {t: l0.init_logas(dims[t]) for t in TOWERS},
           'lambdas': {'lambda_1': jnp.float32(l0.INIT_LAMBDA), 'lambda_2': jnp.float32(l0.INIT_LAMBDA)}}
  tx = optax.adam(0.02)
  opt = tx.init(state)

  @jax.jit
  def step(state, opt, i):
    def loss(s):
      expected = l0.expected_sparsity(s['masks'], dims)
      return 0.5 * expected + l0.lagrangian(expected, l0.target_sparsity(i, 0.0, target, 100),
                                            s['lambdas'])
    g = jax.grad(loss)(state)
    g = dict(g, lambdas=jax.tree_util.tree_map(jnp.negative, g['lambdas']))  # ascent
    updates, opt = tx.update(g, opt)
    state = optax.apply_updates(state, updates)
    return dict(state, masks=l0.clamp(state['masks'])), opt

  for i in range(STEPS):
    state, opt = step(state, opt, i)
  expected = float(l0.expected_sparsity(state['masks'], dims))
  assert abs(expected - target) < 0.02, expected
  full = {t: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), params[t]) for t in TOWERS}
  pruned = l0.prune(full, l0.deterministic_masks(state['masks']))
  kept = sum(l0.prunable_count(pruned, t) for t in TOWERS)
  total = sum(l0.prunable_size(dims[t]) for t in TOWERS)
  print(f'target {target}: expected sparsity {expected:.4f}, pruned {1 - kept / total:.4f}')
  assert abs((1 - kept / total) - target) < 0.02


def test_next_stage_expands_pruned_student_into_masked_full_model(tiny):
  """Stage k+1 starts from the full architecture holding stage k's pruned student in its
  leading slices; with the expanded logits' masks it computes the pruned student's outputs."""
  model, params, inputs = tiny
  pruned = l0.prune(params, l0.deterministic_masks(random_logas(params, 2)))
  full, logas = l0.expand(pruned, params)
  for tower in TOWERS:
    assert jax.tree_util.tree_structure(full[tower]) == jax.tree_util.tree_structure(params[tower])
    hard = jax.tree_util.tree_map(lambda a: (a > 0).astype(np.float32), logas[tower])
    want = encode(model, pruned, tower, inputs)
    for masks in (hard, l0.deterministic_masks({tower: logas[tower]})[tower]):
      got = encode(model, full, tower, inputs, masks)
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
