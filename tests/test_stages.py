"""Stages of one run (`config.stages`): each starts from the model the previous one ended with."""
import json
import shutil

import jax
import numpy as np
import pytest

from clipjax.convert import native
from clipjax.train import stages
from clipjax.train.loop import Trainer
from clipjax.train.optimizer import schedule
from tests.test_method_interface import logged
from tests.test_train import tiny_config


def test_stages_continue_from_the_previous_stage_with_their_own_schedule(tmp_path):
  c = tiny_config(total_steps=3, checkpoint_every=3, log_every=1, **{'optim.warmup_steps': 2})
  c.stages = [{'optim.lr': 1e-3}, {'optim.lr': 1e-4, 'total_steps': 2}]
  Trainer(c, tmp_path).train()
  first = native.load_native(str(tmp_path / 'stage_1'))[1]
  second = native.load_native(str(tmp_path / 'stage_2'))[1]

  stage2 = stages.stage_configs(c)[1]
  assert stage2.optim.lr == 1e-4 and stage2.total_steps == 2 and not stage2.stages
  stage2.previous_stage = str(tmp_path / 'stage_1')
  start = jax.device_get(Trainer(stage2, tmp_path / 'probe').initial_state().params)
  for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (start, first))):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                                      jax.tree_util.tree_leaves(second)))
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5]
  want = [schedule(s.optim, s.total_steps)(i) for s in stages.stage_configs(c)
          for i in range(s.total_steps)]  # each stage warms up and decays on its own
  np.testing.assert_allclose([r['learning_rate'] for r in rows], want, rtol=1e-6)


def test_a_stage_starts_from_the_model_the_previous_one_ended_with(tmp_path):
  """Stage 2 at learning rate 0 never moves: its export is stage 1's, bit for bit (a
  stage 2 that started anywhere else would differ); a run cut exactly at the boundary
  resumes into stage 2 with the same losses."""
  c = tiny_config(total_steps=3, checkpoint_every=3, log_every=1)
  c.stages = [{'optim.lr': 1e-3}, {'optim.lr': 0.0, 'total_steps': 2}]
  Trainer(c, tmp_path / 'run').train()
  first, second = (native.load_native(str(tmp_path / f'run/stage_{i}'))[1] for i in (1, 2))
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
    np.testing.assert_array_equal(a, b)
  shutil.copytree(tmp_path / 'run', tmp_path / 'cut')
  shutil.rmtree(tmp_path / 'cut/checkpoints/5')
  shutil.rmtree(tmp_path / 'cut/stage_1')
  Trainer(c, tmp_path / 'cut').train()
  assert logged(tmp_path / 'cut') == logged(tmp_path / 'run')
  assert (tmp_path / 'cut/stage_1').is_dir()  # the boundary re-exported stage 1


def test_stages_share_the_data_pipeline_mesh_and_tokenizer():
  c = tiny_config()
  c.stages = [{}, {'batch_size': 8}]
  with pytest.raises(ValueError, match=r"config.stages\[1\] overrides \['batch_size'\]"):
    stages.plan(c)


def test_stage_boundaries():
  c = tiny_config(total_steps=3)
  c.stages = [{}, {'total_steps': 2}]
  plan = stages.plan(c)
  assert [(s.start, s.end) for s in plan] == [(0, 3), (3, 5)]
  assert [stages.holding(plan, s).index for s in range(6)] == [1, 1, 1, 1, 2, 2]
  assert [stages.training(plan, s).index for s in range(6)] == [1, 1, 1, 2, 2, 2]


def test_bad_stage_override_names_the_stage():
  c = tiny_config()
  c.stages = [{'optim.lr': 1e-3}, {'optim.no_such_key': 1}]
  with pytest.raises(ValueError, match=r'config.stages\[1\]'):
    stages.stage_configs(c)
