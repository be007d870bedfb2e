"""TinyCLIP: affinity loss vs float64 numpy and the official PyTorch formulation; the frozen
teacher in aux; manual weight inheritance."""
from pathlib import Path

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import losses, sharding
from clipjax.config_base import load_config
from clipjax.convert import native
from clipjax.methods import inheritance
from clipjax.methods.tinyclip import TinyCLIP
from clipjax.train.loop import Trainer
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
TEACHER_STEPS = 40


def student_config(teacher, inherit='manual', **overrides):
  c = load_config(str(ROOT / 'configs/tinyclip_quickstart.py'), f'{teacher},{inherit}')
  c.batch_size = 16
  c.data.train_num_samples = 2000
  c.loss_implementation = 'xla'
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


def run_steps(trainer, n, state=None):
  loader = trainer.make_loader()
  state = trainer.initial_state() if state is None else state
  metrics = []
  for _ in range(n):
    state, m = trainer.train_step(state, sharding.global_batch(next(loader), trainer.mesh))
    metrics.append({k: float(v) for k, v in m.items()})
  return state, metrics


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A 4+4-block quickstart CLIP trained briefly with InfoNCE, saved as a native folder."""
  tmp = tmp_path_factory.mktemp('teacher')
  trainer = Trainer(tiny_config(**{'model.vision': dict(layers=4), 'model.text': dict(layers=4),
                                    'optim.warmup_steps': 5}), tmp / 'run')
  state, _ = run_steps(trainer, TEACHER_STEPS)
  native.save(trainer.model, jax.device_get(state.params), str(tmp / 'teacher'), trainer.tokenizer)
  np.savez(tmp / 'teacher/batch.npz', **next(trainer.make_loader()))  # a held batch for tests
  return str(tmp / 'teacher')


# ---------------------------------------------------------------- the loss

def unit(a):
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_reference(xs, ys, xt, yt, ss, st, w_hard):
  """float64 loss and d/d(xs, ys) of ½CE(rows) + ½CE(cols) + w_hard·InfoNCE."""
  xs, ys, xt, yt = (a.astype(np.float64) for a in (xs, ys, xt, yt))
  n = len(xs)

  def softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  a, t = ss * xs @ ys.T, st * xt @ yt.T
  p_r, p_c, q_r, q_c = softmax(t), softmax(t.T).T, softmax(a), softmax(a.T).T
  soft = 0.5 * (-(p_r * np.log(q_r)).sum(1).mean() - (p_c * np.log(q_c)).sum(0).mean())
  eye = np.eye(n)
  hard = 0.5 * (-(np.log(q_r) * eye).sum(1).mean() - (np.log(q_c) * eye).sum(0).mean())
  g = 0.5 / n * (q_r - p_r + q_c - p_c) + w_hard * 0.5 / n * (q_r + q_c - 2 * eye)
  return soft + w_hard * hard, ss * g @ ys, ss * g.T @ xs


def method_for(teacher_dir, **tinyclip):
  c = student_config(teacher_dir)
  c.model.vocab_size, c.model.eot_token_id = _teacher_vocab(teacher_dir)
  c.tinyclip.update(dict(dict(logit_scale=50.0), **tinyclip))  # TinyCLIP's fixed 1/50
  return TinyCLIP(c)


def _teacher_vocab(teacher_dir):
  m, _ = native.load_native(teacher_dir)
  return m.text['vocab_size'], m.text['eot_token_id']


def embeddings(n=12, d=16, seed=0):
  """Student and teacher embeddings, noisy enough that scale-50 affinities stay soft."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d))
  return [unit(base + s * rng.normal(size=(n, d))).astype(np.float32) for s in (2.0, 2.0, 1.5, 1.5)]


