"""Time and peak memory of forward+backward of the contrastive losses, per implementation.

Each (batch, implementation) runs in its own subprocess so its peak memory is not
polluted by the others: on GPU the allocator's peak device bytes, elsewhere the peak RSS
(the memory the process really touched, compile included). Prints a markdown table with
ratios against "xla"; "xla" is skipped where its B x B matrices would not fit in
--max_xla_gb, and interpreted Pallas (on a CPU) above --max_interpret. Time is the median
of --reps runs after one warm-up run (the minimum on CPU, where other jobs add noise).

  nice -n 10 python benchmarks/losses.py --sizes 1024 4096 16384 65536
  python benchmarks/losses.py --check 4096       # chunked/pallas grads vs xla
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

LOSSES = ('clip', 'siglip', 'affinity')


def _inputs(loss, batch, dim, dtype):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  unit = lambda k: (lambda a: a / jnp.linalg.norm(a, axis=1, keepdims=True))(
      jax.random.normal(k, (batch, dim), jnp.float32)).astype(dtype)
  embs = [unit(k) for k in keys[:4 if loss == 'affinity' else 2]]
  scalars = {'clip': (14.3,), 'siglip': (10.0, -10.0), 'affinity': (50.0, 50.0)}[loss]
  return embs + [jnp.float32(s) for s in scalars]


def _step(loss, implementation):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from clipjax import losses  # pylint: disable=g-import-not-at-top
  fn = {'clip': losses.clip_loss, 'siglip': losses.siglip_loss,
        'affinity': losses.affinity_mimicking_loss}[loss]
  fn = functools.partial(fn, implementation=implementation)
  argnums = (0, 1, 4) if loss == 'affinity' else (0, 1, 2)
  return jax.jit(jax.value_and_grad(fn, argnums=argnums))


def run_one(loss, batch, dim, implementation, dtype, reps):
  """Compiles and times one configuration in this process; returns a result dict."""
  import jax  # pylint: disable=g-import-not-at-top
  args = _inputs(loss, batch, dim, dtype)
  jax.block_until_ready(args)
  step = _step(loss, implementation).lower(*args).compile()
  on_gpu = jax.default_backend() == 'gpu'
  if on_gpu:
    jax.block_until_ready(step(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  if on_gpu:
    peak_gb = jax.devices()[0].memory_stats()['peak_bytes_in_use'] / 2**30
  else:
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
  seconds = statistics.median(times) if on_gpu else min(times)
  return dict(loss=loss, batch=batch, dim=dim, impl=implementation, dtype=dtype,
              seconds=seconds, peak_gb=peak_gb, backend=jax.default_backend())


def check_grads(loss, batch, dim):
  """Max |grad - ref| / max |ref| per implementation at JAX's default matmul precision
  (TF32 for float32 on recent GPUs), ref being 'xla' with float32 ('highest') matmuls."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  args = _inputs(loss, batch, dim, 'float32')
  with jax.default_matmul_precision('highest'):
    want = _step(loss, 'xla')(*args)
  out = {}
  for impl in ('xla', 'chunked', 'pallas'):
    got = _step(loss, impl)(*args)
    errs = [float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
    out[impl] = dict(loss_value=float(got[0]), loss_ref=float(want[0]), max_rel_err=max(errs))
  return out


def _subprocess(loss, batch, dim, impl, dtype, reps):
  cmd = [sys.executable, __file__, '--one', loss, str(batch), str(dim), impl, dtype, str(reps)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    lines = proc.stderr.strip().splitlines() or [f'exit code {proc.returncode}']
    return dict(loss=loss, batch=batch, impl=impl, dtype=dtype, error=lines[-1])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _xla_fits(batch, max_gb):
  return 4 * 4 * batch * batch / 2**30 <= max_gb  # ~4 live float32 B x B arrays


def table(results, memory='peak RSS GB'):
  xla = {(r['loss'], r['batch'], r.get('dtype')): r
         for r in results if r['impl'] == 'xla' and 'seconds' in r}
  lines = [f'| loss | B | dtype | impl | fwd+bwd ms | {memory} | time / xla | memory / xla |',
           '|---|---|---|---|---|---|---|---|']
  for r in results:
    head = f"| {r['loss']} | {r['batch']} | {r.get('dtype', '')} | {r['impl']} |"
    if 'error' in r:
      lines.append(f"{head} error: {r['error'][:60]} | | | |")
      continue
    ref = xla.get((r['loss'], r['batch'], r['dtype']))
    ratio = lambda k, ref=ref, r=r: f'{r[k] / ref[k]:.2f}' if ref else 'xla skipped'
    lines.append(f"{head} {1e3 * r['seconds']:.2f} | {r['peak_gb']:.2f} | {ratio('seconds')} | "
                 f"{ratio('peak_gb')} |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[1024, 4096, 16384, 65536])
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--losses', nargs='+', default=['clip'], choices=LOSSES)
  parser.add_argument('--impls', nargs='+', default=['xla', 'chunked', 'pallas'])
  parser.add_argument('--dtype', nargs='+', default=['float32'], help='float32 and/or bfloat16')
  parser.add_argument('--reps', type=int, default=3,
                      help='timed runs (median on GPU; min, and 1 above 8k, on CPU)')
  parser.add_argument('--max_xla_gb', type=float, default=8.0)
  parser.add_argument('--max_interpret', type=int, default=4096,
                      help='largest B for Pallas in interpret mode (on a CPU)')
  parser.add_argument('--check', type=int, help='only compare gradients at this B')
  parser.add_argument('--one', nargs=6, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.one:
    loss, batch, dim, impl, dtype, reps = args.one
    print(json.dumps(run_one(loss, int(batch), int(dim), impl, dtype, int(reps))))
    return
  if args.check:
    for loss in args.losses:
      print(loss, json.dumps(check_grads(loss, args.check, args.dim)))
    return

  import jax  # pylint: disable=g-import-not-at-top
  from clipjax.kernels import target  # pylint: disable=g-import-not-at-top
  on_gpu = jax.default_backend() == 'gpu'
  interpreted = target.current()[1]
  results = []
  for loss in args.losses:
    for batch in args.sizes:
      for impl in args.impls:
        if impl == 'xla' and not _xla_fits(batch, args.max_xla_gb):
          continue
        if impl == 'pallas' and interpreted and batch > args.max_interpret:
          continue
        reps = args.reps if batch <= 8192 or on_gpu else 1
        for dtype in args.dtype:
          results.append(_subprocess(loss, batch, args.dim, impl, dtype, reps))
          print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(table(results, 'peak GPU GB' if on_gpu else 'peak RSS GB'))


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  main()
