"""Train step: sharded equals single-device, accumulation is exact, optimizer policies hold."""
import json

from pathlib import Path

import jax
import numpy as np
import pytest

from clipjax import sharding
from clipjax.config_base import load_config
from clipjax.train.loop import Trainer


QUICKSTART = Path(__file__).resolve().parents[1] / 'configs/quickstart.py'


def tiny_config(**overrides):
  c = load_config(str(QUICKSTART))
  c.batch_size = 16
  c.data.train_num_samples = 2000
  c.tokenizer.train_captions = 300
  c.data.digit_fraction = 0.0  # shapes alone: a loss that falls within a few steps
  c.loss_implementation = 'xla'
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


def run_steps(trainer, n):
  state, loader, losses = trainer.initial_state(), trainer.make_loader(), []
  for _ in range(n):
    state, m = trainer.train_step(state, sharding.global_batch(next(loader), trainer.mesh))
    losses.append(float(m['loss']))
  return jax.device_get(state), losses


def test_grad_accumulation_equals_full_batch(tmp_path):
  full, full_losses = run_steps(Trainer(tiny_config(), tmp_path / 'a'), 3)
  acc, acc_losses = run_steps(Trainer(tiny_config(grad_accum_steps=4), tmp_path / 'b'), 3)
  np.testing.assert_allclose(full_losses, acc_losses, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(acc.params)):
    np.testing.assert_allclose(a, b, atol=2e-5)


FROZEN_TEXT = [dict(match='textual/.*', frozen=True)]


def test_loss_decreases_and_frozen_tower_stays_put(tmp_path):
  c = tiny_config(**{'optim.rules': FROZEN_TEXT})
  trainer = Trainer(c, tmp_path)
  init = jax.device_get(trainer.initial_state())
  assert set(init.frozen) == {'textual'} and 'textual' not in init.params
  state, losses = run_steps(trainer, 25)
  assert losses[-1] < losses[0] - 0.3, losses
  for name in ('textual', 'visual'):
    before, after = (s.variables()['params'][name] for s in (init, state))
    same = [np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                   jax.tree_util.tree_leaves(after))]
    assert all(same) if name == 'textual' else not any(same)
  # No optimizer state for frozen parameters: Adam's two moments per trainable leaf only.
  moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert len(moments) == 2 * len([x for x in jax.tree_util.tree_leaves(state.params)
                                  if np.ndim(x) > 0])


def test_no_weight_decay_on_vectors(tmp_path):
  """With lr warm-up at 0 only weight decay could move params; step 0 has lr 0, so check masks."""
  from clipjax.train.optimizer import make_optimizer, param_names
  trainer = Trainer(tiny_config(), tmp_path)
  params = trainer.initial_state().params
  names = jax.tree_util.tree_leaves(param_names(params))
  tx, _ = make_optimizer(trainer.config.optim, params, 10)
  zero = jax.tree_util.tree_map(np.zeros_like, params)
  opt = tx.init(params)
  for _ in range(3):  # zero gradients: only decoupled weight decay moves parameters
    updates, opt = tx.update(zero, opt, params)
  moved = dict(zip(names, (bool(np.any(u != 0)) for u in jax.tree_util.tree_leaves(updates))))
  assert not moved['log_logit_scale']
  assert not any(v for k, v in moved.items() if k.endswith(('bias', 'scale')))
  assert moved['visual/transformer/block_0/mlp/fc1/kernel']


