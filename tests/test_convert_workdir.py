"""`python -m clipjax.convert --from auto RUN_WORKDIR`: a run's latest checkpoint, converted."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import convert
from clipjax.config_base import load_config
from clipjax.convert import __main__ as cli
from clipjax.train.loop import Trainer

QUICKSTART = Path(__file__).resolve().parents[1] / 'configs/quickstart.py'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 3-step quickstart run checkpointed at steps 2 and 3, with the exports of both."""
  c = load_config(str(QUICKSTART))
  c.total_steps, c.batch_size, c.log_every = 3, 8, 1
  c.checkpoint_every, c.eval_every, c.evals = 2, 0, {}
  c.data.train_num_samples, c.tokenizer.train_captions = 200, 100
  c.loss_implementation = 'xla'
  root = tmp_path_factory.mktemp('run')
  trainer = Trainer(c, root / 'workdir')
  trainer.train()
  assert list(trainer.checkpointer.manager.all_steps()) == [2, 3]
  return (str(root / 'workdir'), str(trainer.export_checkpoint()),
          str(trainer.export_checkpoint(root / 'step2', step=2)))


def image_embeddings(folder: str) -> np.ndarray:
  model, params, tokenizer = convert.load_clip(folder)
  assert tokenizer is not None
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  return np.asarray(model.apply({'params': params}, jnp.asarray(images), method='encode_image'))


@pytest.mark.parametrize('args', [['--from', 'auto'],
                                  ['--from', 'clipjax', '--to-format', 'clipjax']])
def test_workdir_converts_like_the_runs_export(run, tmp_path, args):
  workdir, export, step2 = run
  dst = str(tmp_path / 'out')
  cli.main([*args[:2], workdir, *args[2:], '--to', dst])
  assert convert.detect_format(dst) == ('hf' if args[1] == 'auto' else 'clipjax')
  got, want = image_embeddings(dst), image_embeddings(export)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  assert np.abs(got - image_embeddings(step2)).max() > 1e-4  # the latest checkpoint, not step 2
