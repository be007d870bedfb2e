"""Tile / num_warps / num_stages sweep of the Pallas kernels against XLA, in one process.

Each variant is compiled, run once (warm-up) and timed as the median of --reps runs of
forward+backward; its gradients are compared with the first variant's (the baseline).
Prints a markdown table with time ratios against the baseline. Peak memory needs one
process per configuration: use benchmarks/losses.py for that.

  python benchmarks/kernel_tiles.py losses --losses clip --sizes 16384 \
      --dtype float32 bfloat16 \
      --variants xla chunked:1024 pallas:64x64:w4:s2 pallas:128x64:w8:s2
  python benchmarks/kernel_tiles.py attention --dtype bfloat16 \
      --variants xla chunked:128 pallas:64:w4:s2 pallas:128:w8:s2

Variants: 'xla'; 'chunked[:BLOCK]'; 'pallas[:ROWSxCOLS or EDGE][:wWARPS][:sSTAGES]
[:kD_CHUNK][:oGRAD_WIDTH]' (attention takes one EDGE for its query and key blocks; k and o
are loss-kernel settings, see clipjax/kernels/pallas_losses.py).
"""
import argparse
import functools
import os
import statistics
import sys
import time


def parse_variant(spec):
  """'pallas:128x64:w8:s2:k64:o256' -> ('pallas', (128, 64), settings): settings are the
  kernel module's constants to override (NUM_WARPS, NUM_STAGES, D_CHUNK, GRAD_WIDTH)."""
  impl, *fields = spec.split(':')
  if impl not in ('xla', 'chunked', 'pallas'):
    raise ValueError(f'kernel_tiles: variant {spec!r}: implementation must be xla, chunked '
                     'or pallas')
  names = {'w': 'NUM_WARPS', 's': 'NUM_STAGES', 'k': 'D_CHUNK', 'o': 'GRAD_WIDTH'}
  block, settings = None, {}
  for f in fields:
    if f[0] in names:
      settings[names[f[0]]] = int(f[1:])
    elif 'x' in f:
      block = tuple(int(v) for v in f.split('x'))
    else:
      block = int(f)
  return impl, block, settings


def _time(fn, args, reps):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _rel_err(got, want):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return max(float(jnp.max(jnp.abs(f32(g) - f32(w))) / jnp.max(jnp.abs(f32(w))))
             for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def _with_settings(module, settings, build):
  """Builds (traces and compiles) with some of the module's constants overridden."""
  saved = {k: getattr(module, k) for k in settings}
  for k, v in settings.items():
    setattr(module, k, v)
  try:
    return build()
  finally:
    for k, v in saved.items():
      setattr(module, k, v)


def loss_step(loss, spec, args):
  """Compiled value_and_grad of one loss variant."""
  import jax  # pylint: disable=g-import-not-at-top
  from clipjax import losses  # pylint: disable=g-import-not-at-top
  from clipjax.kernels import fused, pallas_losses  # pylint: disable=g-import-not-at-top
  impl, block, settings = parse_variant(spec)
  module = losses if impl == 'xla' else fused
  fn = {'clip': module.clip_loss, 'siglip': module.siglip_loss,
        'affinity': module.affinity_mimicking_loss}[loss]
  kwargs = dict(implementation=impl) if impl == 'xla' else dict(implementation=impl, block=block)
  argnums = (0, 1, 4) if loss == 'affinity' else (0, 1, 2)
  step = jax.jit(jax.value_and_grad(functools.partial(fn, **kwargs), argnums=argnums))
  return _with_settings(pallas_losses, settings, lambda: step.lower(*args).compile())


def attention_step(spec, args):
  """Compiled forward + vjp (cotangent d_out) of one masked-attention variant."""
  import jax  # pylint: disable=g-import-not-at-top
  from clipjax.kernels import attention  # pylint: disable=g-import-not-at-top
  impl, block, settings = parse_variant(spec)

  def run(q, k, v, keep, d_out):
    out, vjp = jax.vjp(lambda q, k, v: attention.masked_attention(
        q, k, v, keep, implementation=impl, block=block), q, k, v)
    return out, vjp(d_out)

  return _with_settings(attention, settings, lambda: jax.jit(run).lower(*args).compile())


def _row(cells):
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def sweep(build, args, variants, reps, head):
  """Rows (head + variant, ms, ratio, error) for every variant; the first is the baseline."""
  rows, base = [], None
  for spec in variants:
    try:
      step = build(spec)
      out = step(*args)
      seconds = _time(step, args, reps)
    except Exception as e:  # pylint: disable=broad-except  (a failed compile is a result)
      rows.append(_row(head + [spec, f'error: {type(e).__name__}: {str(e)[:120]}', '', '']))
      print(rows[-1], file=sys.stderr, flush=True)
      continue
    if base is None:
      base = (seconds, out)
    rows.append(_row(head + [spec, f'{1e3 * seconds:.2f}', f'{seconds / base[0]:.2f}',
                             f'{_rel_err(out, base[1]):.1e}']))
    print(rows[-1], file=sys.stderr, flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('what', choices=('losses', 'attention'))
  parser.add_argument('--variants', nargs='+', required=True, help='the first is the baseline')
  parser.add_argument('--losses', nargs='+', default=['clip'])
  parser.add_argument('--sizes', type=int, nargs='+', default=[16384])
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--dtype', nargs='+', default=['float32'])
  parser.add_argument('--attention_shape', type=int, nargs=4, default=[256, 197, 12, 64],
                      metavar=('B', 'T', 'H', 'D'))
  parser.add_argument('--keep', type=float, default=0.5, help='fraction of kept keys')
  parser.add_argument('--reps', type=int, default=10)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}', flush=True)
  lines = []
  if args.what == 'losses':
    from benchmarks.losses import _inputs  # pylint: disable=g-import-not-at-top
    lines += ['| loss | B | dtype | variant | fwd+bwd ms | time / baseline '
              '| grad err vs baseline |', '|---|---|---|---|---|---|---|']
    for loss in args.losses:
      for batch in args.sizes:
        for dtype in args.dtype:
          inputs = _inputs(loss, batch, args.dim, dtype)
          lines += sweep(lambda spec, loss=loss, inputs=inputs: loss_step(loss, spec, inputs),
                         inputs, args.variants, args.reps, [loss, batch, dtype])
  else:
    b, t, h, d = args.attention_shape
    lines += ['| B,T,H,D | dtype | variant | fwd+bwd ms | time / baseline | err vs baseline |',
              '|---|---|---|---|---|---|']
    for dtype in args.dtype:
      keys = jax.random.split(jax.random.PRNGKey(0), 5)
      q, k, v, d_out = (jax.random.normal(key, (b, t, h, d), jnp.float32).astype(dtype)
                        for key in keys[:4])
      keep = (jax.random.uniform(keys[4], (b, t)) < args.keep).at[:, 0].set(True)
      inputs = (q, k, v, keep, d_out)
      lines += sweep(lambda spec, inputs=inputs: attention_step(spec, inputs), inputs,
                     args.variants, args.reps, [f'{b},{t},{h},{d}', dtype])
  print('\n'.join(lines))


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  main()
