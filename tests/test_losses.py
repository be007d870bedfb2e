"""Losses against float64 numpy (values and analytic gradients) and under a simulated mesh."""
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import losses

IMPLS = ('xla', 'chunked', 'pallas')


def _lse(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _softmax(x, axis):
  return np.exp(x - _lse(x, axis)[(slice(None), None) if axis == 1 else (None, slice(None))])


def np_clip(x, y, s):
  """Loss and (dx, dy, ds) of symmetric InfoNCE in float64."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  sim = x @ y.T
  logits = s * sim
  n = len(x)
  diag = np.diag(logits)
  loss = 0.5 * ((_lse(logits, 1) - diag).mean() + (_lse(logits, 0) - diag).mean())
  g = 0.5 / n * (_softmax(logits, 1) + _softmax(logits, 0) - 2 * np.eye(n))
  return loss, (s * g @ y, s * g.T @ x, np.sum(g * sim))


def np_siglip(x, y, s, b):
  """Loss and (dx, dy, ds, db) of the sigmoid loss in float64."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  sim = x @ y.T
  logits = s * sim + b
  n = len(x)
  z = 2 * np.eye(n) - 1
  loss = np.logaddexp(0, -z * logits).sum() / n
  g = -z * np.exp(-np.logaddexp(0, z * logits)) / n
  return loss, (s * g @ y, s * g.T @ x, np.sum(g * sim), np.sum(g))


def np_affinity(xs, ys, xt, yt, ss, st):
  """Loss and student (dxs, dys, dss) of the affinity-mimicking loss in float64."""
  xs, ys, xt, yt = (a.astype(np.float64) for a in (xs, ys, xt, yt))
  sim = xs @ ys.T
  a, t = ss * sim, st * (xt @ yt.T)
  n = len(xs)
  pr, pc = _softmax(t, 1), _softmax(t, 0)
  qr, qc = _softmax(a, 1), _softmax(a, 0)
  log_qr, log_qc = a - _lse(a, 1)[:, None], a - _lse(a, 0)[None, :]
  loss = 0.5 * (-(pr * log_qr).sum(1).mean() - (pc * log_qc).sum(0).mean())
  g = 0.5 / n * (qr - pr + qc - pc)
  return loss, (ss * g @ ys, ss * g.T @ xs, np.sum(g * sim))


def embeddings(seed, n, d, norm=1.0, dtype=np.float32, correlated=True):
  """Unit-norm (times `norm`) image/text embeddings whose diagonal pairs are similar."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = (x + rng.normal(size=(n, d))) if correlated else rng.normal(size=(n, d))
  unit = lambda a: norm * a / np.linalg.norm(a, axis=1, keepdims=True)
  return unit(x).astype(dtype), unit(y).astype(dtype)


def assert_leaves_close(got, want, rel):
  """Each leaf (loss, then each gradient) within `rel` of its own largest entry.

  Per leaf, so a small gradient (the temperature's) is not hidden behind a large one, and
  relative, so all-zero or 0.9x-scaled gradients fail at every temperature.
  """
  for i, (g, w) in enumerate(zip(got, want)):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    err, bound = np.abs(g - w).max(), rel * np.abs(w).max()
    assert err <= bound, f'leaf {i}: max error {err:.2e} > {bound:.2e} ({rel:g} of its largest entry)'


# (scale, embedding norm): default CLIP scale, tiny and maximal temperatures, and
# logits of +-1e4 whose naive exp overflows float32 (and float64); each with ~10x the
# worst error measured over the three implementations and the three losses, relative to
# each leaf's largest entry (3.5e-6, 1.0e-6, 1.0e-5, 1.4e-6 measured).
TEMPERATURES = {(1 / 0.07, 1.0): 3e-5, (1e-3, 1.0): 1e-5, (100.0, 1.0): 1e-4, (100.0, 10.0): 1.5e-5}


def _clip_case(scale, norm, impl):
  x, y = embeddings(0, 13, 8, norm)
  want, want_grads = np_clip(x, y, scale)
  fn = functools.partial(losses.clip_loss, implementation=impl)
  got = jax.value_and_grad(fn, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(y),
                                                   jnp.float32(scale))
  return got, (want, want_grads)


def _siglip_case(scale, norm, impl):
  x, y = embeddings(1, 11, 8, norm)
  want, want_grads = np_siglip(x, y, scale, -10.0)
  fn = functools.partial(losses.siglip_loss, implementation=impl)
  got = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))(
      jnp.asarray(x), jnp.asarray(y), jnp.float32(scale), jnp.float32(-10.0))
  return got, (want, want_grads)


def _affinity_case(scale, norm, impl):
  xs, ys = embeddings(2, 12, 8, norm)
  xt, yt = embeddings(3, 12, 16, norm)
  want, want_grads = np_affinity(xs, ys, xt, yt, scale, 50.0)
  fn = functools.partial(losses.affinity_mimicking_loss, implementation=impl)
  loss, grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4, 5))(
      *map(jnp.asarray, (xs, ys, xt, yt)), jnp.float32(scale), jnp.float32(50.0))
  for g in grads[2:4] + grads[5:]:  # the teacher is a constant target
    assert not np.any(np.asarray(g))
  return (loss, grads[:2] + grads[4:5]), (want, want_grads)


CASES = {'clip': _clip_case, 'siglip': _siglip_case, 'affinity': _affinity_case}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('scale,norm', sorted(TEMPERATURES))
@pytest.mark.parametrize('case', sorted(CASES))
def test_loss_matches_numpy(case, scale, norm, impl):
  (loss, grads), (want, want_grads) = CASES[case](scale, norm, impl)
  assert np.isfinite(float(loss))
  assert_leaves_close((loss,) + tuple(grads), (want,) + tuple(want_grads),
                      TEMPERATURES[scale, norm])


@pytest.mark.parametrize('scale,norm', sorted(TEMPERATURES))
@pytest.mark.parametrize('case', sorted(CASES))
def test_a_gradient_off_by_a_tenth_fails(case, scale, norm):
  """The check above can fail: any one gradient scaled by 0.9 is caught at every temperature."""
  (loss, grads), (want, want_grads) = CASES[case](scale, norm, 'xla')
  for i in range(len(grads)):
    mutated = tuple(g * 0.9 if j == i else g for j, g in enumerate(grads))
    with pytest.raises(AssertionError, match=f'leaf {i + 1}'):
      assert_leaves_close((loss,) + mutated, (want,) + tuple(want_grads),
                          TEMPERATURES[scale, norm])


def test_affinity_equals_kl_plus_teacher_entropy():
  """The soft CE is KL(teacher||student) plus the teacher's entropy (why TinyCLIP optimises it)."""
  xs, ys = embeddings(4, 9, 8)
  xt, yt = embeddings(5, 9, 8)
  ce = float(losses.affinity_mimicking_loss(xs, ys, xt, yt, 10.0, 10.0))
  same = float(losses.affinity_mimicking_loss(xt, yt, xt, yt, 10.0, 10.0))
  t = 10.0 * xt.astype(np.float64) @ yt.T
  entropy = 0.5 * (-(_softmax(t, 1) * np.log(_softmax(t, 1))).sum(1).mean()
                   - (_softmax(t, 0) * np.log(_softmax(t, 0))).sum(0).mean())
  np.testing.assert_allclose(same, entropy, rtol=1e-5)
  assert ce > same


MESH_SCRIPT = textwrap.dedent('''
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  import contextlib
  from clipjax import losses
  from clipjax.kernels import target
  assert jax.device_count() == 8
  impls = json.loads(sys.argv[1])
  rng = np.random.default_rng(0)
  n, d = 48, 16
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  xs, ys, xt, yt = (jnp.asarray(unit(rng.normal(size=(n, d))), jnp.float32) for _ in range(4))
  # 'chunked+ring': implementation 'chunked' with collective 'ring'; 'pallas_tpu' is
  # 'pallas' in the TPU layout (JAX's TPU interpreter).
  kw = lambda impl: dict(zip(('implementation', 'collective'),
                             impl.replace('pallas_tpu', 'pallas').split('+')))
  cases = {
    'clip': (lambda a, b, c, e, s, impl: losses.clip_loss(a, b, s, **kw(impl))),
    'siglip': (lambda a, b, c, e, s, impl: losses.siglip_loss(a, b, s, -s, **kw(impl))),
    'affinity': (lambda a, b, c, e, s, impl: losses.affinity_mimicking_loss(
        a, b, c, e, s, 50.0, **kw(impl))),
  }
  scale = jnp.float32(14.3)
  wants = {name: jax.value_and_grad(fn, argnums=(0, 1, 4))(xs, ys, xt, yt, scale, 'xla')
           for name, fn in cases.items()}
  out = {}
  for shape in ({'data': 8}, {'data': 2, 'fsdp': 4}, {'data': 2, 'fsdp': 2, 'tensor': 2}):
    mesh = jax.make_mesh(tuple(shape.values()), tuple(shape.keys()),
                         axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
    batch = NamedSharding(mesh, P(('data', 'fsdp') if 'fsdp' in shape else 'data'))
    args = [jax.device_put(a, batch) for a in (xs, ys, xt, yt)]
    for name, fn in cases.items():
      want = wants[name]
      for impl in impls:
        if impl.startswith('pallas') and len(shape) < 3:  # interpreted: slow; 3 axes suffice
          continue
        on_tpu = (target.use('tpu', interpret=True) if impl.startswith('pallas_tpu')
                  else contextlib.nullcontext())
        with jax.set_mesh(mesh), on_tpu:
          step = jax.value_and_grad(fn, argnums=(0, 1, 4))
          if impl != 'xla':  # the lean paths must run per device, not via GSPMD
            assert 'shard_map' in str(jax.make_jaxpr(step, static_argnums=5)(*args, scale, impl))
          got = jax.jit(step, static_argnums=5)(*args, scale, impl)
        err = max(float(jnp.max(jnp.abs(g - w))) for g, w in
                  zip(jax.tree.leaves(got), jax.tree.leaves(want)))
        out[f'{shape} {name} {impl}'] = err
  # An explicit mesh= works without jax.set_mesh; a batch that does not split is refused.
  explicit = jax.jit(lambda a, b: losses.clip_loss(a, b, 14.3, implementation='chunked',
                                                   mesh=mesh))(*args[:2])
  out['explicit mesh='] = float(jnp.abs(explicit - wants['clip'][0]))
  try:
    losses.clip_loss(xs[:42], ys[:42], 14.3, implementation='chunked', mesh=mesh)
    out['indivisible batch refused'] = 1.0
  except ValueError as e:
    out['indivisible batch refused'] = 0.0 if 'does not split' in str(e) else 1.0
  print(json.dumps(out))
''')


def run_on_8_devices(impls, script=MESH_SCRIPT):
  """Runs `script` with 8 simulated CPU devices; returns the JSON it prints last
  (MESH_SCRIPT: {case: max abs error})."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script, json.dumps(impls)],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_equals_single_device():
  """Gathered and ring paths, 8 devices over one, two and three mesh axes (interpreted
  Pallas on the three-axis mesh only; its TPU layout in the ring, which runs the same
  kernels under shard_map as the gather)."""
  errors = run_on_8_devices(list(IMPLS) + ['chunked+ring', 'pallas+ring', 'pallas_tpu+ring'])
  assert len(errors) == 9 * (len(IMPLS) - 1) + 3 + 9 + 3 * 2 + 2
  assert sum('ring' in case for case in errors) == 15
  for case, err in errors.items():
    assert err < 5e-5, (case, err)


RING_MEMORY_SCRIPT = textwrap.dedent('''
  import functools, json
  import jax, jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from clipjax import losses
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  cases = {'clip': (losses.clip_loss, 2, 1), 'siglip': (losses.siglip_loss, 2, 2),
           'affinity': (losses.affinity_mimicking_loss, 4, 2)}
  out = {}
  for devices in (4, 8):
    mesh = jax.make_mesh((devices,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:devices])
    emb = jax.ShapeDtypeStruct((devices * 4096, 512), jnp.float32,
                               sharding=NamedSharding(mesh, P('data')))
    for name, (fn, num_emb, num_scalars) in cases.items():
      for collective in ('gather', 'ring'):
        loss = functools.partial(fn, implementation='chunked', mesh=mesh, collective=collective)
        step = jax.jit(jax.value_and_grad(loss, (0, 1)))
        compiled = step.lower(*[emb] * num_emb, *[scalar] * num_scalars).compile()
        out[f'{name} {collective} {devices}'] = (
            compiled.memory_analysis().temp_size_in_bytes / 2**20)
  print(json.dumps(out))
''')


def test_ring_holds_no_gathered_columns():
  """Compiled per-device temporaries with 4096 rows of D = 512 per device (float32, 8 MB
  per local embedding array) on 4 and on 8 devices: the gather's grow with the global
  batch (it holds the gathered columns and their gradient), the ring's stay put."""
  mb = run_on_8_devices(None, RING_MEMORY_SCRIPT)
  print({key: round(value) for key, value in mb.items()})  # MB: kernels/README.md's table
  for name in ('clip', 'siglip', 'affinity'):
    gather, ring = mb[f'{name} gather 8'], mb[f'{name} ring 8']
    assert ring < 0.5 * gather, mb
    assert gather > 1.5 * mb[f'{name} gather 4'], mb
    assert ring < 1.05 * mb[f'{name} ring 4'], mb
