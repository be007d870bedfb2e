"""Model FLOPs per step and MFU, logged by every run (MaxText's "TFLOP/s/device").

Model FLOPs are XLA's count for one optimizer step on the global batch, taken from the
lowered (not yet optimised or partitioned) program of the step without gradient
accumulation or rematerialisation: what the model needs, not what the hardware redoes.
(The compiled program's count on GPU misses the work inside library calls; the lowered
one counts every dot.) MFU divides the achieved model FLOP/s per device by the device's
peak: dense bf16 from the vendors' tables below, `config.peak_flops_per_device` when
set, and on a CPU the best rate of a 1024^3 float32 matmul measured by the first run of
the process.
"""
import functools
import time

import jax
import jax.numpy as jnp

# (substring of jax's device_kind, dense bf16 FLOP/s); the first match wins.
PEAK_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
    ('B200', 2250e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),
)


def matmul_peak_flops(n: int = 1024, dtype=jnp.float32, seconds: float = 0.5) -> float:
  """Best rate of n^3 matmuls repeated for `seconds` (at least 5): the best of many short
  ones is the least disturbed by other work on the host. Beside two bursty processes on
  2 cores the best of 5 (about 50 ms) gave 87-214 GFLOP/s and 0.5 s gave 146-216, idle
  196-216 (`python benchmarks/cpu_peak.py`, two runs, 2026-12-02)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best, reps, start = float('inf'), 0, time.perf_counter()
  while reps < 5 or time.perf_counter() - start < seconds:
    t = time.perf_counter()
    f(a).block_until_ready()
    best, reps = min(best, time.perf_counter() - t), reps + 1
  return 2 * n ** 3 / best


@functools.cache
def _host_peak() -> float:
  """Measured once per process: the runs of a study or a notebook share one figure."""
  return matmul_peak_flops()


def peak_flops(device, configured: float = 0.0) -> tuple:
  """(peak FLOP/s of one device, where the figure comes from)."""
  if configured:
    return float(configured), 'config.peak_flops_per_device'
  for name, peak in PEAK_FLOPS:
    if name in device.device_kind:
      return peak, f'{device.device_kind} dense bf16'
  if device.platform == 'cpu':
    return _host_peak(), 'measured 1024^3 float32 matmul'
  return 0.0, f'unknown peak for {device.device_kind!r} (set config.peak_flops_per_device)'


def lowered_flops(jitted, *args) -> float:
  """XLA's FLOP count of `jitted` on `args`, before optimisation and partitioning."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get('flops', 0.0))
