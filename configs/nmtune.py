"""NMTune's published protocol (Chen et al., ICLR 2024; Hhhhhhao/Noisy-Model-Learning
README): a head tuned for 30 epochs at batch 64 on a frozen CLIP's image features,
AdamW at 1e-3 (LP: 1e-2), weight decay 1e-4 on every tuned parameter, per-step cosine
without warm-up, two RandomResizedCrop(0.9-1.0) views (open_clip models).

  python -m clipjax.main --config configs/nmtune.py:nmtune,cifar100 --workdir runs/nm \
      --config.nmtune.backbone=ckpts/clip-vit-b16
  configs/nmtune.py:lp,domainnet    train on DomainNet real, score real/sketch/painting/clipart

The pretrained encoders of the paper's journal extension are CLIP ViT-B/16 trained on
CC12M+YFCC15M at caption noise 0/5/10/20/30% (global batch 8192, lr 5e-4, wd 0.1, the
epoch-16 checkpoint of a 32-epoch schedule; RN50 on YFCC15M in the conference paper,
which clipjax has no ResNet for). Pretrain one with `configs/quickstart.py`-style configs
at `--config.data.label_noise=0.1`, or load any CLIP checkpoint `clipjax.convert` reads.
Downstream sets are TFDS names read with `tfds.data_source` from `data_dir` (None: TFDS's
default folder; set it for the training set and each evaluation, e.g.
`--config.evals.cifar100.data_dir=DATA`).
"""
from ml_collections import ConfigDict

from clipjax import config_base as common

VARIANTS = ('nmtune', 'mlp', 'lp')
TASKS = {
    # name: (training set, its size, evaluation sets)
    'cifar100': ('cifar100', 50_000, ('cifar100',)),
    'domainnet': ('domainnet/real', 120_906, ('domainnet/real', 'domainnet/sketch',
                                              'domainnet/painting', 'domainnet/clipart')),
}


def get_config(arg: str = 'nmtune,cifar100') -> ConfigDict:
  variant, _, task = arg.partition(',')
  task = task or 'cifar100'
  if variant not in VARIANTS or task not in TASKS:
    raise ValueError(f'configs/nmtune.py:{arg}: use "<{"|".join(VARIANTS)}>,<'
                     f'{"|".join(TASKS)}>"')
  train_set, train_size, eval_sets = TASKS[task]
  c = common.base_config()
  c.method = 'nmtune'
  c.seed = 3907  # the README's commands
  c.batch_size = 64
  c.total_steps = 30 * train_size // c.batch_size
  c.log_every = 100
  c.eval_every = c.total_steps
  c.eval_at_start = False
  c.checkpoint_every = 2000
  c.eval_batch_size = 256
  c.model = ConfigDict(dict(image_size=224, context_length=0))
  c.nmtune = ConfigDict(dict(
      backbone='', backbone_format='', num_classes=100 if task == 'cifar100' else 345,
      mlp=variant != 'lp', mlp_ratio=4, res_scale_init=1.0, svd_top_k=5,
      mse_weight=1.0 if variant == 'nmtune' else 0.0,
      cov_weight=0.04 if variant == 'nmtune' else 0.0,
      svd_weight=0.001 if variant == 'nmtune' else 0.0))
  c.data = ConfigDict(dict(
      format='image_set', image_set=dict(dataset=train_set, data_dir=None), num_workers=8,
      shuffle_buffer=10_000,
      augment=None if variant == 'lp' else dict(scale=(0.9, 1.0))))
  c.optim.update(lr=1e-2 if variant == 'lp' else 1e-3, weight_decay=1e-4, warmup_steps=0,
                 b2=0.999, eps=1e-8, grad_clip=0.0)
  c.evals = ConfigDict({
      name.replace('/', '_'): dict(type='classifier', dataset=name, part='test', data_dir=None)
      for name in eval_sets})
  return c
