"""Top-1/top-5 of a model that classifies by itself (NMTune's tuned head), on a part of
a labelled set.

The method's eval view returns class scores as its image encoding; the encoder's L2
normalisation divides each row by a positive number, which keeps every ranking, so
the metrics are those of the raw logits. Train on one set and score on another with the
same classes (drawn digits, then handwritten ones) for an out-of-domain figure.
"""
from typing import Optional

import numpy as np

from clipjax.evaluate import datasets
from clipjax.evaluate.metrics import classification_metrics


class ClassifierEvaluator:
  """Config: dataset= or image_folder= (as zero-shot) and `part`: 'test' (a split of its
  own, or the stratified test_fraction held out with `seed`, the rows the loop's
  `data.format='image_set'` leaves out of training) or 'all'."""

  def __init__(self, dataset: Optional[str] = None, image_folder: Optional[str] = None,
               test_image_folder: Optional[str] = None, data_dir: Optional[str] = None,
               part: str = 'test', split: Optional[str] = None, test_fraction: float = 0.5,
               num_samples: int = 500, seed: int = 0, chunk: int = 1024):
    self.spec = dict(dataset=dataset, image_folder=image_folder,
                     test_image_folder=test_image_folder, data_dir=data_dir, part=part,
                     split=split, test_fraction=test_fraction, num_samples=num_samples,
                     seed=seed)
    self.chunk = chunk
    self._cache = {}

  def __call__(self, encoder) -> tuple:
    size = encoder.image_size
    if size not in self._cache:
      self._cache[size] = datasets.load_part(size, **self.spec)
    image_set = self._cache[size]
    scores, labels = datasets.embed(encoder, image_set, chunk=self.chunk)
    num_classes = len(image_set.classnames)
    if scores.shape[1] != num_classes:
      raise ValueError(f'classifier evaluator: the model scores {scores.shape[1]} classes, '
                       f'{self.spec["dataset"] or self.spec["image_folder"]} has {num_classes}')
    scalars, per_class = classification_metrics(scores, labels, num_classes)
    return ({f'classifier_{k}': v for k, v in scalars.items()},
            dict(per_class_accuracy=per_class.astype(np.float32),
                 classnames=np.asarray(image_set.classnames)))
