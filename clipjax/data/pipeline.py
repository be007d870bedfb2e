"""grain training pipeline: shard per process, shuffle per epoch, augment, tokenize, batch.

Everything random is a function of (seed, position in the repeated stream), so the
iterator state is a handful of integers and a resumed run replays exactly the batches
an uninterrupted one would, with or without worker processes. Samples a source marks
as bad (key `SKIP_KEY` holding a reason) are dropped before batching and counted.
"""
import collections
import json
import math

from absl import flags
import grain
import numpy as np
from PIL import Image

from clipjax.data import transforms

SKIP_KEY = '_skip_reason'
_COUNTS_KEY = '_skipped'
DEFAULT_AUGMENT = {'scale': (0.9, 1.0), 'ratio': (3 / 4, 4 / 3)}


def random_resized_crop_box(height, width, rng, scale, ratio):
  """torchvision's RandomResizedCrop box (x0, y0, x1, y1): area fraction in `scale`,
  log-uniform aspect ratio in `ratio`; falls back to the central crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y0 = int(rng.integers(0, height - h + 1))
      x0 = int(rng.integers(0, width - w + 1))
      return x0, y0, x0 + w, y0 + h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  x0, y0 = (width - w) // 2, (height - h) // 2
  return x0, y0, x0 + w, y0 + h


def random_resized_crop(image: np.ndarray, size: int, rng, scale=DEFAULT_AUGMENT['scale'],
                        ratio=DEFAULT_AUGMENT['ratio']) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3] (bicubic), CLIP's training crop."""
  h, w = image.shape[:2]
  box = random_resized_crop_box(h, w, rng, scale, ratio)
  out = Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box)
  return np.asarray(out, np.uint8)


def _to_size(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return transforms.resize_center_crop(Image.fromarray(image), size)


class Preprocess:
  """Per-sample transform run inside grain (picklable for worker processes)."""

  def __init__(self, tokenizer, context_length, image_size, augment, mean, std,
               extra_keys=()):
    self.tokenizer, self.context_length = tokenizer, context_length
    self.image_size, self.mean, self.std = image_size, mean, std
    self.augment = None if augment is None else {**DEFAULT_AUGMENT, **augment}
    self.extra_keys = tuple(extra_keys)

  def __call__(self, record, rng):
    if record.get(SKIP_KEY):
      return {SKIP_KEY: record[SKIP_KEY]}
    image = record['image']
    if self.augment is None:
      image = _to_size(image, self.image_size)
    else:
      image = random_resized_crop(image, self.image_size, rng, self.augment['scale'],
                                  self.augment['ratio'])
    out = {'image': transforms.normalize(image, self.mean, self.std),
           'text': self.tokenizer([record['caption']], self.context_length)[0]}
    for key in self.extra_keys:
      out[key] = np.asarray(record[key])
    return out


class _SkipAndBatch(grain.IterDataset):
  """Drops records marked bad, stacks `batch_size` good ones, and attaches the
  per-batch skip counts (reason -> n) so they survive worker processes."""

  def __init__(self, parent, batch_size: int):
    super().__init__(parent)
    self._batch_size = batch_size

  def __iter__(self):
    return _SkipAndBatchIterator(self._parent.__iter__(), self._batch_size)

  def __str__(self):
    return f'_SkipAndBatch(batch_size={self._batch_size})'


class _SkipAndBatchIterator(grain.DatasetIterator):

  def __init__(self, parent, batch_size: int):
    super().__init__(parent)
    self._batch_size = batch_size

  def __next__(self):
    good, skipped = [], collections.Counter()
    while len(good) < self._batch_size:
      record = next(self._parent)
      if SKIP_KEY in record:
        skipped[record[SKIP_KEY]] += 1
      else:
        good.append(record)
    batch = {k: np.stack([r[k] for r in good]) for k in good[0]}
    batch[_COUNTS_KEY] = dict(skipped)
    return batch

  # Nothing is buffered between batches, so the parent's state is the whole state.
  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class TrainLoader:
  """Infinite iterator of numpy batches with exact, JSON-serialisable resume state.

  `skipped` holds the cumulative count of dropped samples per reason (from this
  process); `metrics()` flattens it to {'data/skipped': n, 'data/skipped/<reason>': n}.
  """

  def __init__(self, dataset: grain.IterDataset):
    self._dataset = dataset
    self._iter = iter(dataset)
    self.skipped = collections.Counter()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._iter)
    self.skipped.update(batch.pop(_COUNTS_KEY))
    return batch

  def metrics(self) -> dict:
    out = {'data/skipped': int(sum(self.skipped.values()))}
    out.update({f'data/skipped/{k}': int(v) for k, v in sorted(self.skipped.items())})
    return out

  def get_state(self) -> dict:
    return {'grain': json.dumps(self._iter.get_state()), 'skipped': dict(self.skipped)}

  def set_state(self, state: dict) -> None:
    self._iter.set_state(json.loads(state['grain']))
    self.skipped = collections.Counter(state.get('skipped', {}))

  def close(self) -> None:
    self._iter.close()


def make_train_loader(source, *, tokenizer, context_length: int, image_size: int,
                      global_batch_size: int, seed: int, augment=None,
                      process_index: int = 0, process_count: int = 1,
                      worker_count: int = 0, read_threads: int = 0,
                      mean=transforms.CLIP_MEAN, std=transforms.CLIP_STD,
                      extra_keys=()) -> TrainLoader:
  """Batches {'image': f32[B, S, S, 3], 'text': i32[B, L], *extra_keys} of this
  process's B = global_batch_size // process_count samples, forever.

  The source is split across processes by index (process p reads p, p + P, ...),
  then shuffled differently every epoch; with `worker_count` > 0 grain worker
  processes each take every worker_count-th element of that stream.
  `augment=None` means no random crop (resize-centre-crop if sizes differ).
  """
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by '
                     f'process_count={process_count}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  if len(source) < process_count:
    raise ValueError(f'Source {source!r} has {len(source)} samples, fewer than '
                     f'process_count={process_count}')
  preprocess = Preprocess(tokenizer, context_length, image_size, augment, mean, std,
                          extra_keys)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat().random_map(preprocess, seed=seed)
  read = grain.ReadOptions(num_threads=read_threads,
                           prefetch_buffer_size=max(64, global_batch_size))
  ids = _SkipAndBatch(ds.to_iter_dataset(read), global_batch_size // process_count)
  if worker_count > 0:
    # grain reads absl flags when starting workers; outside absl.app they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return TrainLoader(ids)


def make_source(data_config):
  """The training source a data config names (keys: format, train, train_num_samples,
  image_size, seed)."""
  get = data_config.get if hasattr(data_config, 'get') else data_config.__getitem__
  fmt = get('format', 'synthetic')
  if fmt == 'synthetic':
    from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
    return shapes.ShapesSource('train', int(get('train_num_samples', 10_000) or 10_000),
                               int(get('image_size', 32)), int(get('seed', 0)))
  raise ValueError(f"data.format={fmt!r} is not supported; use one of ['synthetic']")
