"""Text vectors computed offline (FLAME's frozen-LLM facets, `clipjax.embed`), stored
in parts beside the training data and joined to its records by key.

A part is `<n>.keys.npy` (the samples' keys: a shard record's `__key__`, a random-access
sample's index as a string) and `<n>.vectors.npy` (float16 [N, K, D], memory-mapped when
read, so a store far larger than RAM serves random reads). The vectors file is written
first and the keys file last, each atomically: a part whose keys exist is complete.
"""
import json
import os
from pathlib import Path

import numpy as np

from clipjax.data import parts

KEYS, VECTORS = '.keys.npy', '.vectors.npy'


def sample_key(record: dict) -> str:
  """The key a record's precomputed vectors are stored under."""
  if 'key' in record:
    return str(record['key'])
  if 'index' in record:
    return str(int(record['index']))
  raise KeyError('record has neither "key" (shards) nor "index" (random-access sources) '
                 'to join precomputed text vectors by')


def _save(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
  with open(tmp, 'wb') as f:
    np.save(f, array)
  os.replace(tmp, path)


def part_done(folder, n: int) -> bool:
  return (Path(folder) / f'{n:06d}{KEYS}').exists()


def write_part(folder, n: int, keys, vectors: np.ndarray) -> None:
  """Part `n`: keys [N] (strings) and vectors [N, K, D] (stored as float16)."""
  folder = Path(folder)
  if len(keys) != len(vectors):
    raise ValueError(f'part {n}: {len(keys)} keys for {len(vectors)} vectors')
  _save(folder / f'{n:06d}{VECTORS}', np.asarray(vectors, np.float16))
  _save(folder / f'{n:06d}{KEYS}', np.asarray(keys, dtype=str))


class TextFeatures:
  """key -> float16 [K, D], over every complete part of an embedding job's workdir.
  Picklable (grain workers reopen the files); the index is built on first use."""

  def __init__(self, folder: str):
    self.folder = Path(folder)
    job = self.folder / parts.JOB_FILE
    if not job.exists():
      raise FileNotFoundError(f'{job}: not an embedding job workdir (data.text_features='
                              f'{folder!r}); run `python -m clipjax.embed` first')
    self.job = json.loads(job.read_text())
    self.shape = tuple(self.job['vectors_shape'])
    self._index = self._vectors = None

  def _open(self) -> None:
    names = sorted(p.name[:-len(KEYS)] for p in self.folder.glob(f'*{KEYS}'))
    if not names:
      raise FileNotFoundError(f'{self.folder}: the embedding job has written no parts yet')
    self._vectors, self._index = [], {}
    for n, name in enumerate(names):
      keys = np.load(self.folder / f'{name}{KEYS}').tolist()
      self._vectors.append(np.load(self.folder / f'{name}{VECTORS}', mmap_mode='r'))
      before = len(self._index)
      self._index.update((k, (n, row)) for row, k in enumerate(keys))
      if len(self._index) != before + len(keys):
        raise ValueError(f'{self.folder / (name + KEYS)}: keys repeated within the part or '
                         'from earlier parts; every sample needs a key of its own')

  def __len__(self) -> int:
    if self._index is None:
      self._open()
    return len(self._index)

  def __contains__(self, key: str) -> bool:
    if self._index is None:
      self._open()
    return key in self._index

  def __getitem__(self, key: str) -> np.ndarray:
    if self._index is None:
      self._open()
    part, row = self._index[key]
    return np.array(self._vectors[part][row])

  def __getstate__(self):
    return {'folder': self.folder, 'job': self.job, 'shape': self.shape,
            '_index': None, '_vectors': None}
