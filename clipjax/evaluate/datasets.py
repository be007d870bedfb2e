"""Labelled image sets for evaluation, read lazily at the encoder's resolution.

Every source becomes an `ImageSet`: class names, default prompt templates and a
`get(indices) -> (uint8 images [n, S, S, 3], int64 labels [n])` reader, so evaluators
stream ImageNet-sized sets in chunks and never hold them decoded in memory. Images
are resized (short side, bicubic) and centre-cropped exactly as at evaluation time in
open_clip (`clipjax.data.transforms.resize_center_crop`).
"""
import concurrent.futures
import dataclasses
import functools
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from clipjax.data.transforms import resize_center_crop

PROMPTS_FILE = os.path.join(os.path.dirname(__file__), 'prompts.json')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
# TFDS names whose CLIP_benchmark class names and templates apply with the same label order.
TFDS_PROMPT_KEYS = {'imagenet2012': 'imagenet1k', 'imagenet_v2': 'imagenet1k',
                    'imagenet2012_real': 'imagenet1k', 'imagenet_sketch': 'imagenet1k',
                    'cifar10': 'cifar10', 'cifar100': 'cifar100', 'mnist': 'mnist'}
# Template sets for TFDS names CLIP_benchmark knows under another key (class names from TFDS).
TFDS_TEMPLATE_KEYS = {'food101': 'food101', 'oxford_iiit_pet': 'pets', 'oxford_flowers102': 'flowers',
                      'dtd': 'dtd', 'eurosat': 'eurosat', 'caltech101': 'caltech101',
                      'cars196': 'cars', 'sun397': 'sun397', 'stl10': 'stl10',
                      'svhn_cropped': 'svhn', 'resisc45': 'resisc45', 'pet_finder': 'pets'}
DEFAULT_TEMPLATES = ('a photo of a {c}.',)


@functools.lru_cache(maxsize=1)
def prompts() -> dict:
  """{'templates': {key: [...]}, 'classnames': {key: [...]}} shipped with the package."""
  with open(PROMPTS_FILE) as f:
    return json.load(f)


def templates_for(key: str) -> list:
  """A named template set, e.g. 'imagenet1k' (the CLIP paper's 80) or 'cifar10'."""
  table = prompts()['templates']
  if key not in table:
    raise KeyError(f'Unknown template set {key!r} in {PROMPTS_FILE}; known: {sorted(table)}')
  return list(table[key])


def resolve_classnames(classnames) -> Optional[list]:
  """A list, a prompts.json key ('imagenet1k'), or a file: JSON list or one name per line."""
  if classnames is None or isinstance(classnames, (list, tuple)):
    return None if classnames is None else [str(c) for c in classnames]
  if classnames in prompts()['classnames']:
    return list(prompts()['classnames'][classnames])
  if not os.path.isfile(classnames):
    raise FileNotFoundError(f'classnames {classnames!r} is neither a key of {PROMPTS_FILE} '
                            'nor a file')
  with open(classnames) as f:
    text = f.read()
  if text.lstrip().startswith('['):
    return [str(c) for c in json.loads(text)]
  return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_templates(templates) -> Optional[list]:
  """A list of format strings ('{c}' or '{}' marks the class), or a prompts.json key."""
  if templates is None:
    return None
  if isinstance(templates, str):
    return templates_for(templates)
  return [str(t) for t in templates]


@dataclasses.dataclass
class ImageSet:
  """A labelled image set at one resolution; `get` decodes only the rows asked for."""
  classnames: list
  templates: list
  size: int
  get: Callable[[Sequence[int]], tuple]
  labels: Optional[np.ndarray] = None  # all of them, where known without decoding images

  def __len__(self) -> int:
    return self.size


def iterate(image_set: ImageSet, chunk: int = 1024, indices=None):
  """Yields (images, labels) chunks in index order."""
  indices = np.arange(len(image_set)) if indices is None else np.asarray(indices)
  for start in range(0, len(indices), chunk):
    yield image_set.get(indices[start:start + chunk])


def array_set(images: np.ndarray, labels, classnames, templates, image_size: int) -> ImageSet:
  """In-memory uint8 images (any square-able size, grey or RGB) resized once to image_size."""
  images = np.asarray(images)
  labels = np.asarray(labels, np.int64)
  if len(images) != len(labels):
    raise ValueError(f'{len(images)} images but {len(labels)} labels')
  if images.shape[1:3] != (image_size, image_size) or images.ndim != 4:
    images = np.stack([resize_center_crop(_to_pil(im), image_size) for im in images])
  return ImageSet(list(classnames), list(templates), len(images),
                  lambda idx: (images[np.asarray(idx)], labels[np.asarray(idx)]), labels)


def _to_pil(image: np.ndarray) -> Image.Image:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return Image.fromarray(image.astype(np.uint8))


def map_parallel(fn, items, num_workers: int) -> list:
  """PIL decoding and resizing release the GIL, so threads scale on the host cores; one
  item (a training pipeline's read) runs in the calling thread."""
  if len(items) <= 1:
    return [fn(item) for item in items]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    return list(pool.map(fn, items))


