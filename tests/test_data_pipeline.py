"""grain training pipeline: batches, epochs, process/worker splits, exact resume."""
import json

import numpy as np
import pytest

from clipjax.data import pipeline, shapes, transforms
from clipjax.data.tokenizer import Tokenizer

N = 96
SOURCE = shapes.ShapesSource('train', N, 32, seed=0)
TOK = Tokenizer.train(SOURCE.captions(), vocab_size=512)


def loader(batch=16, seed=0, augment=None, extra_keys=('index',), canvas_size=0, **kw):
  return pipeline.make_train_loader(
      SOURCE, transforms.ImageText(TOK, 24, 32, augment=augment, extra_keys=extra_keys,
                                   canvas_size=canvas_size),
      global_batch_size=batch, seed=seed, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batch_contents_shapes_and_dtypes():
  batch = next(loader(batch=8))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['text'].shape == (8, 24) and batch['text'].dtype == np.int32
  for row, i in enumerate(batch['index']):
    rec = SOURCE[i]
    ref = (rec['image'] / 255.0 - np.asarray(transforms.CLIP_MEAN)) / np.asarray(transforms.CLIP_STD)
    np.testing.assert_allclose(batch['image'][row], ref, atol=1e-6)
    np.testing.assert_array_equal(batch['text'][row], TOK([rec['caption']], 24)[0])
  assert set(next(loader(batch=8, extra_keys=()))) == {'image', 'text'}


def test_epochs_cover_source_and_reshuffle():
  batches = take(loader(batch=16), 2 * N // 16)
  idx = np.concatenate([b['index'] for b in batches])
  first, second = idx[:N], idx[N:]
  assert sorted(first) == list(range(N)) and sorted(second) == list(range(N))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(N))


def test_deterministic_from_seed_with_augmentation():
  aug = {'scale': (0.5, 1.0)}
  a, b = take(loader(augment=aug), 3), take(loader(augment=aug), 3)
  assert_same(a, b)
  c = take(loader(augment=aug, seed=1), 3)
  assert not np.array_equal(a[0]['index'], c[0]['index'])
  # Same sample in a later epoch gets a different crop.
  batches = take(loader(augment=aug), 2 * N // 16)
  seen = {}
  for b in batches:
    for img, i in zip(b['image'], b['index']):
      seen.setdefault(int(i), []).append(img)
  assert all(not np.array_equal(*views) for views in seen.values())


@pytest.mark.parametrize('canvas_size', [0, 40])  # 40: crops resized in the step
def test_resume_is_exact_single_process(canvas_size):
  aug = {'scale': (0.5, 1.0)}
  reference = take(loader(augment=aug, canvas_size=canvas_size), 12)
  it = loader(augment=aug, canvas_size=canvas_size)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  resumed = loader(augment=aug, canvas_size=canvas_size)
  resumed.set_state(state)
  assert_same(take(resumed, 7), reference[5:])


AUG = {'scale': (0.5, 1.0)}


@pytest.mark.parametrize('canvas_size,workers', [(0, 2), (40, 3)])
def test_resume_is_exact_with_workers(canvas_size, workers):
  """Workers resume exactly and give the batches of no workers, whatever their count."""
  it = loader(augment=AUG, worker_count=workers, canvas_size=canvas_size)
  first = take(it, 4)
  state = json.loads(json.dumps(it.get_state()))
  reference = take(it, 6)
  it.close()
  resumed = loader(augment=AUG, worker_count=workers, canvas_size=canvas_size)
  resumed.set_state(state)
  assert_same(take(resumed, 6), reference)
  resumed.close()
  single = loader(augment=AUG, canvas_size=canvas_size)
  assert_same(first + reference, take(single, 10))
  with pytest.raises(ValueError, match=f'data.num_workers={workers}, and this run has 0'):
    single.set_state(state)  # grain keeps a position per worker


def test_processes_read_disjoint_samples_covering_the_epoch():
  """Process split is independent of workers: process 0 uses two, process 1 none."""
  per_process = []
  for p, workers in ((0, 2), (1, 0)):
    it = loader(batch=16, process_index=p, process_count=2, worker_count=workers)
    batches = take(it, N // 16)
    it.close()
    assert all(b['image'].shape[0] == 8 for b in batches)
    per_process.append(np.concatenate([b['index'] for b in batches]))
  assert not set(per_process[0]) & set(per_process[1])
  assert sorted(np.concatenate(per_process)) == list(range(N))


class _FlakySource:
  """Every fifth record is marked bad, alternating two reasons."""

  def __len__(self):
    return N

  def __getitem__(self, i):
    if i % 5 == 0:
      return {pipeline.SKIP_KEY: ('decode_error', 'empty_caption')[(i // 5) % 2]}
    return SOURCE[i]


def test_bad_samples_are_skipped_and_counted():
  it = pipeline.make_train_loader(
      _FlakySource(), transforms.ImageText(TOK, 24, 32, extra_keys=('index',)),
      global_batch_size=19, seed=0)
  batches = take(it, 4)  # 76 good samples == one epoch of 96 minus 20 bad ones
  idx = np.concatenate([b['index'] for b in batches])
  assert sorted(idx) == [i for i in range(N) if i % 5]
  assert it.metrics() == {'data/skipped': 20, 'data/skipped/decode_error': 10,
                          'data/skipped/empty_caption': 10}
  state = it.get_state()
  resumed = pipeline.make_train_loader(
      _FlakySource(), transforms.ImageText(TOK, 24, 32, extra_keys=('index',)),
      global_batch_size=19, seed=0)
  resumed.set_state(json.loads(json.dumps(state)))
  assert resumed.metrics() == it.metrics()
  assert_same(take(resumed, 2), take(it, 2))


def test_random_resized_crop_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    x0, y0, x1, y1 = transforms.random_resized_crop_box(60, 80, rng, (0.3, 0.6), (0.5, 2.0))
    w, h = x1 - x0, y1 - y0
    assert 0 <= x0 and x1 <= 80 and 0 <= y0 and y1 <= 60
    assert 0.28 <= w * h / 4800 <= 0.62 and 0.45 <= w / h <= 2.1
  # Impossible request falls back to the central crop with the closest ratio.
  assert transforms.random_resized_crop_box(10, 100, rng, (1.0, 1.0), (1.0, 1.0)) == (45, 0, 55, 10)


def test_make_source():
  src = pipeline.make_source({'format': 'synthetic', 'train_num_samples': 50,
                              'image_size': 16, 'seed': 3})
  assert len(src) == 50 and src[0]['image'].shape == (16, 16, 3)
  with pytest.raises(ValueError, match="data.format='parquet'"):
    pipeline.make_source({'format': 'parquet'})


def test_bad_arguments():
  with pytest.raises(ValueError, match='divisible'):
    loader(batch=15, process_count=2)
