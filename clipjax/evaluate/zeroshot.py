"""Zero-shot classification with prompt-template ensembles (CLIP paper, Sec. 3.1.4).

Classifier row c = normalise(mean_t normalise(encode_text(template_t(class_c)))), as in
openai/CLIP's Prompt_Engineering_for_ImageNet notebook, open_clip and CLIP_benchmark.
The logit scale (100) is left out: it changes no ranking, hence no metric.
"""
from typing import Optional

import numpy as np

from clipjax.evaluate import datasets
from clipjax.evaluate.encoder import l2_normalize
from clipjax.evaluate.metrics import classification_metrics


def fill_template(template: str, classname: str) -> str:
  """Templates mark the class with '{c}' (CLIP_benchmark) or '{}' (str.format style)."""
  return template.format(classname, c=classname)


def zeroshot_classifier(encoder, classnames, templates) -> np.ndarray:
  """float32 [C, D] unit rows: one ensembled text embedding per class."""
  classnames, templates = list(classnames), list(templates)
  if not classnames or not templates:
    raise ValueError(f'need class names and templates, got {len(classnames)} and '
                     f'{len(templates)}')
  texts = [fill_template(t, c) for c in classnames for t in templates]
  emb = l2_normalize(encoder.encode_texts(texts, purpose='classes'))
  emb = emb.reshape(len(classnames), len(templates), -1)
  return l2_normalize(emb.mean(axis=1))


def zeroshot_metrics(image_features: np.ndarray, labels: np.ndarray, classifier: np.ndarray):
  """(scalars, per_class_accuracy) of cosine-similarity classification."""
  logits = l2_normalize(image_features) @ classifier.T
  return classification_metrics(logits, labels, num_classes=len(classifier))


class ZeroShotEvaluator:
  """Config: dataset= ('sklearn_digits' | 'shapes_heldout_*' | TFDS name) or image_folder=.

  Options: split, data_dir (TFDS), classnames (list / file / prompts.json key),
  templates (list / prompts.json key such as 'imagenet1k'; default: the dataset's own),
  max_examples (a fixed, evenly spaced subset for quick in-training evals),
  num_samples and seed (synthetic shapes).
  """

  def __init__(self, dataset: Optional[str] = None, image_folder: Optional[str] = None,
               split: str = 'test', data_dir: Optional[str] = None, classnames=None,
               templates=None, max_examples: Optional[int] = None, num_samples: int = 500,
               seed: int = 0, chunk: int = 1024):
    self.source = dict(dataset=dataset, image_folder_path=image_folder, split=split,
                       data_dir=data_dir, classnames=classnames, num_samples=num_samples,
                       seed=seed)
    self.templates = datasets.resolve_templates(templates)
    self.max_examples = max_examples
    self.chunk = chunk
    self._cache = {}

  def image_set(self, image_size: int) -> datasets.ImageSet:
    if image_size not in self._cache:
      self._cache[image_size] = datasets.load_image_set(image_size, **self.source)
    return self._cache[image_size]

  def __call__(self, encoder) -> tuple:
    """(scalar metrics, arrays) with arrays per_class_accuracy [C] and classnames [C]."""
    image_set = self.image_set(encoder.image_size)
    indices = datasets.subset_indices(len(image_set), self.max_examples)
    features, labels = datasets.embed(encoder, image_set, indices, self.chunk)
    classifier = zeroshot_classifier(encoder, image_set.classnames,
                                     self.templates or image_set.templates)
    scalars, per_class = zeroshot_metrics(features, labels, classifier)
    scalars = {f'zeroshot_{k}': v for k, v in scalars.items()}
    arrays = dict(per_class_accuracy=per_class.astype(np.float32),
                  class_counts=np.bincount(labels, minlength=len(classifier)),
                  classnames=np.asarray(image_set.classnames))
    return scalars, arrays