def decode_parallel(fn, items, num_workers: int) -> np.ndarray:
  return np.stack(map_parallel(fn, items, num_workers))


def sklearn_digits(image_size: int) -> ImageSet:
  """scikit-learn's bundled 1,797 8x8 digits (values 0..16), upsampled to RGB image_size."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return array_set(grey, digits.target, [str(d) for d in range(10)],
                   templates_for('mnist'), image_size)


def shapes_task(name: str, image_size: int, num_samples: int = 500, seed: int = 0) -> ImageSet:
  """One of `clipjax.data.shapes.zeroshot_tasks` (held-out shape/colour/position combos),
  `clipjax.data.shapes.concept_tasks` (every combination, 'shapes_all_*') or
  'shapes_digits' (`clipjax.data.shapes.digit_task`)."""
  from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
  if name == 'shapes_digits':
    task = shapes.digit_task(image_size=image_size, num_samples=num_samples, seed=seed)
    return array_set(task.images, task.labels, task.classnames, task.templates, image_size)
  make = shapes.concept_tasks if name in shapes.CONCEPT_TASKS else shapes.zeroshot_tasks
  tasks = make(image_size=image_size, num_samples=num_samples, seed=seed)
  if name not in tasks:
    known = sorted(tasks) + list(shapes.CONCEPT_TASKS) + ['shapes_digits']
    raise KeyError(f'Unknown shapes task {name!r}; known: {known}')
  task = tasks[name]
  return array_set(task.images, task.labels, task.classnames, task.templates, image_size)


def image_folder(root: str, image_size: int, classnames=None, num_workers: int = 8) -> ImageSet:
  """root/<class>/<image>: classes are the sorted sub-folders.

  A class is named by its folder ('_' read as a space) unless `classnames` (list, file
  or prompts.json key) gives the names in sorted-folder order.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f'image_folder {root!r} is not a directory')
  folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not folders:
    raise ValueError(f'image_folder {root!r} has no class sub-folders')
  names = resolve_classnames(classnames) or [d.replace('_', ' ') for d in folders]
  if len(names) != len(folders):
    raise ValueError(f'{len(names)} classnames for {len(folders)} sub-folders of {root!r}')
  paths, labels = [], []
  for label, folder in enumerate(folders):
    for fname in sorted(os.listdir(os.path.join(root, folder))):
      if fname.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(root, folder, fname))
        labels.append(label)
  if not paths:
    raise ValueError(f'image_folder {root!r} holds no images ({IMAGE_EXTENSIONS})')
  labels = np.asarray(labels, np.int64)

  def load(path):
    with Image.open(path) as image:
      return resize_center_crop(image, image_size)

  def get(idx):
    idx = np.asarray(idx)
    return decode_parallel(load, [paths[i] for i in idx], num_workers), labels[idx]

  return ImageSet(names, list(DEFAULT_TEMPLATES), len(paths), get, labels)


