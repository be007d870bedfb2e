"""Linear probe on frozen image features (CLIP paper, Appendix A.3).

Multinomial logistic regression with L-BFGS (max 1,000 iterations), the L2 strength
chosen on a validation split by the paper's parametric binary search over [1e-6, 1e6]
(7 points two decades apart, then halving the step around the best point down to 8
steps per decade), then refit on train + validation and scored on test.

Why scikit-learn rather than JAX: it is the solver the paper names, so its numbers are
the reference; the features are a small host-side [N, D] matrix where L-BFGS on CPU
takes seconds; and sklearn is already a dependency (the digits set). We sweep sklearn's
C (inverse L2 strength, the paper's 1/lambda) over the paper's range.

Features are the encoder's L2-normalised projected image embeddings (what
CLIP_benchmark probes); the paper used pre-projection features of its own models.
"""
import warnings
from typing import Optional

import numpy as np
import threadpoolctl
from clipjax.evaluate import datasets
from clipjax.evaluate.metrics import classification_metrics

LOG10_C_START = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
LOG10_C_FINEST = 1.0 / 8.0  # 8 steps per decade: the paper's 96 steps over 12 decades


SINGLE_THREAD_MAX_SIZE = 1 << 22  # feature-matrix entries


def fit_logistic(features, labels, c: float, max_iter: int = 1000):
  """L-BFGS multinomial logistic regression (a fitted sklearn LogisticRegression). Small
  problems run on one BLAS thread: their matrix products are too small to split, and on a
  busy host threads make them ~10x slower. sklearn is imported here, not with the module:
  it is ~0.8 s of the start of every run (`python -X importtime -c "import
  sklearn.linear_model"`), and most runs never probe."""
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  limit = 1 if np.size(features) <= SINGLE_THREAD_MAX_SIZE else None
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(limits=limit, user_api='blas'):
    warnings.simplefilter('ignore', ConvergenceWarning)  # extreme C in the sweep
    return LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)


def parametric_search(score) -> float:
  """The paper's search over log10 C in [-6, 6]: the best of 7 points two decades apart,
  then the best of (x - step, x, x + step) for step = 1, 1/2, 1/4, 1/8. At most 15 calls
  of `score(log10 C)`; ties go to the smaller C (stronger L2)."""
  cache = {}

  def best_of(points):
    for p in points:
      if p not in cache:
        cache[p] = score(p)
    return max(sorted(points), key=cache.__getitem__)  # first, i.e. smallest, of ties

  best = best_of(LOG10_C_START)
  step = 1.0
  while step >= LOG10_C_FINEST:
    best = best_of([p for p in (best - step, best, best + step)
                    if LOG10_C_START[0] <= p <= LOG10_C_START[-1]])
    step /= 2
  return best


def sweep_c(train_x, train_y, val_x, val_y, max_iter: int = 1000) -> float:
  """Best log10 C by validation top-1 accuracy."""
  def score(log_c):
    model = fit_logistic(train_x, train_y, 10.0 ** log_c, max_iter)
    return float(np.mean(model.predict(val_x) == val_y))
  return parametric_search(score)


def fit_linear_probe(train_x, train_y, test_x, test_y, val_x=None, val_y=None,
                 val_fraction: float = 0.2, seed: int = 0, max_iter: int = 1000,
                 num_classes: Optional[int] = None) -> tuple:
  """(scalars, per_class_accuracy): sweep C on validation, refit on train+val, test.

  Without an explicit validation set, a stratified `val_fraction` of train is used.
  """
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
  if val_x is None:
    fit_idx, val_idx = datasets.stratified_split(train_y, val_fraction, seed)
    fit_x, fit_y, val_x, val_y = train_x[fit_idx], train_y[fit_idx], train_x[val_idx], train_y[val_idx]
  else:
    fit_x, fit_y = train_x, train_y
    val_x, val_y = np.asarray(val_x, np.float64), np.asarray(val_y, np.int64)
  best_log_c = sweep_c(fit_x, fit_y, val_x, val_y, max_iter)
  model = fit_logistic(np.concatenate([fit_x, val_x]), np.concatenate([fit_y, val_y]),
                       10.0 ** best_log_c, max_iter)
  num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
  # Log-probabilities: one column per class seen in training, also for 2 classes.
  logits = np.full((len(test_x), num_classes), -np.inf)
  logits[:, model.classes_] = model.predict_log_proba(test_x)
  scalars, per_class = classification_metrics(logits, test_y, num_classes)
  scalars['log10_C'] = best_log_c
  return scalars, per_class


