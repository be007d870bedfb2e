"""Evaluation metrics, zero-shot protocol, encoder and linear probe against references."""
import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import evaluate as ev
from clipjax.data.transforms import normalize
from clipjax.evaluate import datasets
from clipjax.evaluate import linear_probe as lp
from clipjax.evaluate import report
from clipjax.models import build_clip

CONTEXT = 16
IMAGE_SIZE = 32


def word_tokenizer(texts, context_length):
  """sot=1, eot=2, words hashed to 3..202, pad 0: deterministic and dependency-free."""
  out = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = [1] + [3 + zlib.crc32(w.encode()) % 200 for w in text.split()][:context_length - 2]
    out[row, :len(ids) + 1] = ids + [2]
  return out


@pytest.fixture(scope='module')
def tiny():
  model = build_clip('tiny', vocab_size=256, context_length=CONTEXT, eot_token_id=2)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                         jnp.zeros((1, CONTEXT), jnp.int32))
  return model, variables['params']


@pytest.fixture(scope='module')
def encoder(tiny):
  model, params = tiny
  return ev.Encoder(ev.EvalView.of(model, params), word_tokenizer, context_length=CONTEXT,
                    image_size=IMAGE_SIZE, batch_size=32)


# ---------------------------------------------------------------- retrieval


def brute_force_recalls(image_emb, text_emb, text_to_image, ks=(1, 5, 10)):
  """Sort every candidate list, ties ordered wrong-first, and look into the top k."""
  img = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
  txt = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
  sim = txt.astype(np.float64) @ img.astype(np.float64).T
  out = {}
  for k in ks:
    t2i = []
    for j in range(len(txt)):
      order = sorted(range(len(img)), key=lambda i: (-sim[j, i], i == text_to_image[j]))
      t2i.append(text_to_image[j] in order[:k])
    i2t = []
    for i in sorted(set(text_to_image)):
      order = sorted(range(len(txt)), key=lambda j: (-sim[j, i], text_to_image[j] == i))
      i2t.append(any(text_to_image[j] == i for j in order[:k]))
    out[f'text_to_image_R@{k}'] = np.mean(t2i)
    out[f'image_to_text_R@{k}'] = np.mean(i2t)
  return out


def test_retrieval_matches_brute_force_with_ties_and_several_captions():
  rng = np.random.default_rng(0)
  dim = 16  # +-1 entries: every norm is 4, so cosine similarities are exact multiples of 1/16
  image_emb = rng.choice([-1.0, 1.0], size=(30, dim)).astype(np.float32)
  image_emb[5] = image_emb[4]  # duplicate images: exact ties for their captions
  counts = rng.integers(1, 6, size=29)  # image 29 has no caption: a distractor only
  text_to_image = np.repeat(np.arange(29), counts)
  text_emb = rng.choice([-1.0, 1.0], size=(len(text_to_image), dim)).astype(np.float32)
  text_emb[::7] = image_emb[text_to_image[::7]]  # some perfect matches
  got = ev.retrieval_metrics(image_emb, text_emb, text_to_image)
  want = brute_force_recalls(image_emb, text_emb, text_to_image)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  sim = text_emb @ image_emb.T
  positive = sim[np.arange(len(sim)), text_to_image][:, None]
  tied = (sim == positive).sum(1) > 1
  assert tied.sum() >= 20  # many captions tie their image with a wrong one
  # The tie rule matters here: breaking ties in favour of the truth scores higher.
  optimistic = np.mean(np.sum(sim > positive, 1) < 1)
  assert optimistic > got['text_to_image_R@1']


