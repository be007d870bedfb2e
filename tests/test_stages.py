"""Chained runs (`config.stages`): each stage starts from the previous stage's final model."""
import jax
import numpy as np
import pytest

from clipjax.convert import native
from clipjax.train import stages
from clipjax.train.loop import Trainer
from tests.test_train import tiny_config


def test_stages_continue_from_the_previous_stage(tmp_path):
  c = tiny_config(total_steps=3, checkpoint_every=3, log_every=1)
  c.stages = [{'optim.lr': 1e-3}, {'optim.lr': 1e-4, 'total_steps': 2}]
  stages.run(c, tmp_path)
  first = native.load_native(str(tmp_path / 'stage_1/final'))[1]
  second = native.load_native(str(tmp_path / 'stage_2/final'))[1]
  assert not (tmp_path / 'stage_2/tokenizer.json').exists()  # the chain keeps stage 1's vocabulary

  stage2 = stages.stage_configs(c)[1]
  assert stage2.optim.lr == 1e-4 and stage2.total_steps == 2 and not stage2.stages
  stage2.previous_stage = stage2.tokenizer.path = str(tmp_path / 'stage_1/final')
  start = jax.device_get(Trainer(stage2, tmp_path / 'probe').initial_state().params)
  for a, b, c2 in zip(*(jax.tree_util.tree_leaves(t) for t in (start, first, second))):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                                      jax.tree_util.tree_leaves(second)))


def test_bad_stage_override_names_the_stage():
  c = tiny_config()
  c.stages = [{'optim.lr': 1e-3}, {'optim.no_such_key': 1}]
  with pytest.raises(ValueError, match=r'config.stages\[1\]'):
    stages.stage_configs(c)
