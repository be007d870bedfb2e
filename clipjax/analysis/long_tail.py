"""A long-tail test set from any labelled image set: the classes whose concepts are rarest
in the pretraining data ("Let It Wag!", Udandarao et al. 2024, §6, built from 290 rare
concepts at 450 images each), with a head set of the most frequent ones beside it, so
the two score at the same number of classes (the same chance)."""
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clipjax.evaluate import datasets


def rank_classes(classnames, frequency: dict) -> list:
  """Class indices from the rarest concept to the most frequent (ties by name); a
  class missing from `frequency` is an error naming it."""
  missing = [c for c in classnames if c not in frequency]
  if missing:
    raise KeyError(f'no frequency for classes {missing[:5]} ({len(missing)} in all)')
  return sorted(range(len(classnames)), key=lambda i: (frequency[classnames[i]], classnames[i]))


def balanced_subset(image_set: datasets.ImageSet, classes, per_class: int,
                    seed: int = 0) -> datasets.ImageSet:
  """`per_class` random images of each of `classes` (in that order, relabelled 0..k-1);
  a class with fewer images is an error, as Let It Wag! keeps only full classes."""
  labels = datasets.all_labels(image_set)
  rng = np.random.default_rng(seed)
  rows, new_labels = [], []
  for new, old in enumerate(classes):
    members = np.flatnonzero(labels == old)
    if len(members) < per_class:
      raise ValueError(f'class {image_set.classnames[old]!r} has {len(members)} images, '
                       f'fewer than per_class={per_class}')
    rows.append(np.sort(rng.choice(members, per_class, replace=False)))
    new_labels.append(np.full(per_class, new, np.int64))
  rows, new_labels = np.concatenate(rows), np.concatenate(new_labels)

  def get(idx):
    images, _ = image_set.get(rows[np.asarray(idx)])
    return images, new_labels[np.asarray(idx)]

  return datasets.ImageSet([image_set.classnames[c] for c in classes], image_set.templates,
                           len(rows), get, new_labels)


def tail_and_head(image_set: datasets.ImageSet, frequency: dict, num_classes: int,
                  per_class: int, seed: int = 0) -> tuple:
  """(long-tail set, head set): the `num_classes` rarest and most frequent classes."""
  order = rank_classes(image_set.classnames, frequency)
  if 2 * num_classes > len(order):
    raise ValueError(f'num_classes={num_classes} twice over exceeds the set\'s '
                     f'{len(order)} classes: tail and head would overlap')
  return (balanced_subset(image_set, order[:num_classes], per_class, seed),
          balanced_subset(image_set, order[-num_classes:], per_class, seed))


def write_image_folder(image_set: datasets.ImageSet, root) -> Path:
  """root/<class index>/<n>.png with root/classnames.txt, which any evaluator reads:
  dict(type='zeroshot', image_folder=root, classnames=root/classnames.txt)."""
  root = Path(root)
  width = len(str(len(image_set.classnames)))
  for c in range(len(image_set.classnames)):
    os.makedirs(root / str(c).zfill(width), exist_ok=True)
  written = 0
  for images, labels in datasets.iterate(image_set):
    for image, label in zip(images, labels):
      Image.fromarray(image).save(root / str(label).zfill(width) / f'{written:07d}.png')
      written += 1
  (root / 'classnames.txt').write_text('\n'.join(image_set.classnames) + '\n')
  return root