def test_retrieval_without_ties_matches_argsort_definition():
  rng = np.random.default_rng(1)
  image_emb = rng.normal(size=(40, 8))
  text_to_image = np.repeat(np.arange(40), 5)
  text_emb = image_emb[text_to_image] + 1.5 * rng.normal(size=(200, 8))
  got = ev.retrieval_metrics(image_emb, text_emb, text_to_image, chunk=7)
  img = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
  txt = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
  sim = txt @ img.T
  for k in (1, 5, 10):
    top_images = np.argsort(-sim, axis=1)[:, :k]
    t2i = np.mean([text_to_image[j] in top_images[j] for j in range(200)])
    top_texts = np.argsort(-sim.T, axis=1)[:, :k]
    i2t = np.mean([np.any(text_to_image[top_texts[i]] == i) for i in range(40)])
    assert got[f'text_to_image_R@{k}'] == pytest.approx(t2i)
    assert got[f'image_to_text_R@{k}'] == pytest.approx(i2t)
  assert 0.05 < got['text_to_image_R@1'] < 0.95  # neither trivial nor broken


def test_retrieval_rejects_bad_indices():
  with pytest.raises(ValueError, match='text_to_image'):
    ev.retrieval_metrics(np.eye(3), np.eye(3), [0, 1, 3])


# ---------------------------------------------------------------- classification


def test_classification_metrics_hand_computed_with_ties():
  logits = np.array([[2., 1., 0.],    # label 0: clear hit
                     [1., 1., 0.],    # label 0: tied with class 1 -> miss at top-1
                     [0., 3., 3.],    # label 2: tied with class 1 -> miss
                     [0., 0., 5.]])   # label 2: hit
  scalars, per_class = ev.classification_metrics(logits, [0, 0, 2, 2], num_classes=3)
  assert scalars['top1'] == 0.5
  assert 'top5' not in scalars  # 3 classes: top-5 is 1 by construction, not reported
  np.testing.assert_array_equal(per_class[[0, 2]], [0.5, 0.5])
  assert np.isnan(per_class[1])  # class 1 absent: excluded from the mean
  assert scalars['mean_per_class_recall'] == 0.5


def test_classification_top5_and_mean_per_class_recall():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(300, 12))
  labels = rng.integers(0, 12, size=300)
  scalars, per_class = ev.classification_metrics(logits, labels)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert scalars['top5'] == pytest.approx(np.mean([l in t for l, t in zip(labels, top5)]))
  from sklearn.metrics import balanced_accuracy_score  # pylint: disable=g-import-not-at-top
  assert scalars['mean_per_class_recall'] == pytest.approx(
      balanced_accuracy_score(labels, logits.argmax(1)))
  assert per_class[3] == pytest.approx(np.mean(logits[labels == 3].argmax(1) == 3))


