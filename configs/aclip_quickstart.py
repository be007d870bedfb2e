"""A-CLIP on CPU: the quickstart's model, data, steps and evaluations, on two attentively
masked crops per image.

  python -m clipjax.main --config configs/aclip_quickstart.py --workdir runs/aclip
  python -m clipjax.main --config configs/aclip_quickstart.py:random --workdir runs/aclip_random

':random' keeps as many blocks at random (FLIP's masking: the paper's baseline), ':none'
trains on the unmasked crops.

Off the official recipe, for this data: the captions name each object's colour, size and
position, so the crops stay at the quickstart's scale (0.9, 1) and there is no colour
augmentation (jitter, grey and solarisation would contradict the captions); masks are
chosen per patch (`mask_block=1`: one 8-pixel patch of a 32-pixel image covers as much of
it as a 2x2 block of 16-pixel patches of a 224-pixel one), 9 of 16 kept.
"""
import os

from ml_collections import ConfigDict

from clipjax.config_base import load_config


def get_config(mask: str = 'attentive') -> ConfigDict:
  here = os.path.dirname(os.path.abspath(__file__))
  official = load_config(os.path.join(here, 'aclip.py'), mask)  # checks the variant
  c = load_config(os.path.join(here, 'quickstart.py'))
  c.method = 'aclip'
  c.aclip = official.aclip
  c.aclip.update(dict(mask_block=1, crop_scale=tuple(c.data.augment.scale),
                      simclr=dict(hidden=256, dim=64, temperature=0.1, released=False),
                      byol=dict(hidden=256, dim=64)))
  c.aclip.colour = None
  return c