SHARDED = r'''
import json, jax, numpy as np, tempfile
from tests.test_train import tiny_config, run_steps
from clipjax.train.loop import Trainer
out = {}
MESHES = [('one', dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
          ('d8', dict(data=8, fsdp=1, tensor=1), None),
          ('d2f4', dict(data=2, fsdp=4, tensor=1), None),
          ('d2f2t2', dict(data=2, fsdp=2, tensor=2), None)]
for name, mesh, devices in MESHES:
  if name not in NAMES:
    continue
  c = tiny_config(method=METHOD, mesh=mesh, **OVERRIDES)
  t = Trainer(c, tempfile.mkdtemp(), devices=devices)
  state, losses = run_steps(t, 2)
  shard = t.state_sharding.params['visual']['transformer']['block_0']['mlp']['fc1']['kernel'].spec
  out[name] = dict(losses=losses, spec=str(shard),
                   params=[np.asarray(x).ravel()[:50].tolist() for x in jax.tree_util.tree_leaves(state.params)])
print(json.dumps(out))
'''


# A pruned student's shapes (TinyCLIP): odd width, a layer without heads, odd MLP widths.
# Dimensions the mesh axes do not divide are replicated (sharding.fit_to_shape).
PRUNED = {'model.vision': dict(width=63, head_dim=16, layer_heads=[3, 0], layer_mlp=[254, 127])}


@pytest.mark.slow
@pytest.mark.parametrize('method,meshes,overrides,spec', [
    ('clip', ['one', 'd8', 'd2f4', 'd2f2t2'], {}, "'fsdp', 'tensor'"),
    ('siglip', ['one', 'd2f2t2'], {}, "'fsdp', 'tensor'"),
    ('clip', ['one', 'd2f2t2'], PRUNED, "None, 'tensor'")])
def test_sharded_steps_equal_single_device(python_subprocess, method, meshes, overrides, spec):
  code = (SHARDED.replace('METHOD', repr(method)).replace('NAMES', repr(meshes))
          .replace('OVERRIDES', repr(overrides)))
  out = json.loads(python_subprocess(code, devices=8).strip().splitlines()[-1])
  ref = out.pop('one')
  assert out['d2f2t2']['spec'] in (f'P({spec})', f'PartitionSpec({spec})')
  for name, got in out.items():
    np.testing.assert_allclose(got['losses'], ref['losses'], rtol=2e-5, err_msg=name)
    for a, b in zip(got['params'], ref['params']):
      np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)


def test_init_from_checkpoint_replaces_only_the_named_tower(tmp_path):
  from clipjax.convert import native
  donor = Trainer(tiny_config(seed=7), tmp_path / 'donor')
  donor_params = jax.device_get(donor.initial_state().params)
  native.save(donor.model, donor_params, str(tmp_path / 'ckpt'), donor.tokenizer)
  c = tiny_config(init_from=[dict(target='visual', src=str(tmp_path / 'ckpt'), subtree='visual')])
  params = jax.device_get(Trainer(c, tmp_path / 'run').initial_state().params)
  fresh = jax.device_get(Trainer(tiny_config(), tmp_path / 'fresh').initial_state().params)
  for got, want in [(params['visual'], donor_params['visual']), (params['textual'], fresh['textual'])]:
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(donor_params['textual']['proj'], fresh['textual']['proj'])


def test_mesh_shapes_and_errors():
  assert sharding.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
  assert sharding.mesh_shape(2, -1, 1, 8) == (2, 4, 1)
  with pytest.raises(ValueError, match='needs 6 devices'):
    sharding.mesh_shape(3, 2, 1, 8)
  with pytest.raises(ValueError, match='At most one'):
    sharding.mesh_shape(-1, -1, 1, 8)
  with pytest.raises(ValueError, match='dcn_data=3'):
    sharding.make_mesh(1, 1, 1, dcn_data=3, devices=jax.devices()[:1])


@pytest.mark.parametrize('method', ['clip', 'siglip'])
def test_auto_loss_implementation_gives_the_xla_loss_curve(tmp_path, method):
  curves = {impl: run_steps(Trainer(tiny_config(method=method, loss_implementation=impl),
                                    tmp_path / impl), 8)[1] for impl in ('xla', 'auto')}
  np.testing.assert_allclose(curves['auto'], curves['xla'], rtol=1e-5)
  assert curves['xla'][-1] < curves['xla'][0]
