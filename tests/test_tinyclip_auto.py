"""TinyCLIP automatic inheritance in the loop: the mid-run prune to a dense student with a
fresh optimizer, exact resume on either side of it, and chained progressive stages."""
import json
import shutil

import jax
import numpy as np
import pytest
from conftest import assert_within_seeds

from clipjax import sharding
from clipjax.convert import native
from clipjax.methods import l0
from clipjax.train import stages
from clipjax.train.loop import Trainer
from clipjax.train.metrics import WALL_CLOCK_KEYS
from tests.test_tinyclip import run_steps, student_config
from tests.test_train import tiny_config

TOWERS = (('visual', 'vision', 'image', 'encode_image'), ('textual', 'text', 'text', 'encode_text'))
PRUNE_STEP = 4
TOWER = dict(layers=2, width=32, heads=2)  # small: each test compiles several steps


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A 2+2-block, 32-wide quickstart CLIP after a few InfoNCE steps, as a native folder."""
  tmp = tmp_path_factory.mktemp('teacher')
  trainer = Trainer(tiny_config(**{'model.vision': TOWER, 'model.text': TOWER}), tmp / 'run')
  state, _ = run_steps(trainer, 10)
  native.save(trainer.model, jax.device_get(state.params), str(tmp / 'teacher'), trainer.tokenizer)
  np.savez(tmp / 'teacher/batch.npz', **next(trainer.make_loader()))  # a held batch
  return str(tmp / 'teacher')


def auto_config(teacher, **overrides):
  """Teacher-sized student inheriting the teacher, masks learning fast (lr 0.5) so that a
  few steps prune something."""
  c = student_config(teacher, **{
      'model.vision': TOWER, 'model.text': TOWER, 'optim.warmup_steps': PRUNE_STEP,
      'total_steps': 9, 'checkpoint_every': 3, 'log_every': 1, **overrides})
  c.tinyclip.auto = dict(start_sparsity=0.0, target_sparsity=0.5, sparsity_warmup=3,
                         prune_step=PRUNE_STEP, lr=0.5)
  return c


def leaves_equal(a, b) -> bool:
  a, b = jax.device_get(a), jax.device_get(b)
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and
          all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                    jax.tree_util.tree_leaves(b))))


def logged(workdir) -> list:
  """metrics.jsonl without the wall-clock throughput."""
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in rows]


@pytest.mark.slow
def test_prune_keeps_the_evaluated_outputs_and_training_goes_on(teacher_dir, tmp_path):
  trainer = Trainer(auto_config(teacher_dir), tmp_path)
  masked, _ = run_steps(trainer, PRUNE_STEP)
  batch = sharding.global_batch(next(trainer.make_loader()), trainer.mesh)
  params = jax.device_get(masked.params)
  # What the evaluators see in the mask phase: the deterministic masks the prune will apply.
  view = trainer.method.eval_view(masked)
  want = {t: (view.encode_image if k == 'image' else view.encode_text)(view.variables, batch[k])
          for t, _, k, _ in TOWERS}
  exported_model, exported = trainer.method.export(masked)  # what a prune now would leave

  [hook] = trainer.method.hooks()
  assert hook.due(PRUNE_STEP) and not hook.due(PRUNE_STEP - 1)
  dense = hook.fn(trainer.hook_context, masked)
  assert 'l0' not in dense.params and int(dense.step) == PRUNE_STEP
  [record] = trainer.records  # saved with every later checkpoint
  assert record['step'] == PRUNE_STEP and record['config']['tinyclip'] == {'auto': {}}
  assert leaves_equal(dense.params, exported) and exported_model == trainer.model
  for tower, s, key, method in TOWERS:
    sizes = l0.pruned_sizes(dense.params, tower)
    assert sizes == record['config']['model'][s]
    assert l0.prunable_count(dense.params, tower) < l0.prunable_count(params, tower)
    got = trainer.model.apply({'params': dense.params}, batch[key], method=method)
    np.testing.assert_allclose(got, want[tower], atol=2e-5, rtol=1e-4)
  moments = [x for x in jax.tree_util.tree_leaves(jax.device_get(dense.opt_state)) if np.ndim(x)]
  assert moments and not any(np.any(x) for x in moments)  # a fresh optimizer
  before = jax.device_get(dense.params)  # the step donates its input state
  after, metrics = run_steps(trainer, 1, state=dense)
  # The fresh optimizer goes on with the schedule: Adam's first update of a vector (no
  # weight decay) is lr * g / (|g| + eps), so its largest entry is the rate at step 4.
  vectors = [np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(
      after.params)), jax.tree_util.tree_leaves(before)) if np.ndim(a) == 1]
  assert max(vectors) == pytest.approx(float(trainer.learning_rate(PRUNE_STEP)), rel=1e-3)
  assert trainer.learning_rate(PRUNE_STEP) > trainer.learning_rate(0)
  after, metrics = run_steps(trainer, 3, state=after)
  print('distill loss after the prune:', [round(m['distill_loss'], 4) for m in metrics])
  assert all(np.isfinite(m['loss']) and m['loss'] == m['distill_loss'] for m in metrics)
  assert not leaves_equal(after.params, before)


@pytest.mark.slow
def test_resume_on_either_side_of_the_prune_is_exact(teacher_dir, tmp_path):
  config = auto_config(teacher_dir)
  full = Trainer(config, tmp_path / 'full')
  full.train()
  for keep in (3, 6):  # the newest checkpoint left: before the prune at 4, then after it
    run = tmp_path / f'resumed_from_{keep}'
    shutil.copytree(tmp_path / 'full', run)
    for ckpt in (run / 'checkpoints').iterdir():
      if ckpt.name.isdigit() and int(ckpt.name) > keep:
        shutil.rmtree(ckpt)
    resumed = Trainer(config, run)
    assert bool(resumed.config.tinyclip.auto) == (keep < PRUNE_STEP)  # the model it restores
    resumed.train()
    assert leaves_equal(resumed.state.params, full.state.params), keep
    assert logged(run) == logged(tmp_path / 'full'), keep


@pytest.mark.slow
def test_stages_chain_pruned_students_and_resume_mid_chain(teacher_dir, tmp_path):
  """25% then 50%: stage 2 starts from the full masked model holding stage 1's student
  (computing it exactly), prunes further, and a run cut inside stage 2 resumes exactly."""
  config = auto_config(teacher_dir, total_steps=6)
  auto = lambda start, target: {'tinyclip.auto': dict(
      start_sparsity=start, target_sparsity=target, sparsity_warmup=2, prune_step=3, lr=0.5)}
  config.stages = [auto(0.0, 0.25), auto(0.25, 0.5)]
  chain = Trainer(config, tmp_path / 'chain')
  chain.train()
  first, second = (native.load_native(str(tmp_path / f'chain/stage_{i}')) for i in (1, 2))
  count = lambda params: sum(l0.prunable_count(params, t) for t, *_ in TOWERS)
  teacher = native.load_native(teacher_dir)[1]
  print('prunable params: teacher', count(teacher), 'stage 1', count(first[1]),
        'stage 2', count(second[1]))
  assert count(second[1]) < count(first[1]) < count(teacher)
  assert [r['step'] for r in chain.records] == [3, 9]  # each stage's prune, 3 steps into it

  stage2 = stages.stage_configs(config)[1]
  stage2.previous_stage = str(tmp_path / 'chain/stage_1')
  probe = Trainer(stage2, tmp_path / 'probe')
  params = jax.device_get(probe.initial_state().variables()['params'])
  masks = l0.deterministic_masks(params.pop('l0')['masks'])
  batch = dict(np.load(f'{teacher_dir}/batch.npz'))
  model, student = first
  for tower, _, key, method in TOWERS:
    want = model.apply({'params': student}, batch[key], method=method)
    got = probe.model.apply({'params': params}, batch[key], masks=masks[tower], method=method)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

  cut = tmp_path / 'cut'
  shutil.copytree(tmp_path / 'chain', cut)
  shutil.rmtree(cut / 'stage_2')
  for ckpt in (cut / 'checkpoints').iterdir():
    if ckpt.name.isdigit() and int(ckpt.name) > 9:
      shutil.rmtree(ckpt)
  Trainer(config, cut).train()
  assert leaves_equal(native.load_native(str(cut / 'stage_2'))[1], second[1])
  assert logged(cut) == logged(tmp_path / 'chain')


# The README's automatic-inheritance table (`python benchmarks/tinyclip_auto.py --seeds 0 1
# 2`, 2026-12-01, a 2-core Intel Xeon VM), then seed 0 on a 2-core AMD EPYC VM (2026-12-03;
# XLA compiles for the host's CPU): per stage, the share of the teacher's transformer
# parameters pruned, all its parameters, and held-out zero-shot shape and colour at its end;
# the teacher's the same on both VMs. Accuracies move with the CPU (stage 3's shape at seed
# 0: 0.524 on the Intel VM, 0.540 on the AMD one), so each range is widened by one point or
# more.
PUBLISHED_TEACHER = (256_257, 0.498, 0.962)
PUBLISHED_AUTO = {
    ('stage 1', 'params'): (201_337, 199_330, 200_057, 199_641),
    ('stage 2', 'params'): (147_247, 142_282, 142_206, 144_279),
    ('stage 3', 'params'): (87_950, 88_131, 90_660, 87_156),
    ('stage 1', 'pruned'): (0.261, 0.274, 0.273, 0.266),
    ('stage 1', 'shape'): (0.482, 0.490, 0.518, 0.482),
    ('stage 1', 'colour'): (0.966, 0.966, 0.966, 0.966),
    ('stage 2', 'pruned'): (0.510, 0.535, 0.541, 0.519),
    ('stage 2', 'shape'): (0.496, 0.490, 0.510, 0.486),
    ('stage 2', 'colour'): (0.970, 0.966, 0.968, 0.970),
    ('stage 3', 'pruned'): (0.752, 0.751, 0.752, 0.752),
    ('stage 3', 'shape'): (0.524, 0.526, 0.524, 0.540),
    ('stage 3', 'colour'): (0.974, 0.978, 0.970, 0.976),
}


@pytest.mark.slow(minutes=4)
def test_the_published_automatic_inheritance_table(tmp_path):
  """Seed 0 of the README's table (the 500-step teacher, three 300-step stages pruned to
  25 / 50 / 75%): each figure within the measured runs' range widened by half of it (one
  point at least), and the README's claim: every stage keeps the teacher's shape within 2
  points and its colour."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  path = Path(__file__).resolve().parents[1] / 'benchmarks' / 'tinyclip_auto.py'
  spec = importlib.util.spec_from_file_location('tinyclip_auto', path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  teacher, accuracies = bench.train_teacher(str(tmp_path / 'teacher'))
  rows = bench.run(teacher, accuracies, 0, str(tmp_path / 'auto'))
  print(rows)
  (_, _, teacher_params, teacher_shape, teacher_colour), *students = rows
  assert teacher_params == PUBLISHED_TEACHER[0]
  np.testing.assert_allclose((teacher_shape, teacher_colour), PUBLISHED_TEACHER[1:], atol=0.01)
  got = {(name, column): value for name, pruned, params, shape, colour in students
         for column, value in (('pruned', pruned), ('params', params), ('shape', shape),
                               ('colour', colour))}
  assert_within_seeds(got, PUBLISHED_AUTO, floor=0.01)
  for name, _, _, shape, colour in students:
    assert shape >= teacher_shape - 0.02 and colour >= teacher_colour, (name, rows)
