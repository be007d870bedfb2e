"""Synthetic captioned shapes: determinism, held-out split, drawing, zero-shot tasks."""
import time

import numpy as np
import pytest

from clipjax.data import shapes


def test_records_are_deterministic_random_access():
  a = shapes.ShapesSource('train', 100, 32, seed=7)
  b = shapes.ShapesSource('train', 100, 32, seed=7)
  later_first = [b[i] for i in (50, 3, 99)]
  for rec, i in zip(later_first, (50, 3, 99)):
    ref = a[i]
    np.testing.assert_array_equal(rec['image'], ref['image'])
    assert rec['caption'] == ref['caption'] and rec['index'] == i
  other = shapes.ShapesSource('train', 100, 32, seed=8)
  assert any(not np.array_equal(a[i]['image'], other[i]['image']) for i in range(5))


def test_record_types():
  rec = shapes.ShapesSource('heldout', 10, 48)[3]
  assert rec['image'].dtype == np.uint8 and rec['image'].shape == (48, 48, 3)
  assert isinstance(rec['caption'], str) and rec['caption']
  assert rec['index'].dtype == np.int64
  with pytest.raises(IndexError, match='out of range'):
    shapes.ShapesSource('train', 10)[10]
  with pytest.raises(ValueError, match='split'):
    shapes.ShapesSource('test', 10)


def test_heldout_combos_disjoint_from_train():
  assert not shapes.HELDOUT_COMBOS & shapes.TRAIN_COMBOS
  assert len(shapes.HELDOUT_COMBOS) == 12
  assert {s for s, _ in shapes.TRAIN_COMBOS} == set(shapes.SHAPES)
  assert {c for _, c in shapes.TRAIN_COMBOS} == set(shapes.COLOURS)  # 8 + 6 train-only
  assert {s for s, _ in shapes.HELDOUT_COMBOS} == set(shapes.SHAPES)
  assert {c for _, c in shapes.HELDOUT_COMBOS} == set(shapes.COLOUR_NAMES)
  for split, combos in (('train', shapes.TRAIN_COMBOS), ('heldout', shapes.HELDOUT_COMBOS)):
    src = shapes.ShapesSource(split, 2000)
    seen = {(o.shape, o.colour) for i in range(len(src)) for o in src.scene(i)}
    assert seen <= combos
    assert len(seen) > 0.9 * len(combos)


def test_captions_name_every_object():
  src = shapes.ShapesSource('train', 500)
  counts = []
  for i in range(len(src)):
    objects, caption = src.scene(i), src[i]['caption']
    counts.append(len(objects))
    for obj in objects:
      # Single objects are sometimes captioned by colour only or shape only.
      if len(objects) > 1:
        assert obj.shape in caption, caption
      else:
        assert obj.colour in caption or obj.shape in caption, caption
    assert len({o.position for o in objects}) == len(objects)
  assert set(counts) == {1, 2, 3}
  assert len(set(src.captions())) > 200  # varied wording, not one template


def test_image_shows_each_object_colour():
  src = shapes.ShapesSource('train', 200, 32)
  for i in range(len(src)):
    image = src[i]['image'].astype(np.int32)
    for obj in src.scene(i):
      dist = np.abs(image - np.asarray(shapes.COLOURS[obj.colour])).max(-1)
      assert (dist <= 12).sum() >= 12, (i, obj)


@pytest.mark.parametrize('shape,area', [
    ('circle', np.pi), ('square', 1.6 ** 2), ('diamond', 2 * 1.05 ** 2),
    ('ring', np.pi * 0.75), ('triangle', 0.5 * (2 * 1.75 * 0.6) * 1.75),
    ('cross', 2 * (2 * 0.32 * 2) - (2 * 0.32) ** 2)])
def test_shape_mask_areas_match_geometry(shape, area):
  r, n = 100.0, 256
  grid = np.arange(n, dtype=np.float64) + 0.5 - n / 2
  mask = shapes.shape_mask(shape, grid[None, :], grid[:, None], r)
  np.testing.assert_allclose(mask.sum() / r ** 2, area, rtol=0.02)


def test_shapes_are_fast():
  src = shapes.ShapesSource('train', 500, 32)
  start = time.perf_counter()
  for i in range(len(src)):
    src[i]
  assert (time.perf_counter() - start) / len(src) < 2e-3


