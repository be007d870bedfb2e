"""Train step: sharded equals single-device, accumulation is exact, optimizer policies hold."""
import json
import multiprocessing

from pathlib import Path

import jax
import numpy as np
import pytest

from clipjax import sharding
from clipjax.config_base import load_config
from clipjax.train.loop import Trainer


QUICKSTART = Path(__file__).resolve().parents[1] / 'configs/quickstart.py'


def tiny_config(path=QUICKSTART, variant=None, **overrides):
  """A config file (the quickstart's by default) shrunk to test size, then `overrides`."""
  c = load_config(str(path), variant)
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


def assert_same_params(a, b, atol, err_msg=''):
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=atol, err_msg=err_msg)


@pytest.mark.parametrize('method', ['clip', 'siglip'])
def test_grad_accumulation_equals_full_batch(tmp_path, method):
  """Every negative counts in every micro-batch (GradCache): SigLIP's all-pairs sigmoid as
  much as CLIP's softmax."""
  full, full_losses = run_steps(Trainer(tiny_config(method=method), tmp_path / 'a'), 3)
  acc, acc_losses = run_steps(Trainer(tiny_config(method=method, grad_accum_steps=4),
                                      tmp_path / 'b'), 3)
  np.testing.assert_allclose(full_losses, acc_losses, rtol=1e-5)
  assert_same_params(full, acc, 2e-5)


def test_remat_recomputes_the_same_gradients(tmp_path):
  trainers = [Trainer(tiny_config(**{'model.remat': r}), tmp_path / str(r)) for r in (False, True)]
  for trainer, remat in zip(trainers, (False, True)):
    params, images = trainer.initial_state().params, trainer.method.example_batch(2)['image']
    jaxpr = jax.make_jaxpr(lambda p, t=trainer: t.model.apply(  # pylint: disable=cell-var-from-loop
        {'params': p}, images, method='encode_image').sum())(params)
    assert ('remat' in str(jaxpr)) == remat
  (plain, plain_losses), (remat, remat_losses) = (run_steps(t, 3) for t in trainers)
  np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-6)
  assert_same_params(plain, remat, 1e-6)


def test_bfloat16_activations_train(tmp_path):
  """bf16 activations, float32 parameters and optimizer state: the loss falls as in float32."""
  trainer = Trainer(tiny_config(**{'model.dtype': 'bfloat16'}), tmp_path)
  state, losses = run_steps(trainer, 25)
  assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {np.dtype('float32')}
  assert losses[-1] < losses[0] - 0.3, losses


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
MESHES = {'one': (dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
          'd8': (dict(data=8, fsdp=1, tensor=1), None),
          'd2f4': (dict(data=2, fsdp=4, tensor=1), None),
          'd2f2t2': (dict(data=2, fsdp=2, tensor=2), None)}
for name, extra in RUNS:
  mesh, devices = MESHES[name.split('+')[0]]
  c = tiny_config(method=METHOD, mesh=mesh, **OVERRIDES, **extra)
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
# The lean loss paths per device (shard_map) and accumulation, on the 3-axis mesh ('auto'
# is 'chunked' on CPU: test_auto_resolves_to_chunked).
LEAN = [('d2f2t2+' + impl, dict(loss_implementation=impl)) for impl in ('chunked', 'pallas')]
RING = [('d2f2t2+ring', dict(loss_implementation='chunked', loss_collective='ring'))]
ACCUM = [('d2f2t2+accum', dict(grad_accum_steps=4))]


@pytest.mark.slow
@pytest.mark.parametrize('method,runs,overrides,spec', [
    ('clip', ['d8', 'd2f4', 'd2f2t2'] + LEAN + RING + ACCUM, {}, "'fsdp', 'tensor'"),
    ('siglip', ['d2f2t2'] + LEAN[:1] + RING + ACCUM, {}, "'fsdp', 'tensor'"),
    ('clip', ['d2f2t2'], PRUNED, "None, 'tensor'")])
def test_sharded_steps_equal_single_device(python_subprocess, method, runs, overrides, spec):
  """Against one device with the 'xla' loss: each mesh, loss implementation and
  accumulation gives the same two losses and parameters (measured, printed with -s: CLIP's
  losses to 8e-8 relative, SigLIP's 2.3e-7, parameters to 6e-8; asserted at 1e-6, 5e-7)."""
  runs = [('one', {})] + [r if isinstance(r, tuple) else (r, {}) for r in runs]
  code = (SHARDED.replace('METHOD', repr(method)).replace('RUNS', repr(runs))
          .replace('OVERRIDES', repr(overrides)))
  out = json.loads(python_subprocess(code, devices=8).strip().splitlines()[-1])
  ref = out.pop('one')
  assert out['d2f2t2']['spec'] in (f'P({spec})', f'PartitionSpec({spec})')
  assert len(out) == len(runs) - 1
  for name, got in out.items():
    loss_rel = np.max(np.abs(np.subtract(got['losses'], ref['losses'])) / np.abs(ref['losses']))
    param_abs = max(np.max(np.abs(np.subtract(a, b)), initial=0.0)
                    for a, b in zip(got['params'], ref['params']))
    print(f'{name}: losses to {loss_rel:.1e} relative, parameters to {param_abs:.1e}')
    np.testing.assert_allclose(got['losses'], ref['losses'], rtol=1e-6, err_msg=name)
    for a, b in zip(got['params'], ref['params']):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-7, err_msg=name)


