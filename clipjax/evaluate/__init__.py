"""Evaluation: zero-shot classification, image-text retrieval, linear probe.

Evaluators are built from a config dict of named entries (big_vision style) and run
against an `Encoder`; results are flat "<name>/<metric>" floats:

  evals.digits = dict(type='zeroshot', dataset='sklearn_digits')
  evals.shape = dict(type='zeroshot', dataset='shapes_heldout_shape', num_samples=500)
  evals.inet = dict(type='zeroshot', dataset='imagenet2012', data_dir=D, split='validation',
                    templates='imagenet1k')       # CLIP paper's 80 templates, OpenAI names
  evals.pets = dict(type='zeroshot', image_folder=P, classnames=F, templates=['a {c}.'])
  evals.coco = dict(type='retrieval', karpathy_json=J, images_dir=D)   # 5 captions/image
  evals.shapes_ret = dict(type='retrieval', dataset='shapes', num_samples=256)
  evals.probe = dict(type='linear_probe', dataset='sklearn_digits')
  evals.c10 = dict(type='linear_probe', dataset='cifar10', data_dir=D)  # train / test splits
  evals.ood = dict(type='classifier', dataset='sklearn_digits', part='all')  # own head
  evals.seg = dict(type='patchdis', attribute='colour')  # per-patch classes, mIoU

Options per type are the keyword arguments of ZeroShotEvaluator, RetrievalEvaluator,
LinearProbeEvaluator and ClassifierEvaluator. Metrics: zeroshot_{top1,top5,
mean_per_class_recall}; patchdis_{miou,random_miou,pixel_accuracy}; {image_to_text,text_to_image}_R@{1,5,10}; linear_probe_{top1,top5,
mean_per_class_recall,log10_C}; classifier_{top1,top5,mean_per_class_recall}. An
evaluator is any callable `evaluator(encoder) -> (scalars, arrays)`.
"""
from typing import Optional

from clipjax.evaluate.classifier import ClassifierEvaluator
from clipjax.evaluate.encoder import Encoder, EvalView
from clipjax.evaluate.linear_probe import LinearProbeEvaluator, fit_linear_probe
from clipjax.evaluate.patchdis import PatchDisEvaluator
from clipjax.evaluate.metrics import classification_metrics, retrieval_metrics
from clipjax.evaluate.retrieval import RetrievalEvaluator
from clipjax.evaluate.zeroshot import ZeroShotEvaluator, zeroshot_classifier, zeroshot_metrics

EVALUATORS = {
    'zeroshot': ZeroShotEvaluator,
    'retrieval': RetrievalEvaluator,
    'linear_probe': LinearProbeEvaluator,
    'classifier': ClassifierEvaluator,
    'patchdis': PatchDisEvaluator,
}


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def build_evaluators(evals_config) -> dict:
  """{name: dict(type=..., **options)} (dict or ConfigDict) -> {name: evaluator}."""
  evaluators = {}
  for name, spec in _as_dict(evals_config or {}).items():
    spec = _as_dict(spec)
    kind = spec.pop('type', None)
    if kind not in EVALUATORS:
      raise ValueError(f'config.evals.{name}.type is {kind!r}; expected one of '
                       f'{sorted(EVALUATORS)}')
    try:
      evaluators[name] = EVALUATORS[kind](**spec)
    except TypeError as e:
      raise TypeError(f'config.evals.{name} (type {kind!r}): {e}') from e
  return evaluators


def run_evaluators(evaluators: dict, encoder, details: Optional[dict] = None) -> dict:
  """Runs every evaluator -> {"<name>/<metric>": float}.

  Per-class arrays (accuracy, counts, class names; retrieval: captions per image) go into
  `details[name]` when a dict is passed; `report.save_eval_details` writes them.
  """
  results = {}
  for name, evaluator in evaluators.items():
    scalars, arrays = evaluator(encoder)
    results.update({f'{name}/{k}': float(v) for k, v in scalars.items()})
    if details is not None:
      details[name] = arrays
  return results


__all__ = [
    'ClassifierEvaluator', 'Encoder', 'EvalView', 'EVALUATORS', 'LinearProbeEvaluator',
    'PatchDisEvaluator', 'RetrievalEvaluator', 'ZeroShotEvaluator',
    'build_evaluators', 'classification_metrics', 'fit_linear_probe', 'retrieval_metrics',
    'run_evaluators', 'zeroshot_classifier', 'zeroshot_metrics',
]
