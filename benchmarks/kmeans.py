"""K-means: clipjax (JAX, tiled distances) against faiss-cpu (the official ProtoCLIP
library) on the same points, initial centroids, iterations and threads.

  python benchmarks/kmeans.py                       # 200k x 128, K=20,000, 20 iterations
  python benchmarks/kmeans.py --points 20000 --k 2000
  python benchmarks/kmeans.py --tiles               # the assignment's tile loop, by part

Each implementation runs in its own process, timed from after its imports (clipjax's time
includes compiling; peak memory is that process's maximum RSS, input data included).
faiss is not a clipjax dependency (`pip install faiss-cpu`); without it only clipjax is
timed. Inertia is the sum of squared distances of every point to its nearest final
centroid, computed the same way for both. GFLOP/s counts the distance matrix products
alone (iterations + 1 assignments of 2 * N * K * D): what bounds both.
"""
import argparse
import functools
import json
import os
import subprocess
import sys

import numpy as np

RUN = r'''
import json, resource, sys, time
import numpy as np
impl, path, k, iterations, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
data = np.load(path)
x, init = data['points'], data['init']
if impl == 'faiss':
  import faiss
  faiss.omp_set_num_threads(threads)
else:
  from clipjax.kmeans import kmeans
t = time.perf_counter()
if impl == 'faiss':
  km = faiss.Kmeans(x.shape[1], k, niter=iterations, nredo=1, max_points_per_centroid=1 << 30,
                    min_points_per_centroid=1)
  km.train(x, init_centroids=init)
  dist, _ = km.index.search(x, 1)
  inertia = float(dist.astype(np.float64).sum())
else:
  inertia = kmeans(x, k, iterations=iterations, init=init).inertia
seconds = time.perf_counter() - t
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
print(json.dumps(dict(seconds=seconds, inertia=inertia, peak_gb=peak_gb)))
'''


def points(n, dim, seed=0):
  """Unit vectors around 5,000 directions: what projected, normalised features look like."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((5000, dim)).astype(np.float32)
  x = centres[rng.integers(0, 5000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def tiles(args, point_tile=1024, centroid_tile=1024, repeats=7):
  """The assignment's tile loop over 16 point tiles and --k centroids in tiles of equal
  size (as clipjax.kmeans splits them), --dim, centroids pre-scaled by -2, in both layouts
  of a tile: [points, centroids] reduced along its rows and [centroids, points] down its
  columns (clipjax's). Each reduces the matmul to its min, then adds the index by
  jnp.argmin, by argmax of equality or by an integer min (clipjax's). XLA CPU, all of this
  process's threads; --points, --iterations and --threads do not apply."""
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  centroid_tile = -(-args.k // -(-args.k // min(centroid_tile, args.k)))
  k = -(-args.k // centroid_tile) * centroid_tile
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((16 * point_tile, args.dim), np.float32))
  c = jnp.asarray(rng.standard_normal((k, args.dim), np.float32))
  index = {
      'min': None,
      'min + jnp.argmin': lambda d, m, axis: jnp.argmin(d, axis).astype(jnp.int32),
      'min + argmax(d == min)':
          lambda d, m, axis: jnp.argmax(d == jnp.expand_dims(m, axis), axis).astype(jnp.int32),
      'min + integer min': lambda d, m, axis: jnp.min(jnp.where(
          d == jnp.expand_dims(m, axis), jax.lax.broadcasted_iota(jnp.int32, d.shape, axis),
          centroid_tile), axis),
  }

  def loop(axis, name, x, c):
    cn = jnp.sum(c * c, 1).reshape(-1, centroid_tile)
    scaled = (-2.0 * c).reshape(-1, centroid_tile, c.shape[1])

    def per_tile(xt):
      def body(carry, tile):
        ct, cnt = tile
        if axis == 1:  # [points, centroids]
          d = cnt[None] + jnp.dot(xt, ct.T, precision='highest')
        else:  # [centroids, points]
          d = cnt[:, None] + jnp.dot(ct, xt.T, precision='highest')
        m = jnp.min(d, axis)
        a = index[name](d, m, axis) if index[name] else jnp.zeros_like(m, jnp.int32)
        return carry + m + a, None
      return jax.lax.scan(body, jnp.zeros(point_tile), (scaled, cn))[0]
    return jax.lax.map(per_tile, x.reshape(-1, point_tile, x.shape[1]))

  flops = 2 * x.shape[0] * k * args.dim
  print(f'{x.shape[0]} points x {k} centroids x {args.dim}, tiles {point_tile} x {centroid_tile}')
  print('| tile, reduced | reduction | ms | GFLOP/s | the index adds (vs min alone) |')
  print('|---|---|---|---|---|')
  for axis, layout in ((1, '[points, centroids], along rows'),
                       (0, '[centroids, points], down columns')):
    times = {}
    for name in index:
      f = jax.jit(functools.partial(loop, axis, name))
      jax.block_until_ready(f(x, c))
      best = np.inf
      for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x, c))
        best = min(best, time.perf_counter() - t)
      times[name] = best
      added = f'{best / times["min"] - 1:.2f}x' if name != 'min' else ''
      print(f'| {layout} | {name} | {best * 1e3:.0f} | {flops / best / 1e9:.0f} | {added} |')


def run(impl, path, args):
  env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), JAX_PLATFORMS='cpu',
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, '-c', RUN, impl, path, str(args.k), str(args.iterations),
                         str(args.threads)], capture_output=True, text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f'{impl} failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--points', type=int, default=200_000)
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--k', type=int, default=20_000)
  p.add_argument('--iterations', type=int, default=20)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--out', default='/tmp/clipjax_kmeans_bench.npz')
  p.add_argument('--tiles', action='store_true', help='time the assignment loop by part')
  args = p.parse_args()
  if args.tiles:
    return tiles(args)
  x = points(args.points, args.dim)
  init = x[np.random.default_rng(1).choice(len(x), args.k, replace=False)]
  np.savez(args.out, points=x, init=init)
  try:
    import faiss  # pylint: disable=g-import-not-at-top,unused-import
    impls = ['faiss', 'clipjax']
  except ImportError:
    print('faiss-cpu is not installed (pip install faiss-cpu): timing clipjax alone')
    impls = ['clipjax']
  print(f'{args.points} x {args.dim} points, K={args.k}, {args.iterations} iterations, '
        f'{args.threads} threads, same initial centroids')
  print('| implementation | seconds | GFLOP/s | peak GB | inertia | time vs faiss |')
  print('|---|---|---|---|---|---|')
  flops = (args.iterations + 1) * 2 * args.points * args.k * args.dim
  results = {}
  for impl in impls:
    results[impl] = r = run(impl, args.out, args)
    ratio = f'{r["seconds"] / results["faiss"]["seconds"]:.2f}x' if 'faiss' in results else ''
    print(f'| {impl} | {r["seconds"]:.1f} | {flops / r["seconds"] / 1e9:.0f} | '
          f'{r["peak_gb"]:.2f} | {r["inertia"]:.6g} | {ratio} |', flush=True)
  os.remove(args.out)


if __name__ == '__main__':
  main()
