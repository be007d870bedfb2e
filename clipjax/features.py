"""A jitted function over chosen samples of a source, sharded over the mesh and every
process: ProtoCLIP's episode features, and the same pass for analyses outside training.

Every process reads exactly the rows of each global batch that its devices hold, and every
sample's transform rng is a function of (seed, its position in `indices`) alone, so the
result does not depend on the number of processes or devices, nor on how the mesh lays
the batch out over them.
"""
import functools

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from clipjax import sharding
from clipjax.data import device_resize
from clipjax.data.pipeline import Apply
from clipjax.data.sources import SKIP_KEY

VALID = '_valid'


class _Rows:
  """This process's transformed samples: element k is `indices[positions[k]]`, its rng a
  function of its position; None for a sample that could not be read (picklable)."""

  def __init__(self, source, transform, indices, positions, seed: int):
    self.source, self.apply, self.seed = source, Apply(transform), seed
    self.indices, self.positions = indices, positions

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, k: int):
    position = int(self.positions[k])
    row = self.apply(self.source[int(self.indices[position])],
                     np.random.default_rng([self.seed, position]))
    return None if SKIP_KEY in row else row


@functools.lru_cache(maxsize=32)
def _compiled(fn, mesh):
  """fn and the batch's validity, both gathered to every device (compiled once per fn)."""
  def run(args, batch):
    valid = batch.pop(VALID)
    return fn(*args, device_resize.finish(batch)), valid
  return jax.jit(run, out_shardings=NamedSharding(mesh, P()))


def feature_pass(fn, args: tuple, source, transform, indices, *, mesh, batch_size: int,
                 example: dict, seed: int = 0, read_threads: int = 0) -> dict:
  """`fn(*args, batch) -> {name: [B, ...]}` over `transform(source[i], rng)` for i in
  `indices`, in global batches of `batch_size` split over the mesh's batch axes.

  `fn` is jitted here, once (pass the same object again to reuse its compilation);
  `args` are its device arrays (a train state). `example`: one row of zeros with the
  transform's keys, shapes and dtypes, which stands in for samples that cannot be read.
  Every process gets {name: np.ndarray [len(indices), ...]} in the order of `indices`,
  plus 'valid' (bool): False where a sample could not be read (its rows hold fn's output
  on zeros). Each batch is computed while the next one is read (a ProtoCLIP quickstart
  episode whose samples are kept: 1.12-1.32 s, against 1.85-1.90 s reading and computing
  in turn). `read_threads` > 0 reads ahead in that many threads (grain's), which pays
  where reading releases the GIL (JPEG decode) and costs where it does not: the episode
  takes 5.2-5.7 s with 16 threads against 2.0-2.7 s with none, 3.1-3.4 s against 1.1-1.3 s
  once its samples are kept (`python benchmarks/protoclip_episode.py`, two to four runs on
  2 cores, 2026-12-02).
  """
  if not hasattr(source, '__getitem__') or hasattr(source, 'shards'):
    raise ValueError(f'feature_pass needs a random-access source (synthetic, csv, '
                     f'array_record), got {source!r}')
  placement = sharding.batch_sharding(mesh)
  held = sorted({row for index in placement.addressable_devices_indices_map(
      (batch_size,)).values() for row in range(batch_size)[index[0]]})
  indices = np.asarray(indices, np.int64)
  n = len(indices)
  if not n:
    raise ValueError('feature_pass was given no indices: nothing to embed')
  batches = -(-n // batch_size)
  padded = np.concatenate([indices, np.full(batches * batch_size - n, indices[0])])
  positions = [b * batch_size + r for b in range(batches) for r in held]
  reader = grain.MapDataset.source(_Rows(source, transform, padded, positions, seed))
  reader = iter(reader.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=2 * len(held))))
  example = dict(example, **{VALID: np.bool_(False)})
  local = lambda x: np.asarray(x.addressable_data(0))
  fetch = lambda computed: (jax.tree_util.tree_map(local, computed[0]), local(computed[1]))
  outputs, pending = [], None
  for b in range(batches):
    rows = {}
    for r in held:
      row = next(reader)
      ok = row is not None and b * batch_size + r < n
      rows[r] = dict(row, **{VALID: np.bool_(True)}) if ok else example
    batch = {key: jax.make_array_from_callback(
        (batch_size,) + np.shape(value), placement,
        lambda index, key=key: np.stack([rows[r][key] for r in range(batch_size)[index[0]]]))
             for key, value in example.items()}
    computed = _compiled(fn, mesh)(args, batch)  # runs while the next batch is read
    if pending is not None:
      outputs.append(fetch(pending))
    pending = computed
  outputs.append(fetch(pending))  # n > 0: at least one batch
  result = {k: np.concatenate([o[k] for o, _ in outputs])[:n] for k in outputs[0][0]}
  result['valid'] = np.concatenate([v for _, v in outputs])[:n]
  return result
