"""The concept-frequency study at CPU size (clipjax/analysis/frequency_study.py): a tiny
CLIP pretrained on synthetic shapes whose shapes and colours are long-tailed (rank r drawn
in proportion to r ** -zipf), then every shape, colour and (colour, shape) pair counted in
its captions and, with that CLIP as tagger, in its images, against zero-shot per-class
accuracy over all 84 pairs.

  python -m clipjax.analysis.frequency_study --config configs/frequency_quickstart.py \
      --workdir runs/frequency --config.seeds=0,1,2
  python -m clipjax.analysis.frequency --config configs/frequency_quickstart.py:count \
      --workdir runs/frequency_counts --config.tagger.model=runs/frequency/seed0/pretrain/export
"""
import os

from ml_collections import ConfigDict, config_dict

from clipjax import config_base as common

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ('shape', 'colour', 'combo')


def pretrain_config() -> ConfigDict:
  c = common.load_config(os.path.join(HERE, 'quickstart.py'))
  c.total_steps = 1500
  c.checkpoint_every = 500
  c.eval_every = 0
  c.evals = ConfigDict()
  c.data = common.synthetic_data(train_num_samples=30_000)
  c.data.synthetic_split = 'all'  # every pair can be drawn: no concept is absent by design
  c.data.zipf = 2.0
  return c


def count_config(data: ConfigDict) -> ConfigDict:
  """The counting job (clipjax/analysis/frequency.py) over `data`; the tagger's model is
  given on the command line or by the study."""
  c = ConfigDict()
  c.data = data
  c.concepts = ConfigDict({t: dict(dataset=f'shapes_all_{t}', num_samples=1) for t in TASKS})
  c.part_size = 10_000
  c.max_samples = config_dict.placeholder(int)  # None: all; settable on the command line
  c.tagger = ConfigDict(dict(model='', threshold=0.5, templates=['a {}', 'there is a {}'],
                             batch_size=256))
  return c


def get_config(part: str = 'study') -> ConfigDict:
  if part == 'count':
    return count_config(pretrain_config().data)
  if part != 'study':
    raise ValueError(f"frequency_quickstart.py takes 'study' or 'count', got {part!r}")
  c = ConfigDict()
  c.seeds = (0,)
  c.pretrain = pretrain_config()
  c.count = count_config(c.pretrain.data)
  # Every class of the three tasks is one concept; the images (same seed and number) are
  # the same single objects, uniform over all pairs, held-out ones included.
  c.concept_tasks = ConfigDict({t: dict(dataset=f'shapes_all_{t}', num_samples=1680)
                                for t in TASKS})
  c.frequency = 'matched'  # the paper's main figures: caption and image both
  c.num_bins = 12
  c.long_tail = ConfigDict(dict(source=dict(dataset='shapes_all_combo', num_samples=4200,
                                            seed=1),
                                num_classes=16, per_class=30))
  return c