def test_stop_at_step_then_resume_equals_one_run(tmp_path):
  """Stopping inside the schedule (the same learning rates as the whole run) and resuming
  with the same config otherwise gives the uninterrupted run's parameters, bit for bit."""
  run = lambda name, **kw: Trainer(tiny_config(total_steps=6, log_every=1, eval_every=0,
                                               checkpoint_every=6, **kw), tmp_path / name)
  whole = run('whole')
  whole.train()
  first = run('split', stop_at_step=4)
  assert first.train()['learning_rate'] == pytest.approx(float(whole.learning_rate(3)))
  assert int(first.state.step) == 4
  rest = run('split')
  rest.train()
  assert int(rest.state.step) == 6
  events = list((tmp_path / 'split' / 'tensorboard').glob('events.out.tfevents.*'))
  assert events and all(b'train/loss' in e.read_bytes() for e in events)  # one per start
  for a, b in zip(jax.tree_util.tree_leaves(whole.state.params),
                  jax.tree_util.tree_leaves(rest.state.params)):
    np.testing.assert_array_equal(a, b)


def test_a_failed_run_stops_its_loader_workers(tmp_path, monkeypatch):
  """train() closes its loader however it ends: a caught error (whose traceback keeps the
  loop's frame alive, as a notebook's last exception does) leaves no grain worker
  processes running (closing also unlinks the shared memory of the batches they queued)."""
  trainer = Trainer(tiny_config(total_steps=6, eval_every=0, **{'data.num_workers': 2}), tmp_path)
  calls = []

  def failing(local):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError('step 3 fails')
    return sharding.global_batch(local, trainer.mesh)

  monkeypatch.setattr(trainer, 'global_batch', failing)
  before = set(multiprocessing.active_children())
  with pytest.raises(RuntimeError, match='step 3 fails') as failure:
    trainer.train()
  assert failure.traceback  # the loop's frame, and the loader in it, are still referenced
  assert set(multiprocessing.active_children()) == before


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


def test_bad_loss_options_stop_the_run_at_its_start(tmp_path):
  with pytest.raises(ValueError, match="collective='ring' needs a tiled"):
    Trainer(tiny_config(loss_implementation='xla', loss_collective='ring'), tmp_path)
  with pytest.raises(ValueError, match="implementation='fast'"):
    Trainer(tiny_config(loss_implementation='fast'), tmp_path)


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