def test_zeroshot_tasks():
  tasks = shapes.zeroshot_tasks(image_size=32, num_samples=200, seed=1)
  assert {'shapes_heldout_shape', 'shapes_heldout_colour'} <= set(tasks)
  shape_task, colour_task = tasks['shapes_heldout_shape'], tasks['shapes_heldout_colour']
  assert shape_task.classnames == list(shapes.SHAPES)
  assert colour_task.classnames == list(shapes.COLOUR_NAMES)
  for task in tasks.values():
    assert task.images.shape == (200, 32, 32, 3) and task.images.dtype == np.uint8
    assert task.labels.shape == (200,) and task.labels.dtype == np.int64
    assert 0 <= task.labels.min() and task.labels.max() < len(task.classnames)
    assert all('{}' in t for t in task.templates)
    assert len(np.unique(task.labels)) == len(task.classnames)
  pairs = {(shape_task.classnames[s], colour_task.classnames[c])
           for s, c in zip(shape_task.labels, colour_task.labels)}
  assert pairs <= shapes.HELDOUT_COMBOS
  again = shapes.zeroshot_tasks(image_size=32, num_samples=200, seed=1)
  np.testing.assert_array_equal(again['shapes_heldout_shape'].images, shape_task.images)


def test_digit_samples_keep_the_scenes_and_name_their_digit():
  plain = shapes.ShapesSource('train', num_samples=400)
  mixed = shapes.ShapesSource('train', num_samples=400, digit_fraction=0.3)
  digit_words = {str(d) for d in range(10)}
  is_digit = []
  for i in range(400):
    record = mixed[i]
    words = set(record['caption'].replace('"', ' ').replace(':', ' ').rstrip('.').split())
    is_digit.append(bool(words & digit_words))
    if not is_digit[-1]:  # The scene samples are the ones a plain source draws.
      np.testing.assert_array_equal(record['image'], plain[i]['image'])
      assert record['caption'] == plain[i]['caption']
  assert 0.22 < np.mean(is_digit) < 0.38, np.mean(is_digit)
  assert mixed.captions(400) == [mixed[i]['caption'] for i in range(400)]
  np.testing.assert_array_equal(mixed[7]['image'],
                                shapes.ShapesSource('train', 400, digit_fraction=0.3)[7]['image'])
  with pytest.raises(ValueError, match='digit_fraction'):
    shapes.ShapesSource('train', 10, digit_fraction=1.5)


def test_drawn_digits_are_told_apart_by_nearest_template():
  """Each rendered digit is closer (in pixels) to the mean image of its own class than
  to any other class's: the renderer draws ten distinct, recognisable glyphs."""
  rng = np.random.default_rng(0)
  ink = {d: np.stack([shapes.glyphs.draw_digit(d, 32, rng) for _ in range(40)])
         for d in range(10)}
  means = np.stack([ink[d][:20].mean(0).ravel() for d in range(10)])
  test = np.concatenate([ink[d][20:].reshape(20, -1) for d in range(10)])
  labels = np.repeat(np.arange(10), 20)
  nearest = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (nearest == labels).mean() > 0.6, (nearest == labels).mean()  # measured 0.785
  for d in range(10):
    assert 0.03 < ink[d].mean() < 0.5 and ink[d].max() == 1.0


def test_drawn_digits_are_the_pinned_glyphs():
  """Digit ink as first published (sha256 of 40 glyphs, before the distances were
  rewritten for speed): the quickstart's data and figures depend on these bits."""
  import hashlib  # pylint: disable=import-outside-toplevel
  from clipjax.data import glyphs  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for i in range(40):
    h.update(glyphs.draw_digit(i % 10, 32, np.random.default_rng(i)).tobytes())
  assert h.hexdigest()[:16] == '321df75bd88771f9'


def test_quickstart_records_are_the_pinned_ones():
  """The quickstart's first 100 records (scenes and digits, images and captions) as
  published (sha256): its figures, and every study built on its data, depend on these bits."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  source = shapes.ShapesSource('train', 50_000, 32, seed=0, digit_fraction=0.4)
  for i in range(100):
    record = source[i]
    h.update(record['image'].tobytes())
    h.update(record['caption'].encode())
  assert h.hexdigest()[:16] == 'df300723f8d2398b'


def test_a_source_keeps_what_it_drew_read_only_and_workers_start_empty():
  import pickle  # pylint: disable=import-outside-toplevel
  kept = shapes.ShapesSource('train', 50, 32, digit_fraction=0.5)
  drawn = shapes.ShapesSource('train', 50, 32, digit_fraction=0.5, cache_bytes=0)
  first = [kept[i] for i in range(50)]
  again = kept[7]
  assert again['image'] is first[7]['image']  # looked up, not drawn again
  for i in range(50):
    np.testing.assert_array_equal(first[i]['image'], drawn[i]['image'])
    assert first[i]['caption'] == drawn[i]['caption']
  with pytest.raises(ValueError, match='read-only'):
    again['image'][0, 0, 0] = 0
  assert drawn[7]['image'] is not drawn[7]['image']  # too big for its budget: drawn each time
  worker = pickle.loads(pickle.dumps(kept))
  assert worker[7]['image'] is not again['image']
  np.testing.assert_array_equal(worker[7]['image'], again['image'])
