"""K-means (Lloyd) in JAX over a device mesh: ProtoCLIP's prototypes, TL;DR's clusters.

The points are split over the mesh's batch axes (`data`, `fsdp`); every device assigns
its own points to the centroids in tiles of `point_tile` x `centroid_tile` distances, so no
N x K matrix exists (K may be tens of thousands), and the per-cluster sums and counts are
summed over devices. Empty clusters are moved to the points farthest from their centroids
(as scikit-learn does). Restarts keep the lowest inertia (faiss's `nredo`).

Inits: 'random' (k distinct points, faiss's), 'kmeans++' (D^2 sampling, one candidate per
draw: Arthur & Vassilvitskii; scikit-learn's greedy variant tries several), or an array.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clipjax import sharding

BATCH_AXES = sharding.BATCH_AXES


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  centroids: np.ndarray  # [K, D] float32
  labels: np.ndarray     # [N] int32, nearest final centroid
  inertia: float         # sum of squared distances to it


def _assign(x, valid, c, point_tile: int, centroid_tile: int):
  """Nearest centroid of every row of x -> (squared distance, index); tiles only.

  x: [n, D] (n a multiple of point_tile); c: [k, D] (k a multiple of centroid_tile; rows
  of padding have an enormous norm). ||x||^2 is added back at the end. A tile's argmin is its
  min, then the smallest index equal to it by an integer min: XLA's CPU argmin is a (value,
  index) reduction that adds about 3.4x the time of the tiles' matmul and min, in either
  layout (`benchmarks/kmeans.py --tiles`). Tiles are [centroids, points], reduced down
  their columns, and the centroids come scaled by -2 (exact but for overflow and
  subnormals): 5 Lloyd iterations on the benchmark's 200k x 128, K = 20,000 took 22.8-25.8 s
  against 29.2-33.4 s for this code with its tiles transposed back to [points, centroids],
  and 23.3-25.4 s against 26.1-27.3 s for the code before these changes (`python
  benchmarks/kmeans.py --iterations 5`; two sessions of 3 alternating runs of each, 2-core
  AMD EPYC VM, 2026-12-03).
  """
  cn = jnp.sum(c * c, axis=1)
  cs, cns = (-2.0 * c).reshape(-1, centroid_tile, c.shape[1]), cn.reshape(-1, centroid_tile, 1)
  offsets = jnp.arange(cs.shape[0], dtype=jnp.int32) * centroid_tile
  rows = jnp.arange(centroid_tile, dtype=jnp.int32)[:, None]

  def per_tile(xt):
    def body(carry, tile):
      best, arg = carry
      ct, cnt, offset = tile
      d = cnt + jnp.dot(ct, xt.T, precision=jax.lax.Precision.HIGHEST)
      m = jnp.min(d, axis=0)
      a = jnp.min(jnp.where(d == m[None], rows, centroid_tile), axis=0) + offset
      better = m < best
      return (jnp.where(better, m, best), jnp.where(better, a, arg)), None
    init = (jnp.full(xt.shape[:1], jnp.inf, jnp.float32), jnp.zeros(xt.shape[:1], jnp.int32))
    (best, arg), _ = jax.lax.scan(body, init, (cs, cns, offsets))
    return best, arg

  best, arg = jax.lax.map(per_tile, x.reshape(-1, point_tile, x.shape[1]))
  dist = jnp.maximum(best.reshape(-1) + jnp.sum(x * x, axis=1), 0.0)
  return jnp.where(valid, dist, 0.0), arg.reshape(-1)


def _lloyd(x, valid, c, *, k, iterations, point_tile, centroid_tile, axes):
  """Per device: `iterations` Lloyd steps from centroids c, then the final assignment."""
  psum = (lambda v: jax.lax.psum(v, axes)) if axes else (lambda v: v)
  gather = (lambda v: jax.lax.all_gather(v, axes, tiled=True)) if axes else (lambda v: v)
  weights = valid.astype(jnp.float32)
  padded = c.shape[0]
  real = jnp.arange(padded) < k
  far = min(k, x.shape[0])

  def step(_, c):
    dist, labels = _assign(x, valid, c, point_tile, centroid_tile)
    sums = psum(jax.ops.segment_sum(x * weights[:, None], labels, padded))
    counts = psum(jax.ops.segment_sum(weights, labels, padded))
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)
    empty = (counts == 0) & real

    def relocate(new):
      # The farthest points overall: each device's `far` farthest, then the best of those.
      d, idx = jax.lax.top_k(jnp.where(valid, dist, -1.0), far)
      d, pts = gather(d), gather(x[idx])
      order = jnp.argsort(-d)
      rank = jnp.cumsum(empty) - 1
      return jnp.where(empty[:, None], pts[order[jnp.clip(rank, 0, far - 1)]], new)

    new = jax.lax.cond(jnp.any(empty), relocate, lambda n: n, new)
    return jnp.where(real[:, None], new, c)

  c = jax.lax.fori_loop(0, iterations, step, c)
  dist, labels = _assign(x, valid, c, point_tile, centroid_tile)
  return c, labels, psum(jnp.sum(dist))


@functools.lru_cache(maxsize=16)
def _compiled(mesh, axes, k, iterations, point_tile, centroid_tile):
  """The jitted Lloyd run for one problem shape (episodes reuse it); the points are split
  over the mesh axes `axes` (a tuple: PartitionSpec writes a single axis as its name)."""
  spec = P(axes) if axes else P()
  return jax.jit(jax.shard_map(
      functools.partial(_lloyd, k=k, iterations=iterations, point_tile=point_tile,
                        centroid_tile=centroid_tile, axes=axes),
      mesh=mesh, in_specs=(spec, spec, P()), out_specs=(P(), spec, P()), check_vma=False))


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """D^2 sampling on the host, distances in float64 (one candidate per centroid)."""
  x = np.asarray(points, np.float64)
  centroids = [x[rng.integers(len(x))]]
  closest = np.sum((x - centroids[0]) ** 2, axis=1)
  for _ in range(1, k):
    total = closest.sum()
    i = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
    centroids.append(x[i])
    closest = np.minimum(closest, np.sum((x - x[i]) ** 2, axis=1))
  return np.asarray(centroids, np.float32)


def kmeans(points, k: int, *, iterations: int = 20, restarts: int = 1, init='random',
           seed: int = 0, mesh=None, point_tile: int = 1024,
           centroid_tile: int = 1024) -> KMeansResult:
  """K-means of `points` [N, D] (host array, the same on every process) into k clusters.

  `mesh`: split the points over its batch axes (default: this process's first device).
  Returns host arrays; every process gets the same result.
  """
  points = np.asarray(points, np.float32)
  n, dim = points.shape
  if not 0 < k <= n:
    raise ValueError(f'kmeans: k={k} must be in [1, number of points={n}]')
  if isinstance(init, str) and init not in ('random', 'kmeans++'):
    raise ValueError(f"kmeans: init={init!r}; use 'random', 'kmeans++' or an array")
  if mesh is None:
    mesh = jax.make_mesh((1, 1), BATCH_AXES, devices=jax.local_devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  shards = math.prod(mesh.shape[a] for a in axes)
  point_tile = min(point_tile, -(-n // shards))
  # Tiles of equal size: K = 20,000 in 20 tiles of 1,000, not 20,480 padded ones of 1,024.
  centroid_tile = -(-k // -(-k // min(centroid_tile, k)))
  per_device = -(-n // (shards * point_tile)) * point_tile
  x = np.zeros((shards * per_device, dim), np.float32)
  x[:n] = points
  valid = np.arange(len(x)) < n
  padded_k = -(-k // centroid_tile) * centroid_tile
  spec = P(axes) if axes else P()
  run = _compiled(mesh, axes, k, iterations, point_tile, centroid_tile)
  placement = jax.sharding.NamedSharding(mesh, spec)
  x_dev, valid_dev = (jax.make_array_from_callback(a.shape, placement, lambda i, a=a: a[i])
                      for a in (x, valid))
  rng = np.random.default_rng(seed)
  best = None
  for _ in range(restarts):
    if isinstance(init, str):
      start = (points[rng.choice(n, k, replace=False)] if init == 'random'
               else _kmeans_plus_plus(points, k, rng))
    else:
      start = np.asarray(init, np.float32)
      if start.shape != (k, dim):
        raise ValueError(f'kmeans: init centroids have shape {start.shape}, want {(k, dim)}')
    c = np.zeros((padded_k, dim), np.float32)
    c[:k] = start
    if padded_k > k:  # padding rows never win: an enormous norm
      c[k:] = np.sqrt(np.finfo(np.float32).max) / 4
    centroids, labels, inertia = run(x_dev, valid_dev, c)
    inertia = float(jax.device_get(inertia))
    if best is None or inertia < best.inertia:
      best = KMeansResult(np.asarray(sharding.fetch(centroids))[:k],
                          np.asarray(sharding.fetch(labels))[:n], inertia)
  return best