class LinearProbeEvaluator:
  """Config: dataset= or image_folder= (as zero-shot) plus the splits.

  TFDS: train_split (default 'train'), test_split ('test'), val_split (optional, else
  val_fraction of train). Image folders: image_folder (train) and test_image_folder.
  Sets without splits (sklearn_digits, shapes_*, a single folder): a stratified
  test_fraction (default 0.5) is held out with `seed`. max_train_examples caps the
  training set (evenly spaced subset).
  """

  def __init__(self, dataset: Optional[str] = None, image_folder: Optional[str] = None,
               test_image_folder: Optional[str] = None, data_dir: Optional[str] = None,
               train_split: str = 'train', test_split: str = 'test',
               val_split: Optional[str] = None, val_fraction: float = 0.2,
               test_fraction: float = 0.5, max_train_examples: Optional[int] = None,
               num_samples: int = 500, seed: int = 0, max_iter: int = 1000, chunk: int = 1024):
    self.common = dict(dataset=dataset, data_dir=data_dir, num_samples=num_samples, seed=seed)
    self.folders = dict(train=image_folder, test=test_image_folder)
    self.splits = dict(train=train_split, test=test_split, val=val_split)
    # Else a test_fraction is held out (datasets.load_part holds out the same rows).
    self.has_splits = datasets.has_own_splits(dataset, image_folder, test_image_folder)
    self.val_fraction, self.test_fraction = val_fraction, test_fraction
    self.max_train_examples, self.seed = max_train_examples, seed
    self.max_iter, self.chunk = max_iter, chunk
    self._cache = {}

  def _set(self, image_size: int, part: str) -> datasets.ImageSet:
    key = (image_size, part)
    if key not in self._cache:
      self._cache[key] = datasets.load_image_set(
          image_size, image_folder_path=self.folders[part] if part != 'val' else None,
          split=self.splits[part], **self.common)
    return self._cache[key]

  def _embed(self, encoder, part: str, limit: Optional[int] = None) -> tuple:
    image_set = self._set(encoder.image_size, part)
    return datasets.embed(encoder, image_set, datasets.subset_indices(len(image_set), limit),
                          self.chunk)

  def __call__(self, encoder) -> tuple:
    """(scalar metrics, arrays) with per_class_accuracy and classnames."""
    train_x, train_y = self._embed(encoder, 'train', self.max_train_examples)
    val_x = val_y = None
    if self.has_splits:
      test_x, test_y = self._embed(encoder, 'test')
      if self.splits['val'] is not None and self.folders['train'] is None:
        val_x, val_y = self._embed(encoder, 'val')
    else:
      train_idx, test_idx = datasets.stratified_split(train_y, self.test_fraction,
                                                      self.seed + 1)
      test_x, test_y = train_x[test_idx], train_y[test_idx]
      train_x, train_y = train_x[train_idx], train_y[train_idx]
    classnames = self._set(encoder.image_size, 'train').classnames
    scalars, per_class = fit_linear_probe(train_x, train_y, test_x, test_y, val_x, val_y,
                                      self.val_fraction, self.seed, self.max_iter,
                                      num_classes=len(classnames))
    scalars = {f'linear_probe_{k}': v for k, v in scalars.items()}
    return scalars, dict(per_class_accuracy=per_class.astype(np.float32),
                         classnames=np.asarray(classnames))
