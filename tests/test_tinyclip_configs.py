"""TinyCLIP recipe configs build students with the paper's parameter counts (names in M)."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import models
from clipjax.config_base import load_config
from clipjax.convert import load
from clipjax.train import stages

ROOT = Path(__file__).resolve().parents[1]


# Recipe: (image tower M, text tower M without the token embedding), from the model names.
@pytest.mark.parametrize('recipe,vision,text', [('vit61m32', 61, 29), ('vit40m32', 40, 19),
                                               ('vit39m16', 39, 19), ('vit8m16', 8, 3)])
def test_recipe_towers_match_paper_sizes(recipe, vision, text):
  c = load_config(str(ROOT / 'configs/tinyclip_vit.py'), recipe)
  assert c.method == 'tinyclip' and c.tinyclip.logit_scale == 50.0 and c.tinyclip.inherit == 'manual'
  m = c.model
  model = models.build_clip(m.name, **{k: v for k, v in m.items() if k not in ('name', 'dtype')})
  p = load.unbox(load.abstract_params(model, jnp.zeros((1, 224, 224, 3)),
                                      jnp.zeros((1, 77), jnp.int32)))
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(t)) / 1e6
  text_m = count(p['textual']) - np.prod(p['textual']['token_embed'].shape) / 1e6
  assert abs(count(p['visual']) - vision) < 0.5 + 0.02 * vision, count(p['visual'])
  assert abs(text_m - text) < 0.5 + 0.02 * text, text_m


def test_unknown_recipe_names_the_file():
  with pytest.raises(ValueError, match='tinyclip_vit.py: unknown recipe'):
    load_config(str(ROOT / 'configs/tinyclip_vit.py'), 'vit1m')


def test_auto_recipe_chains_three_pruning_stages():
  """Official auto scripts: 0->25%, 25->50%, 50->75%, pruned at 3000/5000/8000 steps, the
  model warm-up as long as the mask phase, mask logits at their own constant lr 0.02."""
  c = load_config(str(ROOT / 'configs/tinyclip_vit.py'), 'auto')
  got = [(s.tinyclip.auto.start_sparsity, s.tinyclip.auto.target_sparsity,
          s.tinyclip.auto.prune_step, s.optim.warmup_steps, s.tinyclip.auto.lr)
         for s in stages.stage_configs(c)]
  assert got == [(0.0, 0.25, 3000, 3000, 0.02), (0.25, 0.5, 5000, 5000, 0.02),
                 (0.5, 0.75, 8000, 8000, 0.02)]
  assert c.model.name == 'ViT-B/32'


def test_auto_quickstart_chains_three_stages_of_the_teacher_size():
  c = load_config(str(ROOT / 'configs/tinyclip_auto_quickstart.py'), 'runs/teacher')
  configs = stages.stage_configs(c)
  assert [s.tinyclip.auto.target_sparsity for s in configs] == [0.25, 0.5, 0.75]
  assert all(s.tinyclip.auto.prune_step < s.total_steps and s.tinyclip.inherit == 'manual'
             for s in configs)
  assert dict(c.model.vision) == dict(c.model.text) == dict(width=64, heads=4, layers=2)
