"""The method interface carries what the seed methods need: BatchNorm state, EMA copies in
aux, episode hooks with a sharded feature pass, frozen towers, activation sharding, and a
layering in which methods never reach into the training loop."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from clipjax import evaluate
from clipjax.train.loop import Trainer
from clipjax.train.metrics import WALL_CLOCK_KEYS
from tests.test_multihost import finish, launch
from tests.conftest import ROOT
from tests.test_train import FROZEN_TEXT, tiny_config

METHODS = 'tests.interface_methods:'


def logged(workdir) -> list:
  rows = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in rows]


def leaves(tree):
  return jax.tree_util.tree_leaves(jax.device_get(tree))


def cut_after(workdir, step):
  """The workdir as a run killed after checkpointing `step` would have left it."""
  for ckpt in (Path(workdir) / 'checkpoints').iterdir():
    if ckpt.name.isdigit() and int(ckpt.name) > step:
      shutil.rmtree(ckpt)


# ---------------------------------------------------------------- state

def test_batch_stats_train_checkpoint_and_resume_exactly(tmp_path):
  config = tiny_config(method=METHODS + 'BatchNormCLIP', total_steps=6, checkpoint_every=3,
                       log_every=1)
  full = Trainer(config, tmp_path / 'full')
  initial = jax.device_get(full.initial_state().mutables)
  full.train()
  stats = jax.device_get(full.state.mutables)
  assert set(stats) == {'batch_stats'}
  assert all(not np.array_equal(a, b) for a, b in zip(leaves(initial), leaves(stats)))
  assert all(np.isfinite(r['head_loss']) for r in logged(tmp_path / 'full'))
  shutil.copytree(tmp_path / 'full', tmp_path / 'resumed')
  cut_after(tmp_path / 'resumed', 3)
  resumed = Trainer(config, tmp_path / 'resumed')
  resumed.train()
  assert logged(tmp_path / 'resumed') == logged(tmp_path / 'full')
  for a, b in zip(leaves(resumed.state), leaves(full.state)):
    np.testing.assert_array_equal(a, b)


def test_evaluators_see_the_ema_kept_in_aux(tmp_path):
  config = tiny_config(method=METHODS + 'EMACLIP', total_steps=4, **{'evals': {
      'colour': dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=64)}})
  trainer = Trainer(config, tmp_path)
  # The EMA copy is sharded by the same logical rules as the parameters it follows.
  assert (jax.tree_util.tree_map(lambda s: s.spec, trainer.state_sharding.aux['ema']) ==
          jax.tree_util.tree_map(lambda s: s.spec, trainer.state_sharding.params))
  state, loader = trainer.initial_state(), trainer.make_loader()
  ema = [np.asarray(x, np.float64) for x in leaves(state.params)]
  for _ in range(4):
    state, _ = trainer.train_step(state, trainer.global_batch(next(loader)))
    ema = [0.8 * e + 0.2 * np.asarray(p, np.float64) for e, p in zip(ema, leaves(state.params))]
  for got, want in zip(leaves(state.aux['ema']), ema):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def colour(params):
    encoder = evaluate.Encoder(evaluate.EvalView.of(trainer.model, params), trainer.tokenizer,
                               context_length=24, image_size=32)
    return evaluate.run_evaluators(trainer._evaluators, encoder)  # pylint: disable=protected-access
  results = trainer.evaluate(state)[0]
  assert results == colour(state.aux['ema'])
  view = trainer.method.eval_view(state).variables['params']
  assert all(np.array_equal(a, b) for a, b in zip(leaves(view), leaves(state.aux['ema'])))


def test_frozen_text_tower_drops_its_backward_from_the_step(tmp_path):
  """Cost analysis of the compiled quickstart step; grad_norm is over trainable params."""
  flops = {}
  for name, rules in (('trained', []), ('frozen', FROZEN_TEXT)):
    trainer = Trainer(tiny_config(**{'optim.rules': rules}), tmp_path / name)
    state = trainer.initial_state()
    batch = trainer.global_batch(next(trainer.make_loader()))
    compiled = trainer.train_step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    flops[name] = (cost[0] if isinstance(cost, list) else cost)['flops']
  print(f'step FLOPs: {flops}, frozen / trained {flops["frozen"] / flops["trained"]:.3f}')
  assert flops['frozen'] <= 0.7 * flops['trained']

  rng = jax.random.fold_in(state.rng, state.step)
  grads = jax.grad(lambda p: trainer.method.loss(state.variables(p), state.aux, batch, rng)[0])(
      state.params)
  want = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in leaves(grads)))
  _, metrics = trainer.train_step(state, batch)
  np.testing.assert_allclose(float(metrics['grad_norm']), want, rtol=1e-5)


def test_transform_and_declared_batch_must_agree(tmp_path):
  trainer = Trainer(tiny_config(), tmp_path)
  batch = next(trainer.make_loader())
  with pytest.raises(ValueError, match="'extra'"):
    trainer.global_batch(dict(batch, extra=batch['text']))


def test_accumulation_needs_a_method_that_embeds(tmp_path):
  config = tiny_config(method=METHODS + 'EMACLIP', grad_accum_steps=2)
  Trainer(config, tmp_path / 'ok')  # EMACLIP keeps Method.loss: accumulation goes through it
  config.method = METHODS + 'OnePieceCLIP'
  with pytest.raises(ValueError, match='grad_accum_steps=2'):
    Trainer(config, tmp_path / 'refused')


def test_methods_import_nothing_from_the_training_loop():
  """Layers run downward: clipjax.methods may use models, losses, data, evaluate, convert
  and sharding, never clipjax.train (which reaches methods through the registry)."""
  for path in (ROOT / 'clipjax/methods').glob('*.py'):
    tree = ast.parse(path.read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [f'{n.module}.{a.name}' for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) for a in n.names]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith('clipjax.train')], path
    assert 'clipjax.train' not in path.read_text(), path  # nor by name (importlib)


# ---------------------------------------------------------------- sharding

ACTIVATIONS = r'''
import json, tempfile, jax, flax.linen as nn
from clipjax.models.layers import Block
from tests.test_train import tiny_config
from clipjax.train.loop import Trainer
out = {}
for name, mesh in [('data', dict(data=8, fsdp=1, tensor=1)), ('fsdp', dict(data=1, fsdp=8, tensor=1)),
                   ('mixed', dict(data=2, fsdp=2, tensor=2))]:
  trainer = Trainer(tiny_config(mesh=mesh, batch_size=16), tempfile.mkdtemp())
  state = trainer.initial_state()
  batch = trainer.global_batch(next(trainer.make_loader()))
  rows = []
  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, Block) and context.method_name == '__call__':
      jax.debug.inspect_array_sharding(y, callback=lambda s, shape=y.shape: rows.append(s.shard_shape(shape)[0]))
    return y
  with nn.intercept_methods(record):
    compiled = trainer.train_step.lower(state, batch).compile()
  out[name] = dict(rows=rows, temp=compiled.memory_analysis().temp_size_in_bytes)
print(json.dumps(out))
'''


@pytest.mark.slow
def test_activations_stay_batch_split_on_every_mesh(python_subprocess):
  """Each block's output holds 16 / (data x fsdp) rows per device, and FSDP's step needs
  about the temporary memory of data parallelism."""
  out = json.loads(python_subprocess(ACTIVATIONS, devices=8).strip().splitlines()[-1])
  print({k: (v['temp'], sorted(set(v['rows']))) for k, v in out.items()})
  for name, rows in (('data', 2), ('fsdp', 2), ('mixed', 4)):
    assert out[name]['rows'] and set(out[name]['rows']) == {rows}, (name, out[name]['rows'])
  assert out['fsdp']['temp'] <= 1.25 * out['data']['temp'], out


# ---------------------------------------------------------------- hooks

EPISODE_ARGS = ['--config.method=' + METHODS + 'EpisodeCLIP', '--config.total_steps=7',
                '--config.checkpoint_every=2']


@pytest.mark.slow
def test_episode_feature_pass_is_the_same_on_two_processes_as_on_one_device(tmp_path):
  multi = launch(2, tmp_path / 'multi', *EPISODE_ARGS, DEVICES_PER_PROCESS='2')
  one = subprocess.run(
      [sys.executable, '-m', 'clipjax.main', '--config', str(ROOT / 'configs/quickstart.py'),
       *SMALL_ARGS, *EPISODE_ARGS, '--config.data.read_threads=4',  # reads ahead, same rows
       '--workdir', str(tmp_path / 'one')],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  assert one.returncode == 0, one.stderr[-3000:]
  out = finish(multi)
  assert '2 local / 4 global devices' in out
  for episode in (0, 1, 2):
    got, want = (np.load(tmp_path / run / f'episode_{episode}.npz') for run in ('multi', 'one'))
    assert got['image'].shape == (37, 64) and got['valid'].all()
    np.testing.assert_allclose(got['image'], want['image'], atol=2e-5)
  got, want = logged(tmp_path / 'multi'), logged(tmp_path / 'one')
  np.testing.assert_allclose([r['prototype_loss'] for r in got],
                             [r['prototype_loss'] for r in want], rtol=2e-5, atol=2e-6)


SMALL_ARGS = ['--config.batch_size=16', '--config.data.train_num_samples=2000',
              '--config.tokenizer.train_captions=300', '--config.eval_every=0',
              '--config.log_every=1']  # as tests.test_multihost.launch runs


@pytest.mark.slow
def test_a_hook_killed_half_way_resumes_to_the_same_losses(tmp_path):
  def run(workdir, **env):
    return subprocess.run(
        [sys.executable, '-m', 'clipjax.main', '--config', str(ROOT / 'configs/quickstart.py'),
         *SMALL_ARGS, *EPISODE_ARGS, '--workdir', str(workdir)], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu', **env))
  assert run(tmp_path / 'ref').returncode == 0
  killed = run(tmp_path / 'run', CLIPJAX_TEST_KILL_IN_EPISODE='2')  # at step 6, after the pass
  assert killed.returncode == -9
  assert [r['step'] for r in logged(tmp_path / 'run')][-1] == 6
  resumed = run(tmp_path / 'run')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming at step' in resumed.stderr
  assert logged(tmp_path / 'run') == logged(tmp_path / 'ref')