@pytest.mark.parametrize('impl', ['xla', 'chunked'])
@pytest.mark.parametrize('w_hard', [0.0, 0.3])
def test_method_loss_matches_float64_numpy(teacher_dir, impl, w_hard):
  method = method_for(teacher_dir, infonce_weight=w_hard)
  method.config.loss_implementation = impl
  xs, ys, xt, yt = embeddings()
  fn = lambda x, y: method.loss_from_embeddings(
      None, None, dict(image_emb=x, text_emb=y, teacher_image_emb=xt, teacher_text_emb=yt),
      None)[0]
  loss, (gx, gy) = jax.value_and_grad(fn, argnums=(0, 1))(xs, ys)
  want, wx, wy = np_reference(xs, ys, xt, yt, 50.0, 50.0, w_hard)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(gx, wx, atol=2e-6, rtol=1e-4)
  np.testing.assert_allclose(gy, wy, atol=2e-6, rtol=1e-4)


def torch_official(xs, ys, xt, yt, ss, st, world_size):
  """Cream/TinyCLIP `ClipSoftLoss` (local_loss, gather_with_grad) on `world_size` simulated
  ranks; DDP averages the ranks' gradients, so the objective is the mean of rank losses."""
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  xs, ys = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (xs, ys))
  xt, yt = (torch.tensor(a, dtype=torch.float64) for a in (xt, yt))
  per_rank = []
  for r, rows in enumerate(torch.arange(len(xs)).chunk(world_size)):
    del r
    logits_per_image, logits_per_text = ss * xs[rows] @ ys.T, ss * ys[rows] @ xs.T
    t_image, t_text = st * xt[rows] @ yt.T, st * yt[rows] @ xt.T
    single = lambda s, t: f.cross_entropy(s, f.softmax(t, -1))
    per_rank.append((single(logits_per_image, t_image) + single(logits_per_text, t_text)) / 2)
  loss = torch.stack(per_rank).mean()
  loss.backward()
  return loss.item(), xs.grad.numpy(), ys.grad.numpy()


@pytest.mark.parametrize('logit_scale', [50.0, 0.0])
def test_method_loss_matches_official_pytorch(teacher_dir, logit_scale):
  method = method_for(teacher_dir, logit_scale=logit_scale)
  xs, ys, xt, yt = embeddings(seed=3)
  # The learned scales, used when none is fixed: the student's and the teacher's own.
  variables = {'params': {'log_logit_scale': jnp.log(jnp.float32(20.0))}}
  aux = {'teacher': {'log_logit_scale': jnp.log(jnp.float32(30.0))}}
  fn = lambda x, y: method.loss_from_embeddings(variables, aux, dict(
      image_emb=x, text_emb=y, teacher_image_emb=xt, teacher_text_emb=yt), None)[0]
  loss, (gx, gy) = jax.value_and_grad(fn, argnums=(0, 1))(xs, ys)
  ss, st = (50.0, 50.0) if logit_scale else (20.0, 30.0)
  want, wx, wy = torch_official(xs, ys, xt, yt, ss, st, world_size=4)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(gx, wx, atol=2e-6, rtol=1e-4)
  np.testing.assert_allclose(gy, wy, atol=2e-6, rtol=1e-4)


# ---------------------------------------------------------------- the teacher in aux

def test_frozen_teacher_in_aux_and_distillation_learns(teacher_dir, tmp_path):
  trainer = Trainer(student_config(teacher_dir, 'none', **{'optim.warmup_steps': 2,
                                                          'tinyclip.logit_scale': 50.0}), tmp_path)
  _, teacher = native.load_native(teacher_dir)
  state, metrics = run_steps(trainer, 12)
  state = jax.device_get(state)
  for a, b in zip(jax.tree_util.tree_leaves(state.aux['teacher']),
                  jax.tree_util.tree_leaves(teacher)):
    np.testing.assert_array_equal(a, b)
  n_params = len([x for x in jax.tree_util.tree_leaves(state.params) if np.ndim(x) > 0])
  adam = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert len(adam) == 2 * n_params  # mu and nu of the student only, none for the teacher
  losses = [m['distill_loss'] for m in metrics]
  assert losses[-1] < losses[0] - 0.2, losses
  assert all(m['logit_scale'] == 50.0 for m in metrics)