class AngleEncoder:
  """Fake encoder: an image is a 2-d unit vector at the angle (degrees) stored in its
  first pixel; texts map to given, deliberately unnormalised vectors."""
  image_size = 4

  def __init__(self, text_vectors):
    self.text_vectors = text_vectors
    self.seen_texts = []

  @staticmethod
  def images(angles):
    images = np.zeros((len(angles), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.asarray(angles) + 100
    return images

  def encode_images(self, images):
    theta = np.deg2rad(images[:, 0, 0, 0].astype(np.float64) - 100)
    return np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)

  def encode_texts(self, texts, purpose='captions'):
    self.seen_texts += list(texts)
    return np.asarray([self.text_vectors[t] for t in texts], np.float32)


# cat's template embeddings point along x (long) and y (short): the CLIP recipe (normalise,
# average, normalise) gives the 45 degree diagonal; averaging raw vectors would give ~6 degrees.
TEXT_VECTORS = {'a cat': (10., 0.), 'the cat': (0., 1.), 'a dog': (1., 0.), 'the dog': (5., 0.)}
ANGLES = [10, 30, 60, -20, 15]
LABELS = [0, 0, 0, 1, 0]  # cat, cat, cat, dog, cat


def test_zeroshot_classifier_is_mean_of_normalised_template_embeddings():
  encoder = AngleEncoder(TEXT_VECTORS)
  weights = ev.zeroshot_classifier(encoder, ['cat', 'dog'], ['a {c}', 'the {}'])
  np.testing.assert_allclose(weights, [[0.5 ** 0.5, 0.5 ** 0.5], [1., 0.]], atol=1e-6)
  # Decision boundary at 22.5 degrees: 10 and 15 go to dog, 30 and 60 to cat, -20 to dog.
  features = encoder.encode_images(encoder.images(ANGLES))
  scalars, per_class = ev.zeroshot_metrics(features, np.array(LABELS), weights)
  assert scalars['top1'] == pytest.approx(3 / 5)
  np.testing.assert_allclose(per_class, [2 / 4, 1.0])
  assert scalars['mean_per_class_recall'] == pytest.approx(0.75)


def test_zeroshot_evaluator_on_image_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = AngleEncoder.images(ANGLES)
  for n, (image, label) in enumerate(zip(images, LABELS)):
    folder = tmp_path / ('big_cat' if label == 0 else 'dog')
    folder.mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / f'{n}.png')
  names = tmp_path / 'names.txt'
  names.write_text('cat\ndog\n')
  encoder = AngleEncoder(TEXT_VECTORS)
  evaluators = ev.build_evaluators({'pets': dict(
      type='zeroshot', image_folder=str(tmp_path), classnames=str(names),
      templates=['a {c}', 'the {c}'])})
  details = {}
  results = ev.run_evaluators(evaluators, encoder, details)
  assert results == pytest.approx({'pets/zeroshot_top1': 0.6,
                                   'pets/zeroshot_mean_per_class_recall': 0.75})
  assert sorted(set(encoder.seen_texts)) == sorted(TEXT_VECTORS)
  np.testing.assert_allclose(details['pets']['per_class_accuracy'], [0.5, 1.0])
  assert list(details['pets']['classnames']) == ['cat', 'dog']
  assert list(details['pets']['class_counts']) == [4, 1]


def test_build_evaluators_names_the_bad_entry():
  with pytest.raises(ValueError, match='config.evals.x.type'):
    ev.build_evaluators({'x': dict(type='zeroshott', dataset='sklearn_digits')})
  with pytest.raises(TypeError, match=r'config.evals.y \(type .zeroshot.\)'):
    ev.build_evaluators({'y': dict(type='zeroshot', dataset='sklearn_digits', tempaltes=[])})


def test_shipped_templates():
  imagenet = datasets.templates_for('imagenet1k')
  assert len(imagenet) == 80 and len(set(imagenet)) == 80
  assert 'itap of a {c}.' in imagenet and 'a photo of a {c}.' in imagenet
  assert len(datasets.templates_for('cifar10')) == 18
  assert len(datasets.resolve_classnames('imagenet1k')) == 1000
  assert datasets.resolve_classnames('imagenet1k')[21] == 'kite (bird of prey)'


# ---------------------------------------------------------------- encoder


