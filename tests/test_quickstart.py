"""The README's quickstart learns: zero-shot on held-out attribute combinations beats chance."""
import json
import time
from pathlib import Path

import pytest

from clipjax.config_base import load_config
from clipjax.data import shapes
from clipjax.train.loop import train

QUICKSTART = str(Path(__file__).resolve().parents[1] / 'configs/quickstart.py')


@pytest.mark.slow
def test_quickstart_clip_learns_in_minutes(tmp_path):
  t0 = time.time()
  results = train(load_config(QUICKSTART), tmp_path)
  minutes = (time.time() - t0) / 60
  colour_chance, shape_chance = 1 / len(shapes.COLOUR_NAMES), 1 / len(shapes.SHAPES)
  assert results['shapes_colour/zeroshot_top1'] > 4 * colour_chance, results
  assert results['shapes_shape/zeroshot_top1'] > 2.5 * shape_chance, results
  assert minutes < 5, f'quickstart took {minutes:.1f} min'
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert losses[-1] < 0.5 * losses[0]
  assert (tmp_path / 'training_curves.png').stat().st_size > 10_000


@pytest.mark.slow
def test_quickstart_siglip_learns(tmp_path):
  config = load_config(QUICKSTART + ':siglip')
  config.total_steps = 150
  config.evals = {'colour': dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=300)}
  results = train(config, tmp_path)
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert losses[-1] < 0.75 * losses[0], losses  # the first logged loss is after 25 steps
  assert results['colour/zeroshot_top1'] > 3 / len(shapes.COLOUR_NAMES), results