# ---------------------------------------------------------------- manual inheritance

def test_layer_map_is_interval_front():
  assert inheritance.layer_map(12, 6) == [0, 2, 4, 6, 8, 10]
  assert inheritance.layer_map(12, 9) == list(range(9))
  assert inheritance.layer_map(4, 1) == [0]
  with pytest.raises(ValueError, match='more than'):
    inheritance.layer_map(2, 3)


def test_same_size_student_reproduces_teacher(teacher_dir, tmp_path):
  c = student_config(teacher_dir, **{'model.vision': dict(layers=4, width=64, heads=4),
                                     'model.text': dict(layers=4, width=64, heads=4)})
  trainer = Trainer(c, tmp_path)
  state = trainer.initial_state()
  teacher_model, teacher = native.load_native(teacher_dir)
  batch = next(trainer.make_loader())
  for method in ('encode_image', 'encode_text'):
    x = batch['image'] if method == 'encode_image' else batch['text']
    got = trainer.model.apply({'params': state.params}, x, method=method)
    want = teacher_model.apply({'params': teacher}, x, method=method)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_inheritance_slices_heads_and_layers(teacher_dir):
  _, teacher = native.load_native(teacher_dir)
  target = {'visual': {'transformer': {
      'block_0': {'attn': {'query': {'kernel': np.zeros((32, 2, 16), np.float32)},
                           'out': {'kernel': np.zeros((2, 16, 32), np.float32)}}},
      'block_1': {'attn': {'query': {'kernel': np.zeros((32, 2, 16), np.float32)}}}}}}
  got = inheritance.inherit(teacher, target)['visual']['transformer']
  t = teacher['visual']['transformer']
  np.testing.assert_array_equal(got['block_1']['attn']['query']['kernel'],
                                np.asarray(t['block_2']['attn']['query']['kernel'])[:32, :2])
  np.testing.assert_array_equal(got['block_0']['attn']['out']['kernel'],
                                np.asarray(t['block_0']['attn']['out']['kernel'])[:2, :, :32])
  with pytest.raises(ValueError, match='leading slice'):
    inheritance.inherit(teacher, {'visual': {'proj': np.zeros((65, 64))}})


@pytest.mark.parametrize('student,ratio', [(dict(layers=3), 0.5), (dict(width=32, heads=2), 0.5),
                                           (dict(layers=3, width=32, heads=2), 0.6)])
def test_inherited_student_starts_far_lower(teacher_dir, student, ratio):
  """Shallower / narrower students of the 4+4 blocks x 64 teacher: KL(teacher || student) on
  a held batch at step 0 (the loss minus the teacher's entropy: what a student can remove),
  inherited vs the mean over three random initialisations."""
  teacher_model, teacher = native.load_native(teacher_dir)
  batch = dict(np.load(Path(teacher_dir) / 'batch.npz'))
  model = teacher_model.clone(vision=dict(teacher_model.vision, **student),
                              text=dict(teacher_model.text, **student))
  t = teacher_model.apply({'params': teacher}, batch['image'], batch['text'])
  affinity = lambda s: losses.affinity_mimicking_loss(
      s['image_emb'], s['text_emb'], t['image_emb'], t['text_emb'], 50.0, 50.0,
      implementation='xla')
  entropy = affinity(t)
  kl = lambda p: float(affinity(model.apply({'params': p}, batch['image'], batch['text'])) - entropy)
  fresh = [nn.unbox(model.init(jax.random.PRNGKey(seed), batch['image'][:1],
                               batch['text'][:1]))['params'] for seed in range(3)]
  inherited, scratch = kl(inheritance.inherit(teacher, fresh[0])), np.mean([kl(p) for p in fresh])
  print(student, f'KL(teacher || student) at init: inherited {inherited:.3f}, random {scratch:.3f}')
  assert inherited < ratio * scratch


