"""A reader killed with SIGKILL and restarted from its last saved state continues the
exact sample order (tar shards, two grain worker processes)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipjax.data import make_shards

READER = r'''
import json, os, sys, time
from clipjax.data import pipeline, transforms
from clipjax.data.tokenizer import Tokenizer

def main():
  pattern, out, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
  source = pipeline.make_source({'format': 'wds', 'train': pattern,
                                 'extra_columns': {'sid': 'json.index:int'}}, image_size=16)
  loader = pipeline.make_train_loader(
      source, transforms.ImageText(Tokenizer.train(['a red circle'], 300), 8, 16,
                                   augment={'scale': (0.5, 1.0)}, extra_keys=('sid',)),
      global_batch_size=8, seed=3, worker_count=2, cycle_length=2, shuffle_buffer=10)
  done = 0
  if resume != '-':
    lines = open(resume).read().splitlines()
    loader.set_state(json.loads(lines[-1])['state'])
    done = len(lines)
  with open(out, 'a') as f:
    for _ in range(done, steps):
      batch = next(loader)
      f.write(json.dumps({'sid': batch['sid'].tolist(),
                          'pixels': float(batch['image'].sum()),
                          'state': loader.get_state()}) + '\n')
      f.flush()
      os.fsync(f.fileno())
      time.sleep(0.1)  # a train step
  loader.close()

if __name__ == '__main__':
  main()
'''
STEPS = 10
ROOT = str(Path(__file__).resolve().parents[1])


def _start(script, pattern, out, resume='-'):
  return subprocess.Popen([sys.executable, script, pattern, out, str(STEPS), resume],
                          start_new_session=True, env={**os.environ, 'PYTHONPATH': ROOT})


def _lines(path):
  return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.mark.slow
def test_resume_after_sigkill_continues_exact_order(tmp_path):
  pattern = make_shards.main(['--out', str(tmp_path / 'shards'), '--synthetic', '60',
                              '--image-size', '20', '--shard-size', '10'])
  script = str(tmp_path / 'reader.py')
  open(script, 'w').write(READER)
  reference = str(tmp_path / 'reference.jsonl')
  assert _start(script, pattern, reference).wait(timeout=120) == 0

  killed = str(tmp_path / 'killed.jsonl')
  kill_after = int(np.random.default_rng(0).integers(3, 7))
  proc = _start(script, pattern, killed)
  deadline = time.time() + 120
  while len(_lines(killed)) < kill_after and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the reader and its grain workers
  proc.wait()
  n_before = len(_lines(killed))
  assert kill_after <= n_before < STEPS
  assert _start(script, pattern, killed, resume=killed).wait(timeout=120) == 0

  ref = [json.loads(l) for l in _lines(reference)]
  got = [json.loads(l) for l in _lines(killed)]
  assert [r['sid'] for r in got] == [r['sid'] for r in ref]
  assert [r['pixels'] for r in got] == [r['pixels'] for r in ref]  # same crops too
  assert len(set(np.concatenate([r['sid'] for r in ref]).tolist())) == 60  # 10 batches of 8 cover every sample


def _cli(workdir, steps):
  return [sys.executable, '-m', 'clipjax.main', '--config', f'{ROOT}/configs/quickstart.py',
          '--workdir', str(workdir), '--config.batch_size=16',
          '--config.data.train_num_samples=2000', '--config.data.num_workers=2',
          '--config.tokenizer.train_captions=300', '--config.eval_every=0',
          '--config.log_every=1', '--config.checkpoint_every=4', f'--config.total_steps={steps}']


def _losses(workdir):
  path = Path(workdir) / 'metrics.jsonl'
  lines = path.read_text().splitlines() if path.exists() else []
  return [(r['step'], r['loss']) for r in map(json.loads, filter(None, lines))]


@pytest.mark.slow
def test_training_with_workers_resumes_exactly_after_sigkill(tmp_path):
  """The loader state in the checkpoint restores grain worker processes exactly:
  a run killed between checkpoints logs the same losses as one that never stopped."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}
  steps = 10
  subprocess.run(_cli(tmp_path / 'ref', steps), env=env, cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  proc = subprocess.Popen(_cli(tmp_path / 'run', steps), env=env, cwd=ROOT,
                          start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while (not _losses(tmp_path / 'run') or _losses(tmp_path / 'run')[-1][0] < 5) \
      and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # trainer and its grain workers
  proc.wait()
  assert _losses(tmp_path / 'run')[-1][0] < steps, 'killed too late to test anything'
  subprocess.run(_cli(tmp_path / 'run', steps), env=env, cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  assert _losses(tmp_path / 'run') == _losses(tmp_path / 'ref')
