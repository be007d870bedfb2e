"""grain training pipeline: shard per process, shuffle per epoch, augment, tokenize, batch.

Two kinds of sources:
- random access (`len`, `[i]`: synthetic shapes, CSV, ArrayRecord): split by index
  across processes, globally shuffled per epoch;
- streamed shards (`.shards`, `.shard_dataset(url)`: WebDataset tars): shard order
  split across processes then workers and shuffled per epoch, a few shards
  interleaved, samples shuffled in windows of `shuffle_buffer`.
Everything random is a function of (seed, position in the stream), so the iterator
state is a handful of integers (JSON) and a resumed run replays exactly the batches
an uninterrupted one would, with or without worker processes. Samples marked bad
(key `SKIP_KEY` holding a reason) are dropped before batching and counted.
"""
import collections
import json
import logging

from absl import flags
import grain
import numpy as np

from clipjax.data import manifest, sources
from clipjax.data.sources import SKIP_KEY

log = logging.getLogger(__name__)

_COUNTS_KEY = '_skipped'


class Apply:
  """The method's record transform (clipjax.data.transforms) run inside grain, after
  decoding (streamed sources); skip markers and `BadSample` become skipped records."""

  def __init__(self, transform, decoder=None):
    self.transform, self.decoder = transform, decoder

  def __call__(self, record, rng):
    if self.decoder is not None:
      record = self.decoder(record)
    if record.get(SKIP_KEY):
      return {SKIP_KEY: record[SKIP_KEY]}
    try:
      return self.transform(record, rng)
    except sources.BadSample as e:
      return {SKIP_KEY: e.reason}


class NoisyCaptions:
  """Random-access source wrapper swapping captions among a fixed fraction of samples.

  round(fraction * N) indices, chosen from the seed, pass their captions one step
  around a cycle, so every chosen sample gets another chosen sample's caption."""

  def __init__(self, source, fraction: float, seed: int):
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f'data.label_noise must be in [0, 1], got {fraction}')
    self.source, self.fraction = source, fraction
    n = len(source)
    chosen = np.random.default_rng([seed, 0x4E01]).choice(n, round(fraction * n), replace=False)
    order = np.argsort(chosen)
    self.noisy = chosen[order]
    self.partner = np.roll(chosen, 1)[order]

  def __len__(self):
    return len(self.source)

  def partner_of(self, index: int):
    j = np.searchsorted(self.noisy, index)
    if j < len(self.noisy) and self.noisy[j] == index:
      return int(self.partner[j])
    return None

  def __getitem__(self, index: int) -> dict:
    record = self.source[index]
    partner = self.partner_of(index)
    if partner is not None and SKIP_KEY not in record:
      try:
        record['caption'] = _caption_of(self.source, partner)
      except sources.BadSample as e:
        return {SKIP_KEY: e.reason}
    return record


def _caption_of(source, index: int) -> str:
  if hasattr(source, 'caption'):
    return source.caption(index)
  record = source[index]
  if SKIP_KEY in record:
    raise sources.BadSample(record[SKIP_KEY])
  return record['caption']


class _WindowShuffle(grain.IterDataset):
  """Shuffles samples within consecutive windows (a shuffle buffer that restores
  exactly: the state is where the window started in the parent), and optionally
  swaps captions among a fixed fraction of each window (label noise)."""

  def __init__(self, parent, window_size: int, seed: int, label_noise: float = 0.0,
               caption_key: str = 'txt'):
    super().__init__(parent)
    self._window_size, self._seed = window_size, seed
    self._label_noise, self._caption_key = label_noise, caption_key

  def __iter__(self):
    return _WindowShuffleIterator(self._parent.__iter__(), self._window_size, self._seed,
                                  self._label_noise, self._caption_key)


