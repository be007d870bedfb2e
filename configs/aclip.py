"""A-CLIP's YFCC-15M recipe (microsoft/A-CLIP README and main.py; SLIP's ViT-B/16 settings).

  python -m clipjax.main --config configs/aclip.py --workdir runs/aclip \
      --config.data.train='yfcc15m/train.csv'
  python -m clipjax.main --config configs/aclip.py:random --workdir runs/aclip_random

Official settings kept: ViT-B/16 image tower at 224 pixels with the CLIP text tower (12
layers, width 512, QuickGELU, 77 tokens); 25 epochs of 15M pairs at batch 4096 (91,553
steps); AdamW lr 5e-4, betas (0.9, 0.98), eps 1e-8, weight decay 0.5, no gradient
clipping; one epoch of linear warm-up, then cosine to 1e-5; ImageNet normalisation;
crops at scale (0.5, 1) with SLIP's colour augmentation; 2x2-patch blocks, 25 of 49 kept;
EMA momentum 0.996 -> 1; SimCLR head 768-4096-4096-256 at temperature 0.1, BYOL
projector and predictor 4096 wide to 256; weights 1 / 1 / 2; ImageNet zero-shot with the
7 SLIP templates. Not kept: the warm-up starts at 0, not 1e-6; clipjax's ViT has CLIP's
ln_pre, which timm's ViT lacks. Headline (README, ViT-B/16, 25 epochs): ImageNet zero-shot
43.9 vs CLIP 37.6; attentive 2x50% 41.3 vs random 2x50% 38.0 in the mask ablation.
"""
import os

from ml_collections import ConfigDict

from clipjax import config_base as common
from clipjax.config_base import load_config

STEPS_PER_EPOCH, EPOCHS, BATCH = 3662, 25, 4096  # 15M / 4096 = 3662 steps per epoch
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SLIP_IMAGENET_TEMPLATES = ('itap of a {}.', 'a bad photo of the {}.', 'a origami {}.',
                           'a photo of the large {}.', 'a {} in a video game.',
                           'art of the {}.', 'a photo of the small {}.')


def aclip_config(mask: str) -> ConfigDict:
  """`config.aclip`: the official settings (spec section 2)."""
  return ConfigDict(dict(
      mask=mask, keep_path='gather', keep_ratio=0.5, mask_block=2,
      ema_momentum=0.996, eval_ema=False, freeze_patch_embed=True, crop_scale=(0.5, 1.0),
      colour=dict(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2, blur_p=0.1,
                  blur_sigma=(0.1, 2.0), solarize_p=0.2),
      simclr=dict(hidden=4096, dim=256, temperature=0.1, released=False),
      byol=dict(hidden=4096, dim=256),
      weights=dict(clip=1.0, simclr=1.0, byol=2.0)))


def get_config(mask: str = 'attentive') -> ConfigDict:
  if mask not in ('attentive', 'random', 'none'):
    raise ValueError(f"configs/aclip.py: unknown variant {mask!r}; use 'attentive', "
                     "'random' or 'none'")
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quickstart.py'))
  c.method = 'aclip'
  c.aclip = aclip_config(mask)
  c.batch_size = BATCH
  c.total_steps = STEPS_PER_EPOCH * EPOCHS
  c.log_every, c.eval_every, c.checkpoint_every = 100, STEPS_PER_EPOCH, STEPS_PER_EPOCH // 2
  c.model = ConfigDict(dict(name='ViT-B/16', image_size=224, context_length=77,
                            dtype='bfloat16', text=dict(act='quick_gelu')))
  c.tokenizer.vocab_size = 49408
  c.data = common.synthetic_data(train_num_samples=15_000_000)
  c.data.update(dict(format='csv', train='yfcc15m/train.csv', num_workers=32,
                     augment=dict(scale=(0.5, 1.0)), mean=IMAGENET_MEAN, std=IMAGENET_STD))
  c.optim.update(dict(lr=5e-4, warmup_steps=STEPS_PER_EPOCH, end_lr_factor=1e-5 / 5e-4,
                      weight_decay=0.5, b1=0.9, b2=0.98, eps=1e-8, grad_clip=0.0))
  c.evals = ConfigDict(dict(
      imagenet=dict(type='zeroshot', dataset='imagenet2012', data_dir='data/tfds',
                    split='validation', templates=list(SLIP_IMAGENET_TEMPLATES))))
  return c
