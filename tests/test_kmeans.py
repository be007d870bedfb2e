"""K-means on the mesh: scikit-learn's Lloyd from the same start, tiling, empty clusters,
restarts and sharding do not change the answer."""
import json

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from clipjax.kmeans import kmeans

POINTS, _ = make_blobs(3000, 16, centers=30, cluster_std=2.0, random_state=0)
POINTS = POINTS.astype(np.float32)
START = POINTS[np.random.default_rng(0).choice(len(POINTS), 40, replace=False)]


def inertia(points, centroids):
  d = ((points[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
  return d.min(1).sum(), d.argmin(1)


def test_matches_scikit_learn_from_the_same_start():
  ours = kmeans(POINTS, 40, iterations=20, init=START)
  ref = KMeans(40, init=START, n_init=1, max_iter=20, tol=0, algorithm='lloyd').fit(POINTS)
  assert abs(ours.inertia / ref.inertia_ - 1) < 0.01, (ours.inertia, ref.inertia_)
  # The result is self-consistent: labels are the nearest final centroids.
  want, labels = inertia(POINTS, ours.centroids)
  np.testing.assert_allclose(ours.inertia, want, rtol=1e-4)
  assert (ours.labels == labels).mean() > 0.999


def test_tiles_and_padding_do_not_change_the_answer():
  """Tiles that divide neither the points nor the centroids (padding on both)."""
  big = kmeans(POINTS, 40, iterations=5, init=START)
  small = kmeans(POINTS, 40, iterations=5, init=START, point_tile=448, centroid_tile=16)
  assert (big.labels == small.labels).mean() > 0.999
  np.testing.assert_allclose(big.centroids, small.centroids, atol=1e-4)


def test_ties_go_to_the_first_centroid_as_argmin():
  """Duplicate centroids inside one tile and across tiles: the lowest index wins."""
  start = START.copy()
  start[[3, 11, 27]] = start[2]  # 2, 3 share a tile of 8; 11 and 27 lie in later tiles
  ours = kmeans(POINTS, 40, iterations=0, init=start, point_tile=512, centroid_tile=8)
  _, labels = inertia(POINTS, start)  # float64: may differ from float32 in a near-tie
  assert (ours.labels == labels).mean() > 0.999
  np.testing.assert_array_equal(ours.labels[labels == 2], 2)
  assert (labels == 2).sum() > 10 and not np.isin(ours.labels, [3, 11, 27]).any()


def test_empty_clusters_move_to_the_farthest_points():
  start = START.copy()
  start[1] = start[0]  # a duplicate: one of the two gets no points at the first step
  far = np.full((1, 16), 1e3, np.float32)  # far from every point: stays empty
  start = np.concatenate([start[:-1], far])
  result = kmeans(POINTS, 40, iterations=3, init=start)
  assert len(np.unique(result.labels)) == 40
  fresh = kmeans(POINTS, 40, iterations=0, init=start)
  assert len(np.unique(fresh.labels)) < 40


def test_restarts_keep_the_best_and_kmeans_plus_plus_starts_better():
  single = [kmeans(POINTS, 40, iterations=3, seed=s).inertia for s in range(3)]
  best = kmeans(POINTS, 40, iterations=3, restarts=3, seed=0).inertia
  assert best <= min(single[:1])
  random_start = kmeans(POINTS, 40, iterations=0, init='random', seed=1).inertia
  plus_plus = kmeans(POINTS, 40, iterations=0, init='kmeans++', seed=1).inertia
  assert plus_plus < 0.7 * random_start, (plus_plus, random_start)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='k=5000'):
    kmeans(POINTS, 5000)
  with pytest.raises(ValueError, match="init='farthest'"):
    kmeans(POINTS, 4, init='farthest')
  with pytest.raises(ValueError, match=r'\(4, 16\)'):
    kmeans(POINTS, 4, init=START)


SHARDED = r'''
import json, jax, numpy as np
from tests.test_kmeans import POINTS, START
from clipjax import sharding
from clipjax.kmeans import kmeans
ref = kmeans(POINTS[:2999], 40, iterations=10, init=START)
out = []
for shape in (dict(data=2, fsdp=2, tensor=2), dict(data=8)):  # two batch axes, and one
  mesh = sharding.make_mesh(**shape)
  eight = kmeans(POINTS[:2999], 40, iterations=10, init=START, mesh=mesh, point_tile=256)
  out.append(dict(agree=float((eight.labels == ref.labels).mean()),
                  inertia=[eight.inertia, ref.inertia],
                  centroids=float(np.abs(eight.centroids - ref.centroids).max())))
print(json.dumps(out))
'''


@pytest.mark.slow
def test_sharded_over_eight_devices_equals_one(python_subprocess):
  for out in json.loads(python_subprocess(SHARDED, devices=8).strip().splitlines()[-1]):
    assert out['agree'] > 0.999, out
    np.testing.assert_allclose(*out['inertia'], rtol=1e-5)
    assert out['centroids'] < 1e-4, out
