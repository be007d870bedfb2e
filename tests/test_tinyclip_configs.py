"""TinyCLIP recipe configs build students with the paper's parameter counts (names in M)."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import models
from clipjax.config_base import load_config
from clipjax.convert import load

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
