"""Image-text retrieval (Flickr30K 1k / MSCOCO 5k Karpathy test splits, or any captioned set).

Recalls follow CLIP_benchmark's definitions (see `metrics.retrieval_metrics`). Karpathy
splits keep the first `max_captions` captions per image (5 by default, the CLIP paper's
practice; a few COCO images have more; None keeps all).
"""
import json
import os
from typing import Optional

import numpy as np
from PIL import Image

from clipjax.data.transforms import resize_center_crop
from clipjax.evaluate import datasets
from clipjax.evaluate.metrics import recalls, retrieval_ranks


class CaptionedSet:
  """Images read lazily (`get(indices)`) plus all captions and their image indices."""

  def __init__(self, size: int, get, captions: list, text_to_image: np.ndarray):
    self.size, self.get = size, get
    self.captions, self.text_to_image = captions, np.asarray(text_to_image, np.int64)

  def __len__(self) -> int:
    return self.size


def karpathy(json_path: str, images_dir: str, image_size: int, split: str = 'test',
             max_captions: Optional[int] = 5, num_workers: int = 8) -> CaptionedSet:
  """Karpathy-format JSON ({"images": [{"filepath"?, "filename", "split", "sentences":
  [{"raw"}]}]}, as dataset_coco.json / dataset_flickr30k.json) with images under images_dir."""
  with open(json_path) as f:
    entries = [e for e in json.load(f)['images'] if e.get('split') == split]
  if not entries:
    raise ValueError(f'{json_path} has no images with split {split!r}')
  paths, captions, text_to_image = [], [], []
  for index, entry in enumerate(entries):
    paths.append(os.path.join(images_dir, entry.get('filepath', ''), entry['filename']))
    raws = [s['raw'].strip() for s in entry['sentences']][:max_captions]
    if not raws:
      raise ValueError(f'{json_path}: image {entry["filename"]!r} has no captions')
    captions += raws
    text_to_image += [index] * len(raws)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} images of {json_path} are missing under '
                            f'{images_dir!r}, e.g. {missing[0]!r}')

  def load(path):
    with Image.open(path) as image:
      return resize_center_crop(image, image_size)

  def get(idx):
    return datasets.decode_parallel(load, [paths[i] for i in idx], num_workers)

  return CaptionedSet(len(paths), get, captions, text_to_image)


def shapes(image_size: int, num_samples: int = 256, captions_per_image: int = 3,
           seed: int = 0) -> CaptionedSet:
  """Held-out-combination synthetic scenes; extra captions re-phrase the same scene."""
  from clipjax.data import shapes as shapes_lib  # pylint: disable=g-import-not-at-top
  source = shapes_lib.ShapesSource('heldout', num_samples=num_samples, image_size=image_size,
                                   seed=seed)
  images, captions, text_to_image = [], [], []
  for index in range(num_samples):
    record = source[index]
    images.append(record['image'])
    captions.append(record['caption'])
    scene = source.scene(index)
    for extra in range(1, captions_per_image):
      rng = np.random.default_rng([seed, index, extra, 7919])
      captions.append(shapes_lib.caption_scene(scene, rng))
    text_to_image += [index] * captions_per_image
  images = np.stack(images)
  return CaptionedSet(len(images), lambda idx: images[np.asarray(idx)], captions, text_to_image)


def shapes_long(image_size: int, num_samples: int = 256, seed: int = 0) -> CaptionedSet:
  """Scenes of two to four objects, each with one long caption that names them all (every
  pair of shape and colour: `ShapesSource('all', caption_style='long')`)."""
  from clipjax.data import shapes as shapes_lib  # pylint: disable=g-import-not-at-top
  source = shapes_lib.ShapesSource('all', num_samples=num_samples, image_size=image_size,
                                   seed=seed, caption_style='long')
  records = [source[index] for index in range(num_samples)]
  images = np.stack([r['image'] for r in records])
  return CaptionedSet(len(images), lambda idx: images[np.asarray(idx)],
                      [r['caption'] for r in records], np.arange(num_samples))


def arrays(images, captions, text_to_image, image_size: int) -> CaptionedSet:
  """In-memory uint8 images (resized if needed) with their captions."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:3] != (image_size, image_size):
    images = np.stack([resize_center_crop(Image.fromarray(im), image_size) for im in images])
  return CaptionedSet(len(images), lambda idx: images[np.asarray(idx)], list(captions),
                      text_to_image)


class RetrievalEvaluator:
  """Config: karpathy_json= + images_dir= [split, max_captions]; or dataset='shapes'
  [num_samples, captions_per_image, seed] or 'shapes_long' [num_samples, seed]; or images=, captions=, text_to_image= arrays."""

  def __init__(self, karpathy_json: Optional[str] = None, images_dir: Optional[str] = None,
               split: str = 'test', max_captions: Optional[int] = 5,
               dataset: Optional[str] = None, num_samples: int = 256,
               captions_per_image: int = 3, seed: int = 0, images=None, captions=None,
               text_to_image=None, chunk: int = 1024):
    given = [karpathy_json is not None, dataset is not None, images is not None]
    if sum(given) != 1:
      raise ValueError('retrieval evaluator needs exactly one of karpathy_json=, dataset= '
                       f'or images=; got karpathy_json={karpathy_json!r}, dataset={dataset!r}, '
                       f'images given: {images is not None}')
    if karpathy_json is not None and images_dir is None:
      raise ValueError(f'retrieval evaluator with karpathy_json={karpathy_json!r} needs images_dir')
    if dataset is not None and dataset not in ('shapes', 'shapes_long'):
      raise ValueError("retrieval dataset must be 'shapes' or 'shapes_long' (or use "
                       f"karpathy_json=), got {dataset!r}")
    if images is not None and (captions is None or text_to_image is None):
      raise ValueError('retrieval evaluator with images= also needs captions= and text_to_image=')

    def build(image_size):
      if karpathy_json is not None:
        return karpathy(karpathy_json, images_dir, image_size, split, max_captions)
      if dataset == 'shapes_long':
        return shapes_long(image_size, num_samples, seed)
      if dataset is not None:
        return shapes(image_size, num_samples, captions_per_image, seed)
      return arrays(images, captions, text_to_image, image_size)

    self._build, self.chunk, self._cache = build, chunk, {}

  def captioned_set(self, image_size: int) -> CaptionedSet:
    if image_size not in self._cache:
      self._cache[image_size] = self._build(image_size)
    return self._cache[image_size]

  def __call__(self, encoder) -> tuple:
    """(recalls, arrays): captions_per_image [images], which sets the recalls' chance;
    text_to_image_rank [captions] and image_to_text_rank [images] (`retrieval_ranks`),
    which with `captioned_set(size)`'s captions give per-concept recall
    (`clipjax.analysis.concepts.concept_recall`)."""
    data = self.captioned_set(encoder.image_size)
    image_emb = np.concatenate([
        encoder.encode_images(data.get(np.arange(s, min(s + self.chunk, len(data)))))
        for s in range(0, len(data), self.chunk)])
    text_emb = encoder.encode_texts(data.captions)
    t2i_rank, i2t_rank = retrieval_ranks(image_emb, text_emb, data.text_to_image, self.chunk)
    return recalls(t2i_rank, i2t_rank), dict(
        captions_per_image=np.bincount(data.text_to_image, minlength=len(data)),
        text_to_image_rank=t2i_rank, image_to_text_rank=i2t_rank)
