"""Optimizer rules: per-parameter schedules, decay, ascent and clipping by name."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clipjax.config_base import base_config
from clipjax.train.optimizer import compile_rules, make_optimizer, resolve


def optim(**overrides):
  c = ml_collections.ConfigDict(base_config().optim.to_dict())
  c.update(overrides)
  return c


PARAMS = {'visual': {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)},
          'textual': {'w': jnp.ones((2, 2))}, 'scale': jnp.ones(())}


def updates_over(tx, grads, steps):
  """Each step's updates (as host arrays) for constant `grads`, params held fixed."""
  state, out = tx.init(PARAMS), []
  for _ in range(steps):
    u, state = tx.update(grads, state, PARAMS)
    out.append(jax.device_get(u))
  return out


def test_each_field_comes_from_the_first_rule_that_sets_it():
  rules = compile_rules([dict(match='visual/.*', lr_mult=0.5), dict(match='visual/w', lr_mult=2.0,
                                                                    decay_mult=3.0)])
  assert resolve('visual/w', rules) == {'lr_mult': 0.5, 'decay_mult': 3.0}
  assert resolve('textual/w', rules) == {}
  with pytest.raises(ValueError, match="unknown fields \\['lr_multiplier'\\]"):
    compile_rules([dict(match='.*', lr_multiplier=2.0)])
  with pytest.raises(ValueError, match='no "match"'):
    compile_rules([dict(frozen=True)])


def test_a_rule_schedule_ends_early_and_holds_zero_lit_style():
  """ProtoCLIP's LiT phase: the visual cosine ends at step 4 and its rate stays 0; the
  rest keeps its own schedule; a constant rule ignores warm-up."""
  cfg = optim(lr=0.1, warmup_steps=2, weight_decay=0.0, grad_clip=0.0,
              rules=[dict(match='visual/.*', decay_steps=4), dict(match='scale', schedule='constant')])
  tx, base = make_optimizer(cfg, PARAMS, total_steps=10)
  grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
  steps = updates_over(tx, grads, 8)
  visual = [float(np.abs(u['visual']['w']).max()) for u in steps]
  textual = [float(np.abs(u['textual']['w']).max()) for u in steps]
  assert visual[0] == textual[0] == 0.0  # warm-up starts at 0
  assert all(v == 0.0 for v in visual[4:]) and all(t > 0 for t in textual[1:])
  assert all(abs(float(u['scale']) + 0.1) < 1e-6 for u in steps)  # Adam's first steps: -lr
  np.testing.assert_allclose(textual[1], float(base(1)), rtol=1e-5)


@pytest.mark.parametrize('visual_grad', [0.2, 2.0])
def test_ascent_and_clipping_by_rule(visual_grad):
  """Adam with eps far above the gradients updates in proportion to them, which shows
  the clipping: only `clip=True` parameters count in (and are scaled by) the global norm."""
  cfg = optim(lr=1.0, warmup_steps=0, weight_decay=0.0, b1=0.0, b2=0.0, eps=1e6, grad_clip=1.0,
              rules=[dict(match='textual/.*', ascent=True, clip=False),
                     dict(match='scale', clip=False)],)
  tx, _ = make_optimizer(cfg, PARAMS, total_steps=10, offset=0)
  grads = {'visual': {'w': jnp.full((2, 2), visual_grad), 'b': jnp.full(2, visual_grad)},
           'textual': {'w': jnp.full((2, 2), 100.0)}, 'scale': jnp.float32(100.0)}
  [u] = updates_over(tx, grads, 1)
  # The cosine at step 0 is the full rate. The clipped leaves' norm is sqrt(6) * visual_grad:
  # 0.49 stays, 4.9 is scaled to 1; the unclipped leaves' 200 counts in neither case.
  clipped = visual_grad * min(1.0, 1.0 / (np.sqrt(6) * visual_grad))
  np.testing.assert_allclose(u['visual']['w'], -clipped / 1e6, rtol=1e-4)
  np.testing.assert_allclose(u['textual']['w'], +100.0 / 1e6, rtol=1e-4)  # ascends, unclipped
  np.testing.assert_allclose(u['scale'], -100.0 / 1e6, rtol=1e-4)


def test_weight_decay_multipliers_and_the_default_rule():
  cfg = optim(lr=1.0, warmup_steps=0, weight_decay=0.1, grad_clip=0.0,
              rules=[dict(match='textual/.*', decay_mult=0.5), dict(match='visual/b', decay_mult=1.0)])
  tx, _ = make_optimizer(cfg, PARAMS, total_steps=10)
  zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
  [u] = updates_over(tx, zero, 1)  # zero gradients: only decoupled decay moves parameters
  np.testing.assert_allclose(u['visual']['w'], -0.1, rtol=1e-5)   # matrices decay by default
  np.testing.assert_allclose(u['visual']['b'], -0.1, rtol=1e-5)   # a rule decays a vector
  np.testing.assert_allclose(u['textual']['w'], -0.05, rtol=1e-5)
  assert float(u['scale']) == 0.0                                # vectors and scalars do not