def test_encoder_matches_model_and_compiles_once(tiny, encoder):
  model, params = tiny
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(70, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  got = encoder.encode_images(images)
  want = np.asarray(model.apply({'params': params}, jnp.asarray(normalize(images)),
                                method='encode_image'), np.float64)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert got.dtype == np.float32
  texts = [f'a photo of {n} things' for n in range(37)]
  got_t = encoder.encode_texts(texts)
  want_t = np.asarray(model.apply({'params': params}, word_tokenizer(texts, CONTEXT),
                                  method='encode_text'), np.float64)
  want_t /= np.linalg.norm(want_t, axis=1, keepdims=True)
  np.testing.assert_allclose(got_t, want_t, atol=2e-5)
  encoder.encode_images(images[:5])
  encoder.encode_texts(texts[:3])
  assert encoder._encode_image._cache_size() == 1  # pylint: disable=protected-access
  assert encoder._encode_text._cache_size() == 1  # pylint: disable=protected-access
  with pytest.raises(ValueError, match='uint8'):
    encoder.encode_images(images.astype(np.float32))
  other = model.init(jax.random.PRNGKey(1), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                     jnp.zeros((1, CONTEXT), jnp.int32))['params']
  try:
    encoder.variables = {'params': other}  # a later state: new numbers, same compiled program
    assert np.abs(encoder.encode_images(images[:5]) - got[:5]).max() > 1e-2
    assert encoder._encode_image._cache_size() == 1  # pylint: disable=protected-access
  finally:
    encoder.variables = {'params': params}


# ---------------------------------------------------------------- linear probe


def test_parametric_search_finds_the_peak_on_the_eighth_decade_grid():
  calls = []

  def score(log_c):
    calls.append(log_c)
    return -abs(log_c - 1.375)

  assert lp.parametric_search(score) == 1.375
  assert len(calls) == len(set(calls)) <= 15
  assert lp.parametric_search(lambda log_c: 0.0) == -6.0  # ties: strongest regularisation


def test_linear_probe_on_digits_with_random_vit_beats_majority(encoder):
  probe = ev.build_evaluators({'digits': dict(type='linear_probe', dataset='sklearn_digits')})
  details = {}
  results = ev.run_evaluators(probe, encoder, details)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  majority = np.bincount(load_digits().target).max() / len(load_digits().target)
  assert majority < 0.11
  assert results['digits/linear_probe_top1'] > majority + 0.5
  assert -6 <= results['digits/linear_probe_log10_C'] <= 6
  assert details['digits']['per_class_accuracy'].shape == (10,)


def test_stratified_split_is_disjoint_and_covers_classes():
  labels = np.repeat(np.arange(5), [10, 3, 2, 7, 1])
  keep, held = datasets.stratified_split(labels, 0.3, seed=0)
  assert not set(keep) & set(held) and len(keep) + len(held) == len(labels)
  assert set(labels[keep]) == set(range(5))
  assert set(labels[held]) == {0, 1, 2, 3}  # a singleton class stays in train


# ---------------------------------------------------------------- shapes and reports


def test_shapes_zeroshot_and_retrieval_run_on_tiny_model(encoder):
  evaluators = ev.build_evaluators({
      'shape': dict(type='zeroshot', dataset='shapes_heldout_shape', num_samples=60),
      'colour': dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=60,
                     max_examples=40),
      'ret': dict(type='retrieval', dataset='shapes', num_samples=24, captions_per_image=2),
  })
  results = ev.run_evaluators(evaluators, encoder)
  assert {'shape/zeroshot_top1', 'shape/zeroshot_top5', 'colour/zeroshot_top1',
          'ret/image_to_text_R@10', 'ret/text_to_image_R@1'} <= set(results)
  assert all(0.0 <= v <= 1.0 for v in results.values())


def test_eval_json_history_details_and_plot(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for step in range(1, 21):
      f.write(json.dumps({'step': step, 'loss': 4.0 / step, 'learning_rate': 1e-3 * step,
                          'examples_per_sec': 100.0}) + '\n')
  report.write_eval_json(workdir, {'digits/zeroshot_top1': 0.2, 'ret/text_to_image_R@1': 0.1},
                         step=10)
  report.write_eval_json(workdir, {'digits/zeroshot_top1': 0.4, 'ret/text_to_image_R@1': 0.3},
                         step=20)
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f) == {'step': 20, 'digits/zeroshot_top1': 0.4, 'ret/text_to_image_R@1': 0.3}
  history = report.read_jsonl(os.path.join(workdir, 'eval_history.jsonl'))
  assert [r['step'] for r in history] == [10, 20]
  paths = report.save_eval_details(workdir, {'digits': {'per_class_accuracy': np.ones(10)},
                                             'ret': {}}, step=20)
  assert [os.path.basename(p) for p in paths] == ['digits_step20.npz']
  png = report.plot_run(workdir)
  assert png.endswith('training_curves.png') and os.path.getsize(png) > 10_000
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_plot_run_names_the_bad_file(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "loss": 2}\n{oops\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    report.plot_run(str(tmp_path))
