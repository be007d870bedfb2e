"""Readers for real image-text data: WebDataset tar shards, ArrayRecord, CSV/TSV, TFDS.

Records travel as "raw" dicts in the WebDataset layout img2dataset writes (member
extension -> bytes: 'jpg', 'txt', 'json', ...) and are decoded by `decode_record` into
{'image': uint8 [H, W, 3], 'caption': str, ...}. Anything unusable becomes
{SKIP_KEY: reason} instead of raising, so the pipeline can drop and count it.
"""
import abc
import csv
import io
import json
import os
import re
import tarfile

import fsspec
import grain
import msgpack
import numpy as np
from PIL import Image
import simplejpeg

SKIP_KEY = '_skip_reason'
IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')
# Reasons a sample is skipped, as counted under data/skipped/<reason>; a missing
# declared extra column counts as missing_<column>.
REASONS = ('missing_image', 'decode_error', 'image_too_small', 'image_too_large',
           'missing_caption', 'empty_caption', 'bad_utf8', 'truncated_tar', 'missing_file')


class BadSample(Exception):
  """A sample that cannot be used; `reason` is one of REASONS."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


# ---------------------------------------------------------------------------- paths

_BRACE = re.compile(r'\{([^{}]*)\}')


def _expand_braces(pattern: str) -> list:
  """'a{00..02}b{x,y}' -> a00bx, a00by, a01bx, ... (zero padding kept from the start)."""
  match = _BRACE.search(pattern)
  if not match:
    return [pattern]
  body = match.group(1)
  numeric = re.fullmatch(r'(\d+)\.\.(\d+)', body)
  if numeric:
    lo, hi = numeric.groups()
    width = len(lo)
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    options = body.split(',')
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [head + opt + rest for opt in options for rest in _expand_braces(tail)]


def expand_urls(spec: str) -> list:
  """Shard list from open_clip-style specs: brace ranges, several specs joined with
  '::', globs; local paths or any fsspec URL. Errors name what is missing."""
  if not spec or not str(spec).strip():
    raise ValueError('data.train is empty: give a shard pattern such as '
                     "'data/{00000..00127}.tar'")
  urls = []
  for part in str(spec).split('::'):
    for url in _expand_braces(part.strip()):
      if any(c in url for c in '*?['):
        fs, _, _ = fsspec.get_fs_token_paths(url)
        found = sorted(fs.glob(url))
        if not found:
          raise FileNotFoundError(f'No files match {url!r} (from data.train={spec!r})')
        protocol = url.split('://')[0] + '://' if '://' in url else ''
        urls.extend(protocol + f if protocol and '://' not in f else f for f in found)
      else:
        urls.append(url)
  if not urls:
    raise FileNotFoundError(f'data.train={spec!r} expands to an empty shard list')
  _check_exist(urls, spec)
  return urls


def _check_exist(urls, spec):
  """Every local path is checked; for remote URLs the first (listing buckets is slow)."""
  local = [u for u in urls if '://' not in u or u.startswith('file://')]
  remote = [u for u in urls if u not in local]
  for url in local + remote[:1]:
    fs, _, paths = fsspec.get_fs_token_paths(url)
    if not fs.exists(paths[0]):
      raise FileNotFoundError(f'Data path {url!r} does not exist (from data.train={spec!r})')


# --------------------------------------------------------------------------- decode

def to_rgb(image: Image.Image) -> Image.Image:
  """RGB from any PIL mode: alpha composited on white, 16-bit scaled, CMYK/palette converted."""
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    array = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or array.max() > 255 else 255.0
    image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    image = image.convert('RGBA')
    white = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image)
  return image.convert('RGB') if image.mode != 'RGB' else image


def decode_image(data: bytes, *, draft_size: int | None = None, min_side: int = 4,
                 max_pixels: int = 64 << 20, as_array: bool = True):
  """uint8 [H, W, 3] (or, with `as_array=False`, the RGB PIL image when Pillow decoded it,
  saving a copy when PIL crops next). JPEGs are decoded at the smallest DCT scale whose
  sides are still >= `draft_size` (the fast path: a 4x smaller decode is several times
  cheaper), by libjpeg-turbo straight into numpy (`_decode_jpeg`) where it can."""
  pixels = _decode_jpeg(data, draft_size, min_side, max_pixels)
  if pixels is not None:
    return pixels
  try:
    image = Image.open(io.BytesIO(data))
    if draft_size and image.format == 'JPEG':
      image.draft('RGB', (draft_size, draft_size))
    _check_size(image.size, min_side, max_pixels)
    image.load()
    image = to_rgb(image)
    return np.asarray(image, np.uint8) if as_array else image
  except BadSample:
    raise
  except Image.DecompressionBombError as e:
    raise BadSample('image_too_large') from e
  except Exception as e:  # PIL raises many types for broken files # pylint: disable=broad-except
    raise BadSample('decode_error') from e


def _check_size(size, min_side: int, max_pixels: int) -> None:
  if min(size) < min_side:
    raise BadSample('image_too_small')
  if size[0] * size[1] > max_pixels:
    raise BadSample('image_too_large')


def _decode_jpeg(data: bytes, draft_size, min_side: int, max_pixels: int):
  """A YCbCr or grey JPEG decoded by simplejpeg: the pixels Pillow gives (the same
  libjpeg-turbo, Pillow's `draft` scale; tests/test_data_sources.py), without Pillow's 4-byte
  pixels to pack, ~30% less CPU. None for anything else, or anything it refuses (Pillow
  then decodes it, or says why it cannot)."""
  if data[:2] != b'\xff\xd8':
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  if colorspace not in ('YCbCr', 'Gray'):
    return None
  if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
    raise BadSample('image_too_large')  # what Pillow's open refuses as a decompression bomb
  scale = 1
  if draft_size:  # JpegImagePlugin.draft's choice
    reduce = min(width // draft_size, height // draft_size)
    scale = next((s for s in (8, 4, 2) if reduce >= s), 1)
  width, height = -(-width // scale), -(-height // scale)
  _check_size((width, height), min_side, max_pixels)
  try:
    return simplejpeg.decode_jpeg(data, colorspace='RGB', min_height=height, min_width=width)
  except ValueError:
    return None


def decode_text(data) -> str:
  if data is None:
    raise BadSample('missing_caption')
  if isinstance(data, bytes):
    try:
      data = data.decode('utf-8')
    except UnicodeDecodeError as e:
      raise BadSample('bad_utf8') from e
  text = ' '.join(data.split())
  if not text:
    raise BadSample('empty_caption')
  return text


def _decode_column(raw: dict, spec: str):
  """Extra column from a raw record. spec: '<member or column>[:<type>]', type one of
  text|array|int|float; 'json.<field>' reads a field of the json member. Without a
  type: *npy -> array, *cls/*id -> int, strings -> text (tokenized by the pipeline)."""
  name, _, kind = spec.partition(':')
  if name.startswith('json.'):
    meta = raw.get('json')
    value = json.loads(meta).get(name[5:]) if meta is not None else None
  else:
    value = raw.get(name)
  if value is None:
    raise BadSample(f'missing_{name}')
  if not kind:
    kind = ('array' if name.endswith('npy') else 'int' if name.endswith(('cls', 'id'))
            else 'text' if isinstance(value, (str, bytes)) else 'array')
  if kind == 'text':
    return decode_text(value)
  if kind == 'array':
    return np.load(io.BytesIO(value)) if isinstance(value, bytes) else np.asarray(value)
  if kind in ('int', 'float'):
    value = value.decode() if isinstance(value, bytes) else value
    return np.asarray(value, np.int64 if kind == 'int' else np.float32)
  raise ValueError(f'extra column {spec!r}: unknown type {kind!r} (text|array|int|float)')


class RecordDecoder:
  """raw WebDataset-layout dict -> {'image', 'caption', 'key', *extra_columns} or a skip
  marker."""

  def __init__(self, image_exts=IMAGE_EXTS, caption_key='txt', extra_columns=None,
               draft_size=None, as_array=True):
    self.image_exts, self.caption_key = tuple(image_exts), caption_key
    self.extra_columns = dict(extra_columns or {})
    self.draft_size, self.as_array = draft_size, as_array

  def image(self, raw: dict):
    """The record's image (its first present extension), decoded; raises BadSample."""
    data = next((raw[e] for e in self.image_exts if raw.get(e) is not None), None)
    if data is None:
      raise BadSample('missing_image')
    return decode_image(data, draft_size=self.draft_size, as_array=self.as_array)

  def __call__(self, raw: dict) -> dict:
    if SKIP_KEY in raw:
      return {SKIP_KEY: raw[SKIP_KEY]}
    try:
      record = {'image': self.image(raw), 'caption': decode_text(raw.get(self.caption_key))}
      if '__key__' in raw:  # what precomputed features are joined by
        record['key'] = raw['__key__']
      for key, spec in self.extra_columns.items():
        record[key] = _decode_column(raw, spec)
    except BadSample as e:
      return {SKIP_KEY: e.reason}
    return record


# ------------------------------------------------------------------------ tar shards

def _split_name(name: str):
  """WebDataset convention: key is the path up to the first dot of the basename."""
  folder, base = os.path.split(name)
  stem, _, ext = base.partition('.')
  return os.path.join(folder, stem), ext.lower()


def iter_tar_samples(url: str, skip: int = 0):
  """Yields raw sample dicts ('__key__', '__url__', ext -> bytes) of one tar shard,
  after skipping `skip` samples without reading their data. A shard that ends in the
  middle of a member yields one {SKIP_KEY: 'truncated_tar'} and stops."""
  with fsspec.open(url, 'rb') as f:
    try:
      tar = tarfile.open(fileobj=f, mode='r:')
    except tarfile.ReadError:
      yield {SKIP_KEY: 'truncated_tar'}
      return
    current, sample, seen = None, {}, 0
    try:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = _split_name(member.name)
        if key != current:
          if current is not None:
            seen += 1
            if seen > skip:
              yield sample
          current, sample = key, {'__key__': key, '__url__': url}
        if seen >= skip:
          sample[ext] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, OSError):
      yield {SKIP_KEY: 'truncated_tar'}
      return
    if current is not None and seen + 1 > skip:
      yield sample


class TarShardDataset(grain.IterDataset):
  """One tar shard as a grain IterDataset whose state is the number of samples read."""

  def __init__(self, url: str):
    super().__init__()
    self.url = url

  def __iter__(self):
    return _TarShardIterator(self.url)

  def __str__(self):
    return f'TarShardDataset({self.url!r})'


class _TarShardIterator(grain.DatasetIterator):

  def __init__(self, url: str):
    super().__init__()
    self._url, self._position, self._samples = url, 0, None

  def __next__(self):
    if self._samples is None:
      self._samples = iter_tar_samples(self._url, skip=self._position)
    sample = next(self._samples)
    self._position += 1
    return sample

  def get_state(self):
    return {'position': self._position}

  def set_state(self, state):
    self._position, self._samples = int(state['position']), None


class TarShardSource:
  """WebDataset tar shards (img2dataset layout); read by streaming, not random access."""

  def __init__(self, spec: str, *, caption_key='txt', image_exts=IMAGE_EXTS,
               extra_columns=None, draft_size=None):
    self.spec, self.shards = spec, expand_urls(spec)
    # Records only feed the pipeline: a PIL image (not a JPEG) is cropped without a copy.
    self.decoder = RecordDecoder(image_exts, caption_key, extra_columns, draft_size,
                                 as_array=False)
    self.caption_key = caption_key

  def shard_dataset(self, url: str) -> grain.IterDataset:
    return TarShardDataset(url)

  def captions(self, num: int) -> list:
    """The first `num` usable captions, in shard order (tokenizer training)."""
    out = []
    for url in self.shards:
      for raw in iter_tar_samples(url):
        try:
          out.append(decode_text(raw.get(self.caption_key)))
        except BadSample:
          continue
        if len(out) >= num:
          return out
    return out

  def __repr__(self):
    return f'TarShardSource({self.spec!r}, {len(self.shards)} shards)'


# ----------------------------------------------------------------- map-style sources

class _MapSource(abc.ABC):
  """Shared parts of random-access sources: decoded records with a sample index."""

  decoder: RecordDecoder

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of records."""

  @abc.abstractmethod
  def raw(self, index: int) -> dict:
    """Record `index` in the WebDataset layout (or a skip marker)."""

  def __getitem__(self, index: int) -> dict:
    record = self.decoder(self.raw(index))
    if SKIP_KEY not in record:
      record['index'] = np.int64(index)
    return record

  def caption(self, index: int) -> str:
    """The caption alone (cheap: no image decode); raises BadSample."""
    return decode_text(self.raw(index).get(self.decoder.caption_key))

  def captions(self, num: int) -> list:
    out = []
    for i in range(len(self)):
      try:
        out.append(self.caption(i))
      except BadSample:
        continue
      if len(out) >= num:
        break
    return out


class CsvSource(_MapSource):
  """CSV/TSV of image path and caption (open_clip's --csv-img-key/--csv-caption-key).
  Relative image paths are taken from the CSV file's folder."""

  def __init__(self, path: str, *, img_key='filepath', caption_key='title', separator=None,
               extra_columns=None, draft_size=None):
    fs, _, paths = fsspec.get_fs_token_paths(path)
    if not fs.exists(paths[0]):
      raise FileNotFoundError(f'CSV file {path!r} does not exist (data.train)')
    separator = separator or ('\t' if str(path).endswith(('.tsv', '.tsv.gz')) else ',')
    with fsspec.open(path, 'rt', encoding='utf-8', newline='',
                     compression='infer') as f:
      reader = csv.DictReader(f, delimiter=separator)
      rows = list(reader)
      fields = reader.fieldnames or []
    for key in (img_key, caption_key):
      if key not in fields:
        raise KeyError(f'{path}: no column {key!r}; columns are {fields}')
    self.path, self.img_key, self.caption_column = path, img_key, caption_key
    self.root = os.path.dirname(str(path))
    self.rows = rows
    self.decoder = RecordDecoder(('img',), 'txt', extra_columns, draft_size)

  def __len__(self):
    return len(self.rows)

  def raw(self, index: int) -> dict:
    row = self.rows[index]
    image_path = row[self.img_key]
    if '://' not in image_path and not os.path.isabs(image_path):
      image_path = os.path.join(self.root, image_path)
    raw = dict(row, txt=row[self.caption_column])
    try:
      with fsspec.open(image_path, 'rb') as f:
        raw['img'] = f.read()
    except FileNotFoundError:
      return {SKIP_KEY: 'missing_file', 'txt': raw['txt']}
    return raw

  def __repr__(self):
    return f'CsvSource({self.path!r}, {len(self)} rows)'


class ArrayRecordSource(_MapSource):
  """ArrayRecord files whose records are msgpack maps in the WebDataset layout
  ({'jpg': bytes, 'txt': str, ...}); `make_shards --format array_record` writes them."""

  def __init__(self, spec: str, *, caption_key='txt', image_exts=IMAGE_EXTS,
               extra_columns=None, draft_size=None):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self.spec, self.paths = spec, expand_urls(spec)
    self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
    self.decoder = RecordDecoder(image_exts, caption_key, extra_columns, draft_size)

  def __len__(self):
    return len(self._source)

  def raw(self, index: int) -> dict:
    return msgpack.unpackb(self._source[index], raw=False)

  def __getstate__(self):  # the reader holds file handles; reopen in workers
    return {k: v for k, v in self.__dict__.items() if k != '_source'}

  def __setstate__(self, state):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self.__dict__.update(state)
    self._source = array_record_data_source.ArrayRecordDataSource(self.paths)

  def __repr__(self):
    return f'ArrayRecordSource({self.spec!r}, {len(self)} records)'


class ImageSetSource:
  """Random-access {'image': uint8 [S, S, 3], 'label', 'index'} records of a labelled
  image set (`clipjax.evaluate.datasets.ImageSet`): classifiers trained by the loop on
  the sets evaluators read (NMTune's downstream tasks)."""

  def __init__(self, image_set):
    self.image_set, self.classnames = image_set, list(image_set.classnames)

  def __len__(self) -> int:
    return len(self.image_set)

  def __getitem__(self, index: int) -> dict:
    images, labels = self.image_set.get([int(index)])
    return {'image': images[0], 'label': np.int64(labels[0]), 'index': np.int64(index)}

  def __repr__(self):
    return f'ImageSetSource({len(self)} images, {len(self.classnames)} classes)'


class FeatureSource:
  """Random-access {'feature': f32 [D], 'label', 'index'} records of precomputed image
  features: what a black-box encoder (an API, a model that cannot run here) returned for
  each image, read from an .npz with `features` [N, D], `labels` [N] and optionally
  `classnames` [C] (`write_features` writes one)."""

  def __init__(self, path: str):
    try:
      with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
      raise ValueError(f'features file {path!r}: not a readable .npz ({e})') from None
    missing = sorted({'features', 'labels'} - set(arrays))
    if missing:
      raise ValueError(f'features file {path!r} lacks {missing}; it has {sorted(arrays)}')
    self.path = path
    self.features = np.asarray(arrays['features'], np.float32)
    self.labels = np.asarray(arrays['labels'], np.int64)
    if self.features.ndim != 2 or self.labels.shape != (len(self.features),):
      raise ValueError(f'features file {path!r}: features {self.features.shape} and labels '
                       f'{self.labels.shape} must be [N, D] and [N]')
    default = [str(c) for c in range(int(self.labels.max(initial=-1)) + 1)]
    self.classnames = [str(c) for c in arrays.get('classnames', default)]
    if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.classnames):
      raise ValueError(f'features file {path!r}: labels must lie in [0, '
                       f'{len(self.classnames)}), the classnames it lists')

  def __len__(self) -> int:
    return len(self.features)

  def __getitem__(self, index: int) -> dict:
    return {'feature': self.features[index], 'label': self.labels[index],
            'index': np.int64(index)}

  def __repr__(self):
    return (f'FeatureSource({self.path!r}: {len(self)} x {self.features.shape[1]}, '
            f'{len(self.classnames)} classes)')


def write_features(path: str, features, labels, classnames=None) -> None:
  """The .npz `FeatureSource` reads."""
  arrays = dict(features=np.asarray(features, np.float32), labels=np.asarray(labels, np.int64))
  if classnames is not None:
    arrays['classnames'] = np.asarray([str(c) for c in classnames])
  np.savez(path, **arrays)


def pack_record(sample: dict) -> bytes:
  """Serialises one WebDataset-layout sample for ArrayRecordSource."""
  return msgpack.packb(sample, use_bin_type=True)


class TfdsSource:
  """A TFDS dataset prepared in a local data dir, read with `tfds.data_source` (no
  TensorFlow): records {'image': uint8 [H, W, 3], 'label': int64}; `classnames` from
  the label feature."""

  def __init__(self, name: str, *, split: str, data_dir: str, image_key='image',
               label_key='label'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f'TFDS data dir {data_dir!r} does not exist')
    try:  # registered builders, else read-only from the prepared files
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(f'TFDS dataset {name!r} not found in {data_dir!r}: {e}') from e
    if split not in builder.info.splits:
      raise KeyError(f'TFDS dataset {name!r} in {data_dir!r} has no split {split!r}; '
                     f'splits: {list(builder.info.splits)}')
    self._source = builder.as_data_source(split=split)
    self.name, self.image_key, self.label_key = name, image_key, label_key
    label = builder.info.features[label_key]
    self.classnames = list(getattr(label, 'names', []) or [])

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    image = np.asarray(example[self.image_key])
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return {'image': image.astype(np.uint8), 'label': np.int64(example[self.label_key]),
            'index': np.int64(index)}


# ---------------------------------------------------------------------- shard writer

class ShardWriter:
  """Writes WebDataset tar shards {prefix}{i:05d}.tar of `shard_size` samples each."""

  def __init__(self, folder: str, shard_size: int = 1000, prefix: str = ''):
    os.makedirs(folder, exist_ok=True)
    self.folder, self.shard_size, self.prefix = folder, shard_size, prefix
    self.paths, self._tar, self._count = [], None, 0

  def write(self, key: str, members: dict) -> None:
    if self._tar is None or self._count == self.shard_size:
      self._open()
    for ext, data in members.items():
      data = data.encode('utf-8') if isinstance(data, str) else data
      info = tarfile.TarInfo(f'{key}.{ext}')
      info.size, info.mode, info.mtime = len(data), 0o644, 0
      self._tar.addfile(info, io.BytesIO(data))
    self._count += 1

  def _open(self):
    self.close()
    path = os.path.join(self.folder, f'{self.prefix}{len(self.paths):05d}.tar')
    self._tar, self._count = tarfile.open(path, 'w', format=tarfile.USTAR_FORMAT), 0
    self.paths.append(path)

  def close(self):
    if self._tar is not None:
      self._tar.close()
      self._tar = None

  def pattern(self) -> str:
    last = len(self.paths) - 1
    return os.path.join(self.folder, f'{self.prefix}{{00000..{last:05d}}}.tar')

