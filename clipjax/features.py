"""A jitted function over chosen samples of a source, sharded over the mesh and every
process: ProtoCLIP's episode features, and the same pass for analyses outside training.

Every process reads its rows of each global batch (as the training pipeline's 'batch'
split) and every sample's transform rng is a function of (seed, its position in
`indices`) alone, so the result does not depend on the number of processes or devices.
"""
import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from clipjax import sharding
from clipjax.data.sources import SKIP_KEY, BadSample


class _Rows:
  """This process's transformed samples: row k is `indices[positions[k]]`, its rng a
  function of its position (picklable)."""

  def __init__(self, source, transform, indices, positions, seed: int):
    self.source, self.transform, self.seed = source, transform, seed
    self.indices, self.positions = indices, positions

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, k: int):
    position = int(self.positions[k])
    record = self.source[int(self.indices[position])]
    if SKIP_KEY in record:
      return None
    try:
      return self.transform(record, np.random.default_rng([self.seed, int(position)]))
    except BadSample:
      return None


def feature_pass(fn, args: tuple, source, transform, indices, *, mesh, batch_size: int,
                 example: dict, seed: int = 0, read_threads: int = 16) -> dict:
  """`fn(*args, batch) -> {name: [B, ...]}` over `transform(source[i], rng)` for i in
  `indices`, in global batches of `batch_size` split over the mesh's batch axes.

  `fn` is jitted here (pass the same object to reuse its compilation); `args` are its
  device arrays (a train state). `example`: one row of zeros with the transform's keys,
  shapes and dtypes, which stands in for skipped samples. Every process gets
  {name: np.ndarray [len(indices), ...]} in the order of `indices`, plus 'valid' (bool):
  False where a sample could not be read (its rows hold fn's output on zeros).
  """
  if not hasattr(source, '__getitem__') or hasattr(source, 'shards'):
    raise ValueError(f'feature_pass needs a random-access source (synthetic, csv, '
                     f'array_record), got {source!r}')
  count, index = jax.process_count(), jax.process_index()
  if batch_size % count:
    raise ValueError(f'feature_pass batch_size={batch_size} is not divisible by '
                     f'{count} processes')
  indices = np.asarray(indices, np.int64)
  n = len(indices)
  batches = -(-n // batch_size)
  padded = np.concatenate([indices, np.full(batches * batch_size - n, indices[0] if n else 0)])
  rows = batch_size // count
  positions = [b * batch_size + index * rows + r for b in range(batches) for r in range(rows)]
  reader = grain.MapDataset.source(_Rows(source, transform, padded, positions, seed))
  reader = reader.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                    prefetch_buffer_size=2 * rows))
  jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, P()))
  outputs, valid = [], []
  it = iter(reader)
  for _ in range(batches):
    local = [next(it) for _ in range(rows)]
    valid.append([row is not None for row in local])
    local = [example if row is None else row for row in local]
    batch = {k: np.stack([np.asarray(row[k]) for row in local]) for k in example}
    out = jitted(*args, sharding.global_batch(batch, mesh))
    outputs.append(jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), out))
  valid = np.asarray(valid, bool).reshape(batches, rows)
  if count > 1:  # [process, batch, row] -> the global order
    valid = np.swapaxes(multihost_utils.process_allgather(valid), 0, 1)
  result = {k: np.concatenate([o[k] for o in outputs])[:n] for k in (outputs[0] if outputs else {})}
  result['valid'] = valid.reshape(-1)[:n]
  return result
