"""Top-1/top-5 of a model that classifies by itself (NMTune's tuned head), on a part of
a labelled set.

The method's eval view returns class scores as its image encoding; the encoder's L2
normalisation divides each row by a positive number, which keeps every ranking, so
the metrics are those of the raw logits. Train on one set and score on another with the
same classes (drawn digits, then handwritten ones) for an out-of-domain figure.
"""
import os
from typing import Optional

import numpy as np

from clipjax.data import sources
from clipjax.evaluate import datasets
from clipjax.evaluate.metrics import classification_metrics


class ClassifierEvaluator:
  """Config: dataset= or image_folder= (as zero-shot) and `part`: 'test' (a split of its
  own, or the stratified test_fraction held out with `seed`, the rows the loop's
  `data.format='image_set'` leaves out of training) or 'all'. Or features= an .npz of
  precomputed features and labels (`clipjax.data.sources.FeatureSource`), for a model
  tuned on a black-box encoder's outputs."""

  def __init__(self, dataset: Optional[str] = None, image_folder: Optional[str] = None,
               test_image_folder: Optional[str] = None, data_dir: Optional[str] = None,
               part: str = 'test', split: Optional[str] = None, test_fraction: float = 0.5,
               num_samples: int = 500, seed: int = 0, features: Optional[str] = None,
               chunk: int = 1024):
    if (features is None) == (dataset is None and image_folder is None):
      raise ValueError('classifier evaluator: give features=... or one of dataset=..., '
                       f'image_folder=...; got features={features!r}, dataset={dataset!r}, '
                       f'image_folder={image_folder!r}')
    if features is not None and not os.path.isfile(features):
      raise FileNotFoundError(f'classifier evaluator: features file {features!r} not found')
    self.spec = dict(dataset=dataset, image_folder=image_folder,
                     test_image_folder=test_image_folder, data_dir=data_dir, part=part,
                     split=split, test_fraction=test_fraction, num_samples=num_samples,
                     seed=seed)
    self.name = features or dataset or image_folder
    self.features, self.chunk = features, chunk
    self._cache = {}

  def _scores(self, encoder) -> tuple:
    """(scores [N, C], labels [N], classnames)."""
    if self.features is not None:
      if 'features' not in self._cache:
        self._cache['features'] = sources.FeatureSource(self.features)
      source = self._cache['features']
      return encoder.encode_features(source.features), source.labels, source.classnames
    size = encoder.image_size
    if size not in self._cache:
      self._cache[size] = datasets.load_part(size, **self.spec)
    image_set = self._cache[size]
    return (*datasets.embed(encoder, image_set, chunk=self.chunk), image_set.classnames)

  def __call__(self, encoder) -> tuple:
    scores, labels, classnames = self._scores(encoder)
    if scores.shape[1] != len(classnames):
      raise ValueError(f'classifier evaluator: the model scores {scores.shape[1]} classes, '
                       f'{self.name} has {len(classnames)}')
    scalars, per_class = classification_metrics(scores, labels, len(classnames))
    return ({f'classifier_{k}': v for k, v in scalars.items()},
            dict(per_class_accuracy=per_class.astype(np.float32),
                 classnames=np.asarray(classnames)))
