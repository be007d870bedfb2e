"""Subset manifests: which samples of a random-access source a run trains on (what a data
reduction such as TL;DR writes), read by the pipeline through `data.subset`.

A manifest is JSON: {'num_samples': N of the source it was made from, 'indices': sorted
sample indices, ...anything else the writer records (its data, config, rates)}. The
source's length is checked against it: a manifest of other data of another size is
refused (one of the same size is not detected).
"""
import json
import os

import numpy as np


def write_manifest(path: str, indices, num_samples: int, **info) -> None:
  """Atomically (a killed writer leaves the previous file or none, never half of one)."""
  indices = np.unique(np.asarray(indices, np.int64))
  if len(indices) and not 0 <= indices[0] <= indices[-1] < num_samples:
    raise ValueError(f'{path}: indices outside [0, {num_samples})')
  body = dict(info, num_samples=int(num_samples), indices=indices.tolist())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(body, f)
  os.replace(path + '.tmp', path)


def read_manifest(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'data.subset={path!r}: no such manifest')
  with open(path, encoding='utf-8') as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'data.subset={path!r} is not valid JSON: {e}') from None
  for key in ('num_samples', 'indices'):
    if key not in manifest:
      raise KeyError(f'data.subset={path!r} has no {key!r}: not a subset manifest')
  return manifest


class Subset:
  """The samples of `source` (random access) that the manifest at `path` keeps."""

  def __init__(self, source, path: str):
    if not hasattr(source, '__getitem__') or hasattr(source, 'shards'):
      raise ValueError(f'data.subset={path!r} needs a random-access source (synthetic, csv, '
                       f'array_record), got {source!r}')
    manifest = read_manifest(path)
    if manifest['num_samples'] != len(source):
      raise ValueError(f'data.subset={path!r} was made from {manifest["num_samples"]} samples; '
                       f'the source {source!r} has {len(source)}')
    self.source, self.path = source, path
    self.indices = np.asarray(manifest['indices'], np.int64)
    if not len(self.indices):
      raise ValueError(f'data.subset={path!r} keeps no samples')
    if self.indices[0] < 0 or self.indices[-1] >= len(source):
      raise ValueError(f'data.subset={path!r}: indices outside [0, {len(source)})')

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[int(self.indices[index])]

  def __getattr__(self, name):
    """`caption(i)` and `raw(i)` of the kept samples, where the source has them."""
    source = self.__dict__.get('source')
    if name in ('caption', 'raw') and hasattr(source, name):
      read = getattr(source, name)
      return lambda index: read(int(self.indices[index]))
    raise AttributeError(name)

  def captions(self, num: int) -> list:
    out = []
    for i in self.indices:
      record = self.source[int(i)]
      if 'caption' in record:
        out.append(record['caption'])
      if len(out) >= num:
        break
    return out

  def __repr__(self) -> str:
    return f'Subset({self.source!r}, {self.path!r}: {len(self)} samples)'