class _WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent, window_size, seed, label_noise, caption_key):
    super().__init__(parent)
    self._size, self._seed = window_size, seed
    self._noise, self._caption_key = label_noise, caption_key
    self._window, self._window_index, self._pos = [], 0, 0
    self._start_state = None

  def _fill(self):
    self._start_state = self._parent.get_state()
    window = []
    for _ in range(self._size):
      try:
        window.append(next(self._parent))
      except StopIteration:
        break
    rng = np.random.default_rng([self._seed, self._window_index])
    window = [window[i] for i in rng.permutation(len(window))]
    if self._noise:
      usable = [i for i, r in enumerate(window) if self._caption_key in r]
      chosen = rng.permutation(usable)[:round(self._noise * len(usable))]
      captions = [window[i][self._caption_key] for i in chosen]
      for i, caption in zip(chosen, np.roll(np.asarray(captions, object), 1)):
        window[i] = {**window[i], self._caption_key: caption}
    self._window = window

  def __next__(self):
    if self._pos == len(self._window):
      if self._window:
        self._window_index += 1
      self._fill()
      self._pos = 0
      if not self._window:
        raise StopIteration
    self._pos += 1
    return self._window[self._pos - 1]

  def get_state(self):
    if self._start_state is None:
      return {'start': self._parent.get_state(), 'window': self._window_index, 'pos': 0}
    return {'start': self._start_state, 'window': self._window_index, 'pos': self._pos}

  def set_state(self, state):
    self._parent.set_state(state['start'])
    self._window_index = int(state['window'])
    self._fill()
    self._pos = min(int(state['pos']), len(self._window))


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
  process); `metrics()` flattens it to {'data/skipped': n, 'data/skipped/<reason>': n}
  (the training loop sums it over processes).
  `rows_per_process` is set when this process's stream takes that many rows of each
  global batch (process_split='batch'): a state saved under another process count is
  mapped to the same number of global batches. A state saved with another number of
  workers is refused: grain keeps one position per worker.
  """

  def __init__(self, dataset: grain.IterDataset, rows_per_process: int | None = None,
               workers: int = 0):
    self._dataset = dataset
    self._iter = iter(dataset)
    self._rows, self._workers = rows_per_process, workers
    self.skipped = collections.Counter()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._iter)
    self.skipped.update(batch.pop(_COUNTS_KEY))
    return batch

  def metrics(self, reduce=dict) -> dict:
    """{'data/skipped': n, 'data/skipped/<reason>': n}; `reduce` combines the per-reason
    counts, e.g. over processes (`clipjax.train.distributed.sum_counts`)."""
    skipped = reduce(self.skipped)
    out = {'data/skipped': int(sum(skipped.values()))}
    out.update({f'data/skipped/{k}': int(v) for k, v in sorted(skipped.items())})
    return out

  def get_state(self) -> dict:
    state = {'grain': json.dumps(self._iter.get_state()), 'skipped': dict(self.skipped),
             'workers': self._workers}
    if self._rows:
      state['rows_per_process'] = self._rows
    return state

  def set_state(self, state: dict) -> None:
    workers = state.get('workers', self._workers)  # checkpoints before 2026-12-02 lack it
    if workers != self._workers:
      raise ValueError(f'The data position was saved with data.num_workers={workers}, and '
                       f'this run has {self._workers}: resume with '
                       f'--config.data.num_workers={workers}')
    grain_state = json.loads(state['grain'])
    saved = state.get('rows_per_process')
    if self._rows and saved and saved != self._rows:
      grain_state = _rescale_position(grain_state, saved, self._rows)
    self._iter.set_state(grain_state)
    self.skipped = collections.Counter(state.get('skipped', {}))

  def close(self) -> None:
    self._iter.close()


def _rescale_position(state: dict, saved_rows: int, rows: int) -> dict:
  """A 'batch'-split position saved at `saved_rows` rows per process, moved to the same
  global batch at `rows` per process. Exact unless samples were skipped (then the
  partial batch is re-read); worker states are per worker and stay as they are."""
  if set(state) != {'next_index'}:
    log.warning('Data position %s was saved with %d rows per process, now %d; with '
                'data.num_workers > 0 it is resumed unchanged, not remapped', state,
                saved_rows, rows)
    return state
  return {'next_index': state['next_index'] // saved_rows * rows}


def make_train_loader(source, transform, *, global_batch_size: int, seed: int,
                      process_index: int = 0, process_count: int = 1,
                      worker_count: int = 0, read_threads: int = 0,
                      label_noise: float = 0.0, shuffle_buffer: int = 1000,
                      cycle_length: int = 4, process_split: str = 'batch') -> TrainLoader:
  """Batches of this process's B = global_batch_size // process_count rows, each row
  `transform(record, rng)` (clipjax.data.transforms), forever.

  Random-access sources are shuffled globally every epoch and split across processes
  by `process_split`: 'batch' (default) has every process walk the same global order
  and take rows [p * B/P, (p + 1) * B/P) of each global batch, with crops drawn per
  global position, so the global batches do not depend on the process count;
  'interleave' has process p read samples p, p + P, ... in its own order.
  A source with `ordered = True` (an order of its own, e.g. episodes) is read in that
  order, repeated, not shuffled. Shard sources are split by shard.
  With `worker_count` > 0 grain worker processes each take every worker_count-th
  element of that stream and batch their own samples. For random-access sources under
  'batch' the stream is arranged so that worker w's elements are the rows of batches
  w, w + worker_count, ...: the batches are those of no workers, bit for bit, whatever
  the count (until a skipped sample is replaced from the worker's next batch). Shard
  streams and 'interleave' give each worker every worker_count-th shard or sample, so
  their order depends on worker_count. Every run resumes with the worker count it was
  saved with (grain keeps a position per worker).
  """
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by '
                     f'process_count={process_count}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  if process_split not in ('batch', 'interleave'):
    raise ValueError(f"process_split={process_split!r}: use 'batch' or 'interleave'")
  decoder = getattr(source, 'decoder', None) if hasattr(source, 'shards') else None
  preprocess = Apply(transform, decoder)
  if hasattr(source, 'shards'):
    # Open no more shards at once than a worker reads per epoch, so that interleaving
    # never puts two epochs of the same shard side by side.
    per_worker = len(source.shards) // (process_count * max(1, worker_count))
    ds = _shard_stream(source, seed, process_index, process_count, shuffle_buffer,
                       max(1, min(cycle_length, per_worker)), label_noise)
    ds = ds.random_map(preprocess, seed=seed)
  else:
    ds = _index_stream(source, seed, process_index, process_count, label_noise,
                       read_threads, global_batch_size, process_split, preprocess,
                       max(1, worker_count))
  ds = _SkipAndBatch(ds, global_batch_size // process_count)
  if worker_count > 0:
    # grain reads absl flags when starting workers; outside absl.app they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  batch_split = process_split == 'batch' and not hasattr(source, 'shards')
  return TrainLoader(ds, global_batch_size // process_count if batch_split else None,
                     worker_count)


def _index_stream(source, seed, process_index, process_count, label_noise, read_threads,
                  batch_size, process_split, preprocess, workers) -> grain.IterDataset:
  """Preprocessed samples of this process, forever."""
  if len(source) < process_count:
    raise ValueError(f'Source {source!r} has {len(source)} samples, fewer than '
                     f'process_count={process_count}')
  if label_noise:
    source = NoisyCaptions(source, label_noise, seed)
  read = grain.ReadOptions(num_threads=read_threads,
                           prefetch_buffer_size=max(64, batch_size))
  ds = grain.MapDataset.source(source)
  shuffle = (lambda d: d) if getattr(source, 'ordered', False) else (lambda d: d.shuffle(seed=seed))
  if process_split == 'interleave':
    ds = shuffle(ds[process_index::process_count]).repeat()
    return ds.to_iter_dataset(read).random_map(preprocess, seed=seed)
  ds = shuffle(ds).repeat().random_map(preprocess, seed=seed)
  return _ProcessRows(ds, batch_size // process_count, process_index, process_count,
                      workers).to_iter_dataset(read)


class _ProcessRows(grain.MapDataset):
  """Process p's rows of the global batches (P * b consecutive parent elements), the
  batches dealt round-robin to W workers, each taking every W-th element: element
  j = w + W * i is row i % b of the process's batch W * (i // b) + w, whose rows are
  [p * b, (p + 1) * b) of that global batch."""

  def __init__(self, parent, rows: int, process_index: int, process_count: int,
               workers: int):
    super().__init__(parent)
    self._rows, self._index, self._count = rows, process_index, process_count
    self._workers = workers

  def __len__(self):
    per_round = self._count * self._rows * self._workers
    return len(self._parent) // per_round * self._rows * self._workers

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    i, worker = divmod(index, self._workers)
    batch = i // self._rows * self._workers + worker
    return self._parent[(batch * self._count + self._index) * self._rows + i % self._rows]

  def __str__(self):
    return (f'_ProcessRows(rows={self._rows}, process={self._index}/{self._count}, '
            f'workers={self._workers})')


def _shard_stream(source, seed, process_index, process_count, shuffle_buffer,
                  cycle_length, label_noise) -> grain.IterDataset:
  shards = list(source.shards)
  if len(shards) < process_count:
    raise ValueError(f'{source!r}: {len(shards)} shards cannot feed {process_count} '
                     'processes; write more, smaller shards')
  ds = grain.MapDataset.source(shards)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat().map(source.shard_dataset)
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=cycle_length)
  caption_key = getattr(getattr(source, 'decoder', None), 'caption_key', 'txt')
  return _WindowShuffle(ds, shuffle_buffer, seed, label_noise, caption_key)


def sample_captions(source, num: int) -> list:
  """Up to `num` usable captions from the start of any source (tokenizer training)."""
  if hasattr(source, 'captions'):
    return source.captions(num)
  out = []
  for i in range(len(source)):
    record = source[i]
    if SKIP_KEY not in record:
      out.append(record['caption'])
    if len(out) >= num:
      break
  return out


# Optional data-config keys forwarded to make_train_loader, with their loader names (the
# record transform reads its own keys: augment, mean, std, extra_columns).
_LOADER_KEYS = {'num_workers': 'worker_count', 'label_noise': 'label_noise',
                'shuffle_buffer': 'shuffle_buffer', 'cycle_length': 'cycle_length',
                'read_threads': 'read_threads', 'process_split': 'process_split'}


def loader_kwargs(data_config) -> dict:
  """make_train_loader keyword arguments from a data config's optional keys."""
  return {name: data_config[key] for key, name in _LOADER_KEYS.items()
          if key in data_config and data_config[key] is not None}


def _plain(value):
  return value.to_dict() if hasattr(value, 'to_dict') else value


def make_source(data_config, *, image_size: int | None = None, seed: int | None = None):
  """The training source a data config names, restricted to the samples a manifest keeps
  when `subset` names one (`clipjax.data.manifest`). Keys: format (synthetic | wds |
  array_record | csv | image_set | features), train (pattern or path), subset,
  train_num_samples, image_size, seed, caption_key, caption_style (synthetic), csv_img_key, csv_caption_key,
  csv_separator, extra_columns, image_set (`clipjax.evaluate.datasets.load_part`
  arguments: a labelled set's part).
  Keyword arguments override the config's image_size and seed."""
  source = _make_source(data_config, image_size=image_size, seed=seed)
  if data_config.get('subset'):
    source = manifest.Subset(source, data_config.get('subset'))
  return source


def _make_source(data_config, *, image_size, seed):
  get = data_config.get
  fmt = get('format', 'synthetic')
  image_size = image_size or get('image_size', 32)
  extra = _plain(get('extra_columns') or {})
  if fmt == 'image_set':  # a labelled set, e.g. image_set=dict(dataset='sklearn_digits')
    from clipjax.evaluate import datasets  # pylint: disable=g-import-not-at-top
    spec = _plain(get('image_set') or {})
    try:
      return sources.ImageSetSource(datasets.load_part(int(image_size), **spec))
    except TypeError as e:
      raise TypeError(f'data.image_set={spec}: {e}') from None
  if fmt == 'features':  # precomputed image features and labels (.npz), no images
    if not get('train'):
      raise ValueError("data.train is empty: data.format='features' needs an .npz path")
    return sources.FeatureSource(get('train'))
  if fmt == 'synthetic':
    from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
    return shapes.ShapesSource(get('synthetic_split', 'train'),
                               int(get('train_num_samples') or 10_000),
                               int(image_size), int(seed if seed is not None else get('seed', 0)),
                               digit_fraction=float(get('digit_fraction', 0.0)),
                               zipf=float(get('zipf', 0.0)),
                               caption_style=get('caption_style', 'short'))
  path = get('train')
  if not path:
    raise ValueError(f"data.train is empty: data.format={fmt!r} needs a path or pattern")
  if fmt == 'wds':
    return sources.TarShardSource(path, caption_key=get('caption_key', 'txt'),
                                  extra_columns=extra, draft_size=image_size)
  if fmt == 'array_record':
    return sources.ArrayRecordSource(path, caption_key=get('caption_key', 'txt'),
                                     extra_columns=extra, draft_size=image_size)
  if fmt == 'csv':
    return sources.CsvSource(path, img_key=get('csv_img_key', 'filepath'),
                             caption_key=get('csv_caption_key', 'title'),
                             separator=get('csv_separator'), extra_columns=extra,
                             draft_size=image_size)
  raise ValueError(f"data.format={fmt!r} is not supported; use one of "
                   "['synthetic', 'wds', 'array_record', 'csv', 'image_set', 'features']")
