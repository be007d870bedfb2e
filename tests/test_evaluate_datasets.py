"""Evaluation data sources: a prepared TFDS dataset, image folders, Karpathy JSON, sharding."""
import json

import numpy as np
import pytest
from PIL import Image

from clipjax import evaluate as ev
from clipjax.data.transforms import resize_center_crop
from clipjax.evaluate import datasets

COLOURS = {'red': (220, 20, 20), 'green': (20, 200, 30), 'blue': (30, 30, 210)}


class ColourEncoder:
  """Fake encoder: an image embeds as its mean colour, a text as the colour word in it."""

  def __init__(self, image_size):
    self.image_size = image_size

  def encode_images(self, images):
    assert images.dtype == np.uint8 and images.shape[1:] == (self.image_size,) * 2 + (3,)
    return images.reshape(len(images), -1, 3).mean(1).astype(np.float32)

  def encode_texts(self, texts, purpose='captions'):
    return np.asarray([next(np.asarray(c, np.float32) for name, c in COLOURS.items()
                            if name in t) for t in texts])


def colour_image(name, rng, shape=(10, 14)):
  noise = rng.integers(-15, 16, size=shape + (3,))
  return np.clip(np.asarray(COLOURS[name]) + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- TFDS


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A tiny TFDS dataset prepared on disk as ArrayRecord (no TensorFlow needed)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  names = ['red_colour', 'green_colour', 'blue_colour']

  class EvalFakeColours(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(10, 14, 3), dtype=np.uint8),
          'label': tfds.features.ClassLabel(names=names)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(30, 0), 'test': self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {'image': colour_image(names[i % 3].split('_')[0], rng), 'label': i % 3}

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  EvalFakeColours(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def test_tfds_source_reads_resizes_and_names_classes(tfds_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image_set = datasets.load_image_set(8, dataset='eval_fake_colours', data_dir=tfds_dir,
                                      split='test')
  assert len(image_set) == 12
  assert image_set.classnames == ['red colour', 'green colour', 'blue colour']
  images, labels = image_set.get([4, 0])
  raw = tfds.data_source('eval_fake_colours', split='test', data_dir=tfds_dir)
  np.testing.assert_array_equal(labels, [raw[4]['label'], raw[0]['label']])
  np.testing.assert_array_equal(images[0], resize_center_crop(Image.fromarray(raw[4]['image']), 8))
  assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8


def test_tfds_zeroshot_and_linear_probe_with_splits(tfds_dir):
  evaluators = ev.build_evaluators({
      'zs': dict(type='zeroshot', dataset='eval_fake_colours', data_dir=tfds_dir,
                 templates=['a {c} picture']),
      'lp': dict(type='linear_probe', dataset='eval_fake_colours', data_dir=tfds_dir),
  })
  details = {}
  results = ev.run_evaluators(evaluators, ColourEncoder(6), details)
  assert results['zs/zeroshot_top1'] == 1.0
  assert results['lp/linear_probe_top1'] == 1.0
  assert details['lp']['per_class_accuracy'].shape == (3,)


def test_missing_tfds_dataset_names_it(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(FileNotFoundError, match="'eval_fake_colours'.*not prepared"):
    datasets.load_image_set(8, dataset='eval_fake_colours', data_dir=str(tmp_path))


# ---------------------------------------------------------------- image folders


def write_folder(root, per_class, rng):
  for name in COLOURS:
    folder = root / f'{name}_thing'
    folder.mkdir(parents=True)
    for n in range(per_class):
      Image.fromarray(colour_image(name, rng, shape=(12, 9))).save(folder / f'{n}.png')
  (root / 'red_thing' / 'notes.txt').write_text('not an image')


def test_image_folder_classnames_and_linear_probe(tmp_path):
  rng = np.random.default_rng(0)
  write_folder(tmp_path / 'train', 6, rng)
  write_folder(tmp_path / 'test', 3, rng)
  image_set = datasets.load_image_set(5, image_folder_path=str(tmp_path / 'train'))
  assert len(image_set) == 18  # notes.txt skipped
  assert image_set.classnames == ['blue thing', 'green thing', 'red thing']  # sorted folders
  images, labels = image_set.get(np.arange(18))
  assert images.shape == (18, 5, 5, 3) and list(np.bincount(labels)) == [6, 6, 6]
  assert images[labels == 2][..., 0].mean() > 150  # 'red_thing' images are red
  evaluators = ev.build_evaluators({
      'zs': dict(type='zeroshot', image_folder=str(tmp_path / 'test')),
      'lp': dict(type='linear_probe', image_folder=str(tmp_path / 'train'),
                 test_image_folder=str(tmp_path / 'test')),
  })
  results = ev.run_evaluators(evaluators, ColourEncoder(5))
  assert results == {'zs/zeroshot_top1': 1.0, 'zs/zeroshot_mean_per_class_recall': 1.0,
                     'lp/linear_probe_top1': 1.0, 'lp/linear_probe_mean_per_class_recall': 1.0,
                     'lp/linear_probe_log10_C': results['lp/linear_probe_log10_C']}
  with pytest.raises(ValueError, match='2 classnames for 3 sub-folders'):
    datasets.load_image_set(5, image_folder_path=str(tmp_path / 'test'), classnames=['a', 'b'])


def test_image_set_needs_exactly_one_source(tmp_path):
  with pytest.raises(ValueError, match='exactly one'):
    datasets.load_image_set(8)
  with pytest.raises(FileNotFoundError, match='not a directory'):
    datasets.load_image_set(8, image_folder_path=str(tmp_path / 'nope'))


# ---------------------------------------------------------------- Karpathy retrieval


def test_karpathy_retrieval(tmp_path):
  rng = np.random.default_rng(0)
  entries = []
  names = ['red', 'green', 'blue', 'red']
  for n, name in enumerate(names):
    (tmp_path / 'imgs' / 'val').mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_image(name, rng)).save(tmp_path / 'imgs' / 'val' / f'{n}.jpg')
    entries.append({'filepath': 'val', 'filename': f'{n}.jpg',
                    'split': 'train' if n == 3 else 'test',
                    'sentences': [{'raw': f' a {name} photo number {k} '} for k in range(n + 4)]})
  path = tmp_path / 'dataset_flickr.json'
  path.write_text(json.dumps({'images': entries}))
  evaluator = ev.RetrievalEvaluator(karpathy_json=str(path), images_dir=str(tmp_path / 'imgs'))
  data = evaluator.captioned_set(7)
  assert len(data) == 3 and len(data.captions) == 4 + 5 + 5  # at most 5 captions per image
  assert data.captions[0] == 'a red photo number 0'
  np.testing.assert_array_equal(data.text_to_image, [0] * 4 + [1] * 5 + [2] * 5)
  scalars, _ = evaluator(ColourEncoder(7))
  assert scalars == {f'{d}_R@{k}': 1.0 for k in (1, 5, 10)
                     for d in ('image_to_text', 'text_to_image')}
  with pytest.raises(ValueError, match="no images with split 'val'"):
    ev.RetrievalEvaluator(karpathy_json=str(path), images_dir=str(tmp_path / 'imgs'),
                          split='val').captioned_set(7)


# ---------------------------------------------------------------- sharded parameters


def test_encoder_with_sharded_params_matches_single_device(python_subprocess):
  out = python_subprocess('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from clipjax.evaluate import Encoder, EvalView
    from clipjax.models import build_clip
    model = build_clip('tiny', vocab_size=64, context_length=8, eot_token_id=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                        jnp.zeros((1, 8), jnp.int32))['params']
    tok = lambda texts, L: np.tile(np.arange(L, dtype=np.int32) % 5, (len(texts), 1)) + np.arange(len(texts))[:, None].astype(np.int32) % 7
    images = np.random.default_rng(0).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    texts = [str(i) for i in range(13)]
    ref = Encoder(EvalView.of(model, params), tok, context_length=8, image_size=32, batch_size=16)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
    def shard(x):
      x = jax.numpy.asarray(x)
      spec = P(*([None] * (x.ndim - 1) + ['model'])) if x.ndim and x.shape[-1] % 2 == 0 else P()
      return jax.device_put(x, NamedSharding(mesh, spec))
    sharded = jax.tree.map(shard, jax.tree.map(lambda x: getattr(x, 'value', x), params,
                           is_leaf=lambda x: hasattr(x, 'value')))
    enc = Encoder(EvalView.of(model, sharded), tok, context_length=8, image_size=32,
                  batch_size=16, batch_sharding=NamedSharding(mesh, P('data')))
    np.testing.assert_allclose(enc.encode_images(images), ref.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(texts), ref.encode_texts(texts), atol=1e-5)
    batch = jax.device_put(images[:16], NamedSharding(mesh, P('data')))
    # Gathered to every device: every host can read it.
    assert enc._encode_image({'params': sharded}, batch).sharding.is_fully_replicated
    print('devices', len(jax.devices()))
  ''', devices=8)
  assert 'devices 8' in out
