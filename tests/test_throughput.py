"""Model FLOPs and MFU in every run's metrics (clipjax/train/throughput.py)."""
import json
import time
import types

import jax
import pytest

from clipjax import sharding
from clipjax.train import throughput
from clipjax.train import loop
from clipjax.train.loop import Trainer
from tests.test_train import tiny_config


def test_a_run_logs_model_flops_and_mfu(tmp_path):
  """Every logged row carries TFLOP/s per device and MFU; the step's model FLOPs are the
  compiled step's count (within 2%), and neither accumulation nor remat changes them."""
  config = tiny_config(total_steps=4, log_every=2, checkpoint_every=4)
  trainer = Trainer(config, tmp_path / 'run')
  trainer.train()
  rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert len(rows) == 2 and all(r['tflops_per_device'] > 0 and 0 < r['mfu'] <= 1 for r in rows)
  state = trainer.initial_state()
  batch = sharding.global_batch(next(trainer.make_loader()), trainer.mesh)
  flops = trainer.step_flops(state, batch)
  cost = trainer.train_step.lower(state, batch).compile().cost_analysis()
  compiled = (cost[0] if isinstance(cost, list) else cost)['flops']
  assert flops == pytest.approx(compiled, rel=0.02)
  row = rows[-1]
  assert row['tflops_per_device'] == pytest.approx(
      flops * row['examples_per_sec'] / config.batch_size / jax.device_count() / 1e12, rel=1e-6)
  for overrides in ({'grad_accum_steps': 2}, {'model.remat': True}):
    other = Trainer(tiny_config(**overrides), tmp_path / str(overrides))
    assert other.step_flops(other.initial_state(), batch) == pytest.approx(flops, rel=1e-6)


def test_peaks_come_from_the_config_the_table_or_a_measurement():
  device = lambda kind, platform='gpu': types.SimpleNamespace(device_kind=kind, platform=platform)
  assert throughput.peak_flops(device('NVIDIA H100 80GB HBM3'))[0] == 989e12
  assert throughput.peak_flops(device('NVIDIA H100 PCIe'))[0] == 756e12
  assert throughput.peak_flops(device('TPU v5 lite', 'tpu'))[0] == 197e12
  assert throughput.peak_flops(device('TPU v5', 'tpu'))[0] == 459e12
  assert throughput.peak_flops(device('NVIDIA H100 80GB HBM3'), 1e15) == (
      1e15, 'config.peak_flops_per_device')
  assert throughput.peak_flops(device('Some NPU', 'npu'))[0] == 0.0
  peak, source = throughput.peak_flops(device('cpu', 'cpu'))
  assert 1e9 < peak < 1e14 and 'measured' in source
  # Once per process: every run of a study divides by the same figure.
  assert throughput.peak_flops(device('cpu', 'cpu')) == (peak, source)


def test_the_cpu_peak_is_the_best_over_its_time_budget():
  start = time.perf_counter()
  peak = throughput.matmul_peak_flops(256, seconds=0.2)
  assert time.perf_counter() - start >= 0.2 and 1e8 < peak < 1e14


def test_a_second_run_loads_the_programs_the_first_compiled(tmp_path, python_subprocess):
  """`compilation_cache_dir` (on by default): a repeated or resumed run reads the cache."""
  code = '''
  import jax, jax.monitoring
  from clipjax.train.loop import Trainer
  from tests.test_train import tiny_config
  hits = []
  jax.monitoring.register_event_listener(
      lambda event, **kw: hits.append(1) if event == '/jax/compilation_cache/cache_hits' else None)
  config = tiny_config(total_steps=2, log_every=1, checkpoint_every=2,
                       compilation_cache_dir='{cache}')
  Trainer(config, '{workdir}').train()
  print(len(hits))
  '''
  env = {'JAX_COMPILATION_CACHE_DIR': '', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  hits = [int(python_subprocess(code.format(cache=tmp_path / 'cache', workdir=tmp_path / run),
                                env=env).split()[-1]) for run in ('first', 'second')]
  assert hits[0] == 0 and any((tmp_path / 'cache').iterdir()) and hits[1] > 0


def test_a_cache_given_to_jax_is_kept():
  given = jax.config.jax_compilation_cache_dir  # tests/conftest.py's
  assert given
  loop.use_compilation_cache('/elsewhere')
  assert jax.config.jax_compilation_cache_dir == given


class _Loader:
  """The run's loader with its batches fetched ahead (no wait) or each delayed."""

  def __init__(self, loader, delay):
    self.loader, self.delay = loader, delay
    self.ready = [next(loader) for _ in range(6)] if delay == 0 else None

  def __iter__(self):
    if self.ready is not None:
      yield from self.ready
    for batch in self.loader:
      time.sleep(self.delay)
      yield batch

  def __getattr__(self, name):
    return getattr(self.loader, name)


@pytest.mark.parametrize('delay', [0, 0.25])
def test_the_input_wait_is_the_share_of_time_spent_getting_batches(tmp_path, monkeypatch,
                                                                     delay):
  """`input_wait` in metrics.jsonl: about 1 when every batch is late, about 0 when batches
  are ready before the step asks (the step is dispatched asynchronously)."""
  make_loader = Trainer.make_loader
  monkeypatch.setattr(Trainer, 'make_loader', lambda self: _Loader(make_loader(self), delay))
  Trainer(tiny_config(total_steps=6, log_every=3, checkpoint_every=6), tmp_path).train()
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  waits = [r['input_wait'] for r in rows]
  assert len(waits) == 2
  if delay:
    assert all(0.8 < w <= 1 for w in waits), waits
  else:
    assert all(0 <= w < 0.1 for w in waits), waits
