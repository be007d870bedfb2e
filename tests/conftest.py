"""Shared test helpers: subprocesses with a simulated multi-device CPU mesh."""
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from clipjax import host_allocator

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow(minutes=0): longer end-to-end tests, left out of the README\'s test '
      'command and run after it by .ci/run; `minutes` (on a 2-core VM) puts the longest first')
  # Many tests compile the same tiny programs (one Trainer: ~8 s, 2 s from the cache), in
  # both xdist workers and their subprocesses: share JAX's persistent compilation cache.
  # A cached executable is the one a fresh compile gives, so results are bit for bit the same.
  # Compilation is most of the suite's CPU time (tests/test_tinyclip.py: 60 s of XLA
  # compiles and 20 s of tracing and lowering in a 90 s run), so every program is cached,
  # the small ones too: tinyclip, flame, stages and cli tests with `-n 2` took 224-228 s
  # against 238-243 s when only compiles over 0.5 s were kept.
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                        os.path.join(tempfile.gettempdir(), f'clipjax-tests-jax-cache-{os.getuid()}'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  # The CLI's malloc setting (clipjax/host_allocator.py) for the tests' own training runs
  # (`pytest tests/test_quickstart.py -k siglip`, twice each way: 32.6-33.0 s without,
  # 27.3-29.3 s with). glibc reads it when a process starts, so it reaches the xdist
  # workers and subprocesses started after this, not this process.
  if host_allocator.wanted():
    os.environ['GLIBC_TUNABLES'] = host_allocator.TUNABLES


def pytest_collection_modifyitems(items):
  """Longest first: xdist hands tests out in this order (one at a time with
  `--maxschedchunk 1`), so no 29-minute study starts last and leaves one worker busy while
  the other idles (list.sort is stable: the same order on every worker)."""
  def minutes(item):
    slow = item.get_closest_marker('slow')
    return slow.kwargs.get('minutes', 0) if slow else 0
  items.sort(key=lambda item: -minutes(item))


def run_python(code: str, devices: int = 1, timeout: int = 600, env=None) -> str:
  """Runs `code` in a fresh interpreter with `devices` simulated CPU devices; returns stdout."""
  full_env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
                  JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT), **(env or {}))
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=timeout, env=full_env, cwd=ROOT)
  if proc.returncode:
    raise AssertionError(f'subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}')
  return proc.stdout


@pytest.fixture
def python_subprocess():
  return run_python


@pytest.fixture
def run_notebook(monkeypatch):
  """Executes notebooks/<name> with nbclient; `env` reaches the kernel (tiny settings)."""
  def run(name: str, env: dict):
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    for key, value in dict(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu').items():
      monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(ROOT / 'notebooks' / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(ROOT / 'notebooks')}}).execute()
    return notebook
  return run


def assert_within_seeds(got: dict, published: dict, floor: float = 0.0) -> None:
  """Each published figure's run `got[key]` within its runs' range `published[key]`,
  widened by half of it (at least `floor`): XLA compiles for the host's CPU, so a run's
  figures move with the CPU as with the seed, and a CI machine reruns one seed of what a
  study measured on several."""
  assert set(got) >= set(published), sorted(set(published) - set(got))
  for key, seeds in published.items():
    low, high = min(seeds), max(seeds)
    margin = max((high - low) / 2, floor)
    assert low - margin <= got[key] <= high + margin, (key, got[key], seeds)


def assert_accumulation_and_resume_exact(trainer, atol: float = 2e-5) -> None:
  """`trainer(name, **overrides)` -> a Trainer of a 4-step run in its own workdir:
  accumulating 4 micro-batches takes the unsplit steps (to `atol`), and a run stopped at
  step 2 resumes to the uninterrupted one bit for bit."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  whole = trainer('whole')
  whole.train()
  first = trainer('split', stop_at_step=2)
  first.train()
  accum = trainer('accum', stop_at_step=2, grad_accum_steps=4)
  accum.train()
  for a, b in zip(jax.tree_util.tree_leaves(first.state.params),
                  jax.tree_util.tree_leaves(accum.state.params)):
    np.testing.assert_allclose(a, b, atol=atol)
  rest = trainer('split')
  rest.train()
  for a, b in zip(jax.tree_util.tree_leaves(whole.state.params),
                  jax.tree_util.tree_leaves(rest.state.params)):
    np.testing.assert_array_equal(a, b)
