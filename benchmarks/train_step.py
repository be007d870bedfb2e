"""Train-step throughput and MFU for the quickstart model and ViT-B/16 shapes.

  python benchmarks/train_step.py                     # CPU: peak = measured f32 matmul rate
  python benchmarks/train_step.py --peak_tflops 989   # e.g. H100 bf16 dense peak

Model FLOPs per example are what every run logs (`Trainer.step_flops`: XLA's count for
the lowered step, forward + backward + optimizer, without accumulation or remat) divided
by the batch size. The compiled step's count on GPU (jax 0.11.2) was far too low (7.3
GFLOP/example for ViT-B/16 against 124 on CPU, where it matches the analytic ~123); the
lowered count has not been checked on a GPU yet. MFU = achieved model FLOP/s / peak.
The first (compiling) step is excluded from timing.
"""
import argparse
import tempfile
import time
from pathlib import Path

import jax

from clipjax import sharding
from clipjax.config_base import load_config
from clipjax.train import throughput
from clipjax.train.loop import Trainer

CASES = {
    'quickstart (tiny, 32px)': dict(model=dict(name='tiny', image_size=32, patch_size=8,
                                               context_length=24), batch_size=64),
    'ViT-B/16 (224px, text 77)': dict(model=dict(name='ViT-B/16', image_size=224, patch_size=16,
                                                 context_length=77), batch_size=8),
}


QUICKSTART = Path(__file__).resolve().parents[1] / 'configs/quickstart.py'


def bench(name, case, steps, dtype, peak, batch_size=None):
  c = load_config(str(QUICKSTART))
  c.model.update(case['model'])
  c.model.dtype = dtype
  c.batch_size = batch_size or case['batch_size']
  c.data.train_num_samples = 1000
  c.tokenizer.train_captions = 200
  c.evals = {}
  trainer = Trainer(c, tempfile.mkdtemp())
  batch = sharding.global_batch(next(trainer.make_loader()), trainer.mesh)
  state = trainer.initial_state()
  flops = trainer.step_flops(state, batch)  # what every run's MFU counts
  state, m = trainer.train_step(state, batch)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = trainer.train_step(state, batch)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  return dict(name=name, batch=c.batch_size, step_ms=dt * 1e3, ex_s=c.batch_size / dt,
              gflop_ex=flops / c.batch_size / 1e9, mfu=flops / dt / peak)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='accelerator peak; default: measured f32 matmul rate of this machine')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--only', default='', help='substring of a case name')
  p.add_argument('--batch_size', type=int, default=None,
                 help="override every case's batch (the defaults are CPU-sized)")
  a = p.parse_args()
  peak = a.peak_tflops * 1e12 if a.peak_tflops else throughput.matmul_peak_flops()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}   peak: {peak / 1e12:.3f} '
        f'TFLOP/s ({"given" if a.peak_tflops else "measured 1024^3 f32 matmul, as runs do"})   dtype: {a.dtype}')
  print(f'| {"model":28s} | batch | step ms | examples/s | GFLOP/example | MFU |')
  print('|' + '---|' * 6)
  for name, case in CASES.items():
    if a.only in name:
      r = bench(name, case, a.steps, a.dtype, peak, a.batch_size)
      print(f'| {r["name"]:28s} | {r["batch"]:5d} | {r["step_ms"]:7.1f} | {r["ex_s"]:10.1f} | '
            f'{r["gflop_ex"]:13.2f} | {100 * r["mfu"]:.1f}% |', flush=True)


if __name__ == '__main__':
  main()
