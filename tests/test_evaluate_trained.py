"""A briefly trained quickstart model beats its own random initialisation on a linear probe."""
import contextlib
import io
from pathlib import Path

import pytest

from clipjax import evaluate
from clipjax.config_base import load_config
from clipjax.train import loop

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_linear_probe_of_trained_quickstart_beats_random_init(tmp_path):
  config = load_config(str(ROOT / 'configs' / 'quickstart.py'), 'clip')
  config.total_steps = 100
  config.eval_every = 0
  config.checkpoint_every = 100
  config.evals = {}
  trainer = loop.Trainer(config, tmp_path)
  with contextlib.redirect_stderr(io.StringIO()):  # progress bar
    trainer.train()
  # Held-out shape/colour combinations: the image tower must encode shape to separate them.
  probe = evaluate.build_evaluators({'shape': dict(
      type='linear_probe', dataset='shapes_heldout_shape', num_samples=300)})
  top1 = {}
  for name, params in (('random', trainer.initial_state().params),
                       ('trained', trainer.state.params)):
    encoder = evaluate.Encoder(trainer.model, params, trainer.tokenizer,
                               context_length=config.model.context_length,
                               image_size=config.model.image_size)
    top1[name] = evaluate.run_evaluators(probe, encoder)['shape/linear_probe_top1']
  # Measured: 0.81 trained vs 0.70 random (151 test images, 6 classes, chance 0.17).
  assert top1['trained'] > top1['random'] + 0.05, top1
