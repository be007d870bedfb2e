"""The noise study at CPU size (clipjax/analysis/noise_study.py): the quickstart CLIP
pretrained at caption noise 0/5/10/20/30%, then LP, MLP and NMTune on its frozen
features for drawn digits, scored on held-out drawn digits (in domain, 'digits_id') and
on scikit-learn's handwritten digits (out of domain, 'digits_ood').

  python -m clipjax.analysis.noise_study --config configs/noise_study_quickstart.py \
      --workdir runs/noise_study --config.seeds=0,1,2
"""
import os

from ml_collections import ConfigDict

from clipjax import config_base as common

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seeds = (0,)
  c.noise_ratios = (0.0, 0.05, 0.1, 0.2, 0.3)
  pre = common.load_config(os.path.join(HERE, 'quickstart.py'))
  pre.total_steps = 1000
  pre.checkpoint_every = 1000
  pre.eval_every = 0
  pre.evals = ConfigDict()
  c.pretrain = pre
  c.tune = ConfigDict({v: common.load_config(os.path.join(HERE, 'nmtune_quickstart.py'), v)
                       for v in ('lp', 'mlp', 'nmtune')})
  digits = c.tune.nmtune.evals.digits_id.to_dict()
  digits.pop('type')
  c.spectra = ConfigDict(dict(digits_id=digits,
                              digits_ood=dict(dataset='sklearn_digits', part='all')))
  return c
