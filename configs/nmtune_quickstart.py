"""NMTune on the quickstart CLIP (clipjax/methods/nmtune.py): tune a head on its frozen
image features for drawn digits, scored on held-out drawn digits (in domain) and on
scikit-learn's handwritten digits (out of domain).

  python -m clipjax.main --config configs/quickstart.py --workdir runs/quickstart
  python -m clipjax.main --config configs/quickstart.py --workdir runs/quickstart \
      --config.mode=export
  python -m clipjax.main --config configs/nmtune_quickstart.py --workdir runs/nmtune \
      --config.nmtune.backbone=runs/quickstart/export
  ... configs/nmtune_quickstart.py:lp    the linear-probe baseline (head on f, lr 1e-2)
  ... configs/nmtune_quickstart.py:mlp   the MLP baseline (NMTune's module, no regularisers)

A black box's outputs instead of a checkpoint (.npz files of `features` and `labels`,
`clipjax.data.sources.write_features`):

  python -m clipjax.main --config configs/nmtune_quickstart.py:nmtune,features \
      --workdir runs/nmtune_api --config.data.train=train.npz \
      --config.evals.test.features=test.npz --config.nmtune.feature_dim=D

The official protocol (`configs/nmtune.py`) at quickstart size: 30 epochs of batch 64.
`python -m clipjax.analysis.noise_study` runs all three on CLIPs pretrained at several
caption-noise ratios.
"""
from ml_collections import ConfigDict

from clipjax import config_base as common

VARIANTS = ('nmtune', 'mlp', 'lp')


def get_config(arg: str = 'nmtune') -> ConfigDict:
  variant, _, inputs = arg.partition(',')
  if variant not in VARIANTS or inputs not in ('', 'features'):
    raise ValueError(f'configs/nmtune_quickstart.py:{arg}: use <{"|".join(VARIANTS)}>'
                     '[,features]')
  c = common.base_config()
  c.method = 'nmtune'
  train_images, epochs = 1000, 30  # shapes_digits: 2,000 drawn, half held out for testing
  c.batch_size = 64
  c.total_steps = epochs * train_images // c.batch_size
  c.log_every = 25
  c.eval_every = c.total_steps
  c.eval_at_start = False
  c.checkpoint_every = c.total_steps
  c.model = ConfigDict(dict(image_size=32, context_length=0))  # the backbone's input size
  c.nmtune = ConfigDict(dict(
      backbone='', backbone_format='', num_classes=10, mlp=variant != 'lp', mlp_ratio=4,
      res_scale_init=1.0, svd_top_k=5,
      mse_weight=1.0 if variant == 'nmtune' else 0.0,
      cov_weight=0.04 if variant == 'nmtune' else 0.0,
      svd_weight=0.001 if variant == 'nmtune' else 0.0))
  digits = dict(dataset='shapes_digits', num_samples=2 * train_images, test_fraction=0.5)
  c.data = ConfigDict(dict(
      format='image_set', image_set=digits, num_workers=0, shuffle_buffer=1000,
      # open_clip models' train view (official); the linear probe reads the resized image.
      augment=None if variant == 'lp' else dict(scale=(0.9, 1.0))))
  # AdamW (torch defaults), cosine per step without warm-up; LP at 10x the rate.
  c.optim.update(lr=1e-2 if variant == 'lp' else 1e-3, weight_decay=1e-4, warmup_steps=0,
                 b2=0.999, eps=1e-8, grad_clip=0.0)
  c.evals = ConfigDict(dict(
      digits_id=dict(type='classifier', part='test', **digits),
      digits_ood=dict(type='classifier', dataset='sklearn_digits', part='all'),
  ))
  if inputs == 'features':  # one feature vector per image: no views, no backbone
    c.nmtune.feature_dim = 0
    c.data = ConfigDict(dict(format='features', train='', num_workers=0, shuffle_buffer=1000))
    c.evals = ConfigDict(dict(test=dict(type='classifier', features='')))
  return c