# ---------------------------------------------------------------- automatic inheritance

def test_auto_mask_phase_trains_masks_and_multipliers(teacher_dir, tmp_path):
  """Same-size student (inherited = the teacher) with L0 masks: the expected sparsity climbs
  towards the ramped target, the multipliers ascend while it lags, logits stay clamped."""
  c = student_config(teacher_dir, **{
      'model.vision': dict(layers=4, width=64, heads=4), 'model.text': dict(layers=4, width=64, heads=4),
      'optim.warmup_steps': 2})
  c.tinyclip.auto = dict(start_sparsity=0.0, target_sparsity=0.5, sparsity_warmup=4,
                         prune_step=100, lr=0.5)
  trainer = Trainer(c, tmp_path)
  state, metrics = run_steps(trainer, 8)
  print([(round(m['expected_sparsity'], 3), round(m['lambda_1'], 2)) for m in metrics])
  assert all(np.isfinite(m['distill_loss']) for m in metrics)
  sparsity = [m['expected_sparsity'] for m in metrics]
  assert sparsity[0] < 0.01 and sparsity[-1] > 4 * sparsity[0] and np.all(np.diff(sparsity[1:]) > 0)
  assert metrics[-1]['lambda_1'] > metrics[0]['lambda_1']
  masks = jax.device_get(state.params['l0']['masks'])
  assert all(np.all(np.abs(x) <= np.log(100) + 1e-6) for x in jax.tree_util.tree_leaves(masks))
  assert metrics[-1]['target_sparsity'] == pytest.approx(0.5)
  pruned, _ = trainer.method.pruned(state)
  assert 'l0' not in pruned and set(pruned) >= {'visual', 'textual'}


def test_gradient_accumulation_gives_the_unsplit_loss_and_gradients(teacher_dir, tmp_path):
  """grad_accum_steps=2 through TinyCLIP's own embed and loss (teacher features, one mask
  sample per step for the whole batch, the Lagrangian, learned scales): GradCache equals
  the unsplit step."""
  from clipjax.train.step import accumulated_grads
  c = student_config(teacher_dir, **{
      'model.vision': dict(layers=4, width=64, heads=4), 'model.text': dict(layers=4, width=64, heads=4),
      'tinyclip.logit_scale': 0.0, 'tinyclip.infonce_weight': 0.5, 'grad_accum_steps': 2})
  c.tinyclip.auto = dict(start_sparsity=0.0, target_sparsity=0.5, sparsity_warmup=4,
                         prune_step=100, lr=0.5)
  trainer = Trainer(c, tmp_path)
  state = trainer.initial_state()
  batch = trainer.global_batch(next(trainer.make_loader()))
  rng = jax.random.PRNGKey(3)
  method = trainer.method
  (loss, metrics, _), grads = jax.jit(
      lambda s, b: accumulated_grads(method, s, b, rng, 2))(state, batch)
  (want_loss, want_metrics), want_grads = jax.jit(jax.value_and_grad(
      lambda p, b: method.loss(state.variables(p), state.aux, b, rng)[:2], has_aux=True))(
          state.params, batch)
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
  for key in ('distill_loss', 'infonce_loss', 'lagrangian', 'expected_sparsity'):
    np.testing.assert_allclose(float(metrics[key]), float(want_metrics[key]), rtol=1e-6)
  flat, want_flat = (jax.tree_util.tree_leaves(jax.device_get(g)) for g in (grads, want_grads))
  scale = max(float(np.abs(g).max()) for g in want_flat)
  worst = max(float(np.abs(got - want).max()) for got, want in zip(flat, want_flat)) / scale
  print(f'loss {float(loss):.7f} vs {float(want_loss):.7f}; largest gradient difference '
        f'{worst:.2e} of the largest gradient')
  assert worst < 1e-6
  assert any(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads['l0']['masks']))
