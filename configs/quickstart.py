"""Quickstart: a tiny CLIP on synthetic captioned shapes, learning on a laptop CPU in minutes.

  python -m clipjax.main --config configs/quickstart.py --workdir runs/quickstart
  python -m clipjax.main --config configs/quickstart.py:siglip --workdir runs/siglip
"""
from ml_collections import ConfigDict

from clipjax import config_base as common


def get_config(method: str = 'clip') -> ConfigDict:
  c = common.base_config()
  c.method = method
  # Held-out zero-shot top-1 (chance: shape 0.167, colour 0.125): 300 steps give shape
  # 0.44 / colour 0.99; 500 steps shape 0.56; 1500 steps shape 0.81.
  c.total_steps = 500
  c.batch_size = 64
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250

  c.model = ConfigDict(dict(name='tiny', image_size=32, patch_size=8, context_length=24,
                            pool='cls', dtype='float32', attention_impl='xla',
                            remat=False))
  c.tokenizer.vocab_size = 512
  c.data = common.synthetic_data(train_num_samples=50_000)
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.05
  c.evals = ConfigDict(dict(
      shapes_shape=dict(type='zeroshot', dataset='shapes_heldout_shape', num_samples=500),
      shapes_colour=dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=500),
  ))
  return c