def tfds_set(name: str, image_size: int, split: str = 'test', data_dir: Optional[str] = None,
             classnames=None, image_key: str = 'image', label_key: str = 'label',
             num_workers: int = 8) -> ImageSet:
  """A TFDS classification dataset already prepared under data_dir (random access).

  Class names: `classnames` if given, else CLIP_benchmark's for known datasets with
  matching label order (ImageNet, CIFAR, MNIST), else the TFDS label names.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types; name the dataset in every case.
    raise FileNotFoundError(f'TFDS dataset {name!r} split {split!r} is not prepared under '
                            f'data_dir={data_dir!r}: {e}') from e
  base = name.split(':')[0].split('/')[0]
  key = TFDS_PROMPT_KEYS.get(base)
  names = resolve_classnames(classnames)
  if names is None:
    names = list(builder.info.features[label_key].names)
    if key and len(prompts()['classnames'].get(key, ())) == len(names):
      names = list(prompts()['classnames'][key])
    else:
      names = [n.replace('_', ' ') for n in names]
  template_key = key or TFDS_TEMPLATE_KEYS.get(base)
  templates = templates_for(template_key) if template_key else list(DEFAULT_TEMPLATES)

  def load(index):
    record = source[int(index)]
    return resize_center_crop(_to_pil(record[image_key]), image_size), record[label_key]

  def get(idx):
    rows = map_parallel(load, np.asarray(idx), num_workers)
    return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], np.int64)

  return ImageSet(names, templates, len(source), get)


def is_built_in(dataset: Optional[str]) -> bool:
  """sklearn_digits and the synthetic shapes_* sets: generated here, without splits."""
  return dataset == 'sklearn_digits' or (dataset or '').startswith('shapes_')


def load_image_set(image_size: int, *, dataset: Optional[str] = None,
                   image_folder_path: Optional[str] = None, split: str = 'test',
                   data_dir: Optional[str] = None, classnames=None, num_samples: int = 500,
                   seed: int = 0, **tfds_kwargs) -> ImageSet:
  """Dispatch on the evaluator config: built-in names, an image folder, or a TFDS name."""
  if (dataset is None) == (image_folder_path is None):
    raise ValueError('give exactly one of dataset=... or image_folder=..., got '
                     f'dataset={dataset!r}, image_folder={image_folder_path!r}')
  if tfds_kwargs and (image_folder_path is not None or is_built_in(dataset)):
    raise TypeError(f'{dataset or image_folder_path}: unexpected keyword argument '
                    f'{", ".join(repr(k) for k in sorted(tfds_kwargs))} (TFDS sets only)')
  if image_folder_path is not None:
    return image_folder(image_folder_path, image_size, classnames)
  if dataset == 'sklearn_digits':
    image_set = sklearn_digits(image_size)
  elif dataset.startswith('shapes_'):
    image_set = shapes_task(dataset, image_size, num_samples=num_samples, seed=seed)
  else:
    return tfds_set(dataset, image_size, split=split, data_dir=data_dir, classnames=classnames,
                    **tfds_kwargs)
  names = resolve_classnames(classnames)
  if names is not None:
    if len(names) != len(image_set.classnames):
      raise ValueError(f'{len(names)} classnames given for {dataset!r} which has '
                       f'{len(image_set.classnames)} classes')
    image_set.classnames = names
  return image_set


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple:
  """(keep, held) index arrays: `fraction` of every class held out (at least one when
  the class has two or more examples), seeded and reproducible."""
  rng = np.random.default_rng(seed)
  keep, held = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    n_held = int(round(fraction * len(members)))
    n_held = min(max(n_held, 1 if len(members) > 1 else 0), len(members) - 1)
    held.append(members[:n_held])
    keep.append(members[n_held:])
  return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def all_labels(image_set: ImageSet) -> np.ndarray:
  """Every label of a set: known without decoding, else read chunk by chunk."""
  if image_set.labels is not None:
    return image_set.labels
  return np.concatenate([labels for _, labels in iterate(image_set)])


def subset(image_set: ImageSet, indices) -> ImageSet:
  """The rows `indices` of a set, renumbered from 0."""
  indices = np.asarray(indices, np.int64)
  labels = None if image_set.labels is None else image_set.labels[indices]
  return dataclasses.replace(image_set, size=len(indices), labels=labels,
                             get=lambda idx: image_set.get(indices[np.asarray(idx)]))


def has_own_splits(dataset: Optional[str], image_folder_path: Optional[str] = None,
                   test_image_folder: Optional[str] = None) -> bool:
  """False for sets a test part is held out of: built-ins (sklearn_digits, shapes_*) and
  a single image folder."""
  if image_folder_path is not None:
    return test_image_folder is not None
  return not is_built_in(dataset)


def load_part(image_size: int, *, part: str = 'train', test_fraction: float = 0.5,
              seed: int = 0, dataset: Optional[str] = None,
              image_folder: Optional[str] = None, test_image_folder: Optional[str] = None,
              split: Optional[str] = None, **kwargs) -> ImageSet:
  """The 'train' or 'test' part of a labelled set (or 'all' of a set without splits).
  Sets with splits of their own read `split` (default: the part's name; a test image
  folder for 'test'); the others hold out a stratified `test_fraction` with seed + 1, the
  rows the linear probe holds out, so a model tuned on 'train' is never scored on its
  training images (given the same num_samples, seed and test_fraction)."""
  if part not in ('train', 'test', 'all'):
    raise ValueError(f"image set part must be 'train', 'test' or 'all', got {part!r}")
  if has_own_splits(dataset, image_folder, test_image_folder):
    if part == 'all' or {part, split} == {'train', 'test'}:
      raise ValueError(f'{dataset or image_folder} has splits of its own: part={part!r} '
                       f'with split={split!r} would mix training and test images')
    folder = test_image_folder if part == 'test' and image_folder is not None else image_folder
    return load_image_set(image_size, dataset=dataset, image_folder_path=folder,
                          split=split or part, seed=seed, **kwargs)
  image_set = load_image_set(image_size, dataset=dataset, image_folder_path=image_folder,
                             seed=seed, **kwargs)
  if part == 'all':
    return image_set
  keep, held = stratified_split(all_labels(image_set), test_fraction, seed + 1)
  return subset(image_set, keep if part == 'train' else held)


def embed(encoder, image_set: ImageSet, indices=None, chunk: int = 1024) -> tuple:
  """(features [n, D], labels [n]) of an image set, decoded and encoded chunk by chunk."""
  features, labels = [], []
  for images, batch_labels in iterate(image_set, chunk, indices):
    features.append(encoder.encode_images(images))
    labels.append(batch_labels)
  return np.concatenate(features), np.concatenate(labels)


def subset_indices(size: int, max_examples: Optional[int]) -> np.ndarray:
  """All indices, or `max_examples` evenly spaced ones (deterministic, spans all classes
  of a label-sorted set such as an image folder)."""
  if max_examples is None or max_examples >= size:
    return np.arange(size)
  return np.linspace(0, size - 1, max_examples).round().astype(np.int64)
