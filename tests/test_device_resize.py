"""Crops resized on the accelerator: bit for bit Pillow's, and the same training run."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from clipjax.data import device_resize, transforms
from clipjax.train.loop import Trainer
from tests.test_train import QUICKSTART, tiny_config


def _finish_one(parts: dict) -> np.ndarray:
  return np.asarray(device_resize.finish({k: np.asarray(v)[None] for k, v in parts.items()})
                    ['image'][0])


def test_resample_is_pillows_bicubic_bit_for_bit():
  """Random boxes (down- and upsampling, crops at the edges, tall and wide images, so both
  of Pillow's pass orders) against `Image.resize(size, BICUBIC, box)`."""
  rng = np.random.default_rng(0)
  orders = set()
  for trial in range(40):
    h, w = (int(v) for v in rng.integers(12, 300, 2))
    size = int(rng.choice([9, 32, 64]))
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if trial % 2:  # smooth content: values near the clipping bounds and flat regions
      coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
      pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    x0, y0, x1, y1 = transforms.random_resized_crop_box(h, w, rng, (0.05, 1.0), (0.5, 2.0))
    want = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC,
                                                     box=(x0, y0, x1, y1)))
    planned = device_resize.plan(pixels, (y0, y1, size, 0), (x0, x1, size, 0), size, 320)
    got = device_resize.resample(*(np.asarray(p)[None] for p in planned))[0]
    np.testing.assert_array_equal(got, want, err_msg=f'{h}x{w} box {(x0, y0, x1, y1)} -> {size}')
    orders.add(bool(planned[2]))
  assert orders == {False, True}


@pytest.mark.parametrize('augment', [None, {'scale': (0.9, 1.0)}, {'scale': (0.08, 1.0)}])
def test_deferred_image_equals_the_host_transform(augment):
  """ImageText with a canvas gives, once finished, the host path's float image exactly:
  arrays and PIL images, images already at size, and crops larger than the canvas (resized
  on the host, shipped as they are)."""
  host = transforms.ImageText(None, 0, 48, augment=augment, mean=(0.4, 0.5, 0.6),
                              std=(0.2, 0.3, 0.25))
  deferred = transforms.ImageText(None, 0, 48, augment=augment, mean=(0.4, 0.5, 0.6),
                                  std=(0.2, 0.3, 0.25), canvas_size=96)
  example = deferred.image_example(1)
  rng = np.random.default_rng(1)
  for h, w in [(48, 48), (70, 60), (200, 50), (50, 200), (300, 260)]:
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for image in (pixels, Image.fromarray(pixels)):
      want = host.image({'image': image}, np.random.default_rng(h))['image']
      parts = deferred.image({'image': image}, np.random.default_rng(h))
      assert {k: (v.shape[1:], v.dtype) for k, v in example.items()} == \
             {k: (np.shape(v), np.asarray(v).dtype) for k, v in parts.items()}
      np.testing.assert_array_equal(_finish_one(parts), want, err_msg=f'{h}x{w} {augment}')


def test_the_configs_canvas_holds_every_crop_of_a_224px_draft():
  """configs' data.canvas_size=608: a JPEG drafted for 224 px has a short side under 448,
  and any crop of it (aspect 3/4 to 4/3) reads a window under 608 pixels wide."""
  rng = np.random.default_rng(0)
  widest = 0
  for trial in range(400):
    short, long = int(rng.integers(224, 448)), int(rng.integers(448, 4000))
    h, w = (short, long) if trial % 2 else (long, short)
    scale = (0.9, 1.0) if trial % 4 < 2 else (0.08, 1.0)
    x0, y0, x1, y1 = transforms.random_resized_crop_box(h, w, rng, scale, (3 / 4, 4 / 3))
    start, count, _ = device_resize.pillow_taps((h, w), (y0, x0), (y1, x1), (224, 224),
                                                (0, 0), 224)
    widest = max(widest, ((start + count).max(axis=1) - start.min(axis=1)).max())
  assert 590 < widest <= 608


def test_canvas_smaller_than_the_image_is_refused():
  with pytest.raises(ValueError, match='canvas_size=16'):
    transforms.ImageText(None, 0, 32, canvas_size=16)


@pytest.mark.parametrize('config', ['aclip_quickstart.py', 'nmtune_quickstart.py'])
def test_methods_cropping_on_the_host_refuse_a_canvas(tmp_path, config):
  c = tiny_config(QUICKSTART.parent / config, **{'data.canvas_size': 64})
  with pytest.raises(ValueError, match='canvas_size'):
    Trainer(c, tmp_path)


def test_training_on_deferred_images_is_the_same_run(tmp_path):
  """The quickstart's crops resized in the step, with a hook's feature pass (ctx.features)
  over them: the same losses and episode features, bit for bit, as resizing in the loader."""
  runs = {}
  for canvas in (0, 40):
    trainer = Trainer(tiny_config(**{
        'method': 'tests.interface_methods:EpisodeCLIP', 'total_steps': 4,
        'checkpoint_every': 4, 'eval_every': 0, 'log_every': 1, 'data.canvas_size': canvas}),
        tmp_path / str(canvas))
    trainer.train()
    runs[canvas] = trainer
  batch = next(runs[40].make_loader())
  assert batch['image'].dtype == np.uint8 and batch['image'].shape[1:] == (40, 40, 3)
  for episode in (0, 1):
    got, want = (np.load(runs[c].workdir / f'episode_{episode}.npz') for c in (40, 0))
    assert got['valid'].all()
    np.testing.assert_array_equal(got['image'], want['image'])
  losses = [[r['loss'] for r in map(json.loads, (runs[c].workdir / 'metrics.jsonl').open())
             if 'loss' in r] for c in (40, 0)]
  assert len(losses[0]) == 4 and losses[0] == losses[1]
  for a, b in zip(jax.tree_util.tree_leaves(runs[40].state.params),
                  jax.tree_util.tree_leaves(runs[0].state.params)):
    np.testing.assert_array_equal(a, b)
