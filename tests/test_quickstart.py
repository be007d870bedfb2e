"""The README's quickstart figures, within the spread of three seeds: zero-shot on held-out
attribute combinations and on real handwritten digits, and linear probes above the random init."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from clipjax import evaluate
from clipjax.config_base import load_config
from clipjax.train.loop import Trainer, train

QUICKSTART = str(Path(__file__).resolve().parents[1] / 'configs/quickstart.py')


# The README's figures, `python benchmarks/quickstart_seeds.py --seeds 0 1 2` (seed 0 is
# this test's run): held-out zero-shot shape 0.830 / 0.864 / 0.892, colour 0.992 / 0.972 /
# 0.964, sklearn's digits 0.471 / 0.475 / 0.449; digits probe 0.859 / 0.862 / 0.863 against
# the random init's 0.830 / 0.807 / 0.813; final / first loss 0.27 / 0.27 / 0.29. Asserted
# at the seeds' worst less 0.03 (about two standard errors of 500 held-out images).
WORST = {'shapes_shape/zeroshot_top1': 0.83, 'shapes_colour/zeroshot_top1': 0.964,
         'digits/zeroshot_top1': 0.449}


@pytest.mark.slow
def test_quickstart_clip_learns(tmp_path):
  config = load_config(QUICKSTART)
  # The figures are the last evaluation's; the middle one and the intermediate checkpoints
  # change nothing in the run (evaluations draw no training randomness).
  config.eval_every = config.checkpoint_every = config.total_steps
  trainer = Trainer(config, tmp_path)
  with contextlib.redirect_stderr(io.StringIO()):  # progress bar
    results = trainer.train()
  for key, worst in WORST.items():
    assert results[key] > worst - 0.03, (key, results)
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert losses[-1] < 0.32 * losses[0], losses
  assert (tmp_path / 'training_curves.png').stat().st_size > 10_000

  # Linear probes, trained vs its own random init: sklearn's digits (all 1,797, the
  # configured evaluator; the seeds' smallest gain is 0.029) and held-out shape/colour
  # combinations (the tower must encode shape to separate them).
  shape_probe = evaluate.build_evaluators({'shape': dict(
      type='linear_probe', dataset='shapes_heldout_shape', num_samples=300)})
  random_init = trainer.initial_state()
  history = [json.loads(l) for l in (tmp_path / 'eval_history.jsonl').read_text().splitlines()]
  assert history[0]['step'] == 0  # the loop evaluated the random init (eval_at_start)
  random_digits = history[0]['digits_probe/linear_probe_top1']
  assert results['digits_probe/linear_probe_top1'] > random_digits + 0.02, (results, random_digits)
  top1 = {}
  for name, state in (('random', random_init), ('trained', trainer.state)):
    encoder = evaluate.Encoder(trainer.method.eval_view(state), trainer.tokenizer,
                               context_length=trainer.config.model.context_length,
                               image_size=trainer.config.model.image_size)
    top1[name] = evaluate.run_evaluators(shape_probe, encoder)['shape/linear_probe_top1']
  print(f'held-out shape probe: {top1}')
  assert top1['trained'] > top1['random'] + 0.05, top1


@pytest.mark.slow
def test_quickstart_siglip_learns(tmp_path):
  config = load_config(QUICKSTART + ':siglip')
  config.total_steps = 300
  config.evals = {'colour': dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=300)}
  results = train(config, tmp_path)
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  # Measured, seeds 0/1/2 (this test with config.seed = 0, 1, 2): first loss
  # 4.85/4.82/5.15, mean of the last three 3.40/3.25/3.42 (ratio 0.70/0.67/0.66); held-out
  # colour 0.903/0.950/0.850. Asserted at the seeds' worst, with a margin of 0.05.
  assert sum(losses[-3:]) / 3 < 0.75 * losses[0], losses
  assert results['colour/zeroshot_top1'] > 0.80, results
