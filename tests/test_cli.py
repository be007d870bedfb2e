"""End to end through `python -m clipjax.main`: exact resume after SIGKILL, preemption, errors."""
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from clipjax import convert
from clipjax.data import pipeline
from clipjax.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--config.batch_size=16', '--config.data.train_num_samples=2000',
         '--config.tokenizer.train_captions=300', '--config.eval_every=0',
         '--config.log_every=1', '--config.checkpoint_every=5']


def cli(workdir, *args):
  """The command with SMALL's settings, each replaced by an `args` flag of the same name
  (the CLI refuses a flag given twice)."""
  names = {a.split('=', 1)[0] for a in args}
  small = [a for a in SMALL if a.split('=', 1)[0] not in names]
  return [sys.executable, '-m', 'clipjax.main', '--config', str(ROOT / 'configs/quickstart.py'),
          '--workdir', str(workdir), *small, *args]


def run(workdir, *args, check=True):
  proc = subprocess.run(cli(workdir, *args), capture_output=True, text=True, cwd=ROOT,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-4000:])
  return proc


def losses(workdir):
  lines = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return [(l['step'], l['loss']) for l in lines]


def final_params(workdir, step):
  return ocp.PyTreeCheckpointer().restore(Path(workdir) / 'checkpoints' / str(step) / 'state')


def wait_for_step(workdir, proc, step, timeout=300):
  path, t0 = Path(workdir) / 'metrics.jsonl', time.time()
  while time.time() - t0 < timeout and proc.poll() is None:
    if path.exists() and any(json.loads(l)['step'] >= step for l in path.read_text().splitlines() if l):
      return
    time.sleep(0.05)
  raise AssertionError(f'run never reached step {step}')


@pytest.mark.slow
def test_sigkill_resume_is_bitwise_exact(tmp_path):
  steps = '--config.total_steps=24'
  run(tmp_path / 'ref', steps)
  kill_at = random.Random().randint(7, 20)
  proc = subprocess.Popen(cli(tmp_path / 'run', steps), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  wait_for_step(tmp_path / 'run', proc, kill_at)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert losses(tmp_path / 'run')[-1][0] < 24, 'killed too late to test anything'
  run(tmp_path / 'run', steps)
  assert losses(tmp_path / 'run') == losses(tmp_path / 'ref'), f'killed at step {kill_at}'
  ref, got = final_params(tmp_path / 'ref', 24), final_params(tmp_path / 'run', 24)
  flat_ref, flat_got = [jax_leaves(t) for t in (ref, got)]
  assert len(flat_ref) == len(flat_got)
  for a, b in zip(flat_ref, flat_got):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = subprocess.Popen(cli(tmp_path, '--config.total_steps=1000', '--config.checkpoint_every=1000'),
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  wait_for_step(tmp_path, proc, 3)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved and saved[-1] == losses(tmp_path)[-1][0]
  assert saved[-1] < 1000


USER_ERRORS = {
    'unknown key': (['--config.not_a_key=1'], "no key 'not_a_key'"),
    'mistyped key': (['--config.optim.lrr=1'], "did you mean 'lr'"),
    'wrong type': (['--config.total_steps=many'], '--config.total_steps=many'),
    'flag given twice': (['--config.batch_size=8', '--config.batch_size=16'],
                         '--config.batch_size is given twice'),
    'unknown method': (['--config.method=nope'], "Unknown method 'nope'"),
    'unknown mode': (['--config.mode=fit'], "--config.mode='fit'"),
    'missing tokenizer': (['--config.tokenizer.path=/no/such/tokenizer.json'],
                          '/no/such/tokenizer.json'),
    'missing data': (['--config.data.format=wds', '--config.data.train=/no/such/{0..3}.tar'],
                     '/no/such/'),
    'missing checkpoint': (['--config.mode=eval'], 'No checkpoint in'),
}


@pytest.mark.parametrize('case', USER_ERRORS)
def test_user_errors_are_one_line_and_leave_no_workdir(tmp_path, case):
  args, message = USER_ERRORS[case]
  proc = run(tmp_path / 'run', '--config.total_steps=2', *args, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr[-3000:]
  assert not (tmp_path / 'run').exists()


def test_missing_config_file_is_named(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'clipjax.main', '--config', 'configs/nope.py',
                         '--workdir', str(tmp_path / 'run')], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert 'config file not found: configs/nope.py' in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_make_shards_flag_pasted_into_the_shell_trains_on_every_shard(tmp_path):
  """make_shards prints a quoted flag; pasted as is, the shell passes the brace pattern on
  (unquoted, it expands into one flag per shard, which the CLI refuses)."""
  printed = subprocess.run(
      [sys.executable, '-m', 'clipjax.data.make_shards', '--out', str(tmp_path / 'shards'),
       '--synthetic', '40', '--image-size', '32', '--shard-size', '10'],
      capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
  assert printed.startswith("'--config.data.train=") and '{00000..00003}' in printed
  command = ' '.join(map(shlex.quote, cli(tmp_path / 'run', '--config.total_steps=2',
                                          '--config.data.format=wds')))
  proc = subprocess.run(['bash', '-c', f'{command} {printed}'], capture_output=True, text=True,
                        cwd=ROOT, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads((tmp_path / 'run' / 'config.json').read_text())['data']
  assert len(pipeline.make_source(data).shards) == 4
  unquoted = subprocess.run(['bash', '-c', f'{command} {printed[1:-1]}'], capture_output=True,
                            text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert unquoted.returncode != 0 and 'quote the whole flag' in unquoted.stderr


@pytest.mark.slow
def test_ctrl_c_saves_and_resumes_bitwise(tmp_path):
  steps = '--config.total_steps=16'
  run(tmp_path / 'ref', steps)
  proc = subprocess.Popen(cli(tmp_path / 'run', steps, '--config.checkpoint_every=1000'),
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  wait_for_step(tmp_path / 'run', proc, random.Random().randint(3, 8))
  proc.send_signal(signal.SIGINT)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 0 and 'Traceback' not in stderr, stderr[-3000:]
  stopped = losses(tmp_path / 'run')[-1][0]
  assert stopped < 16 and (tmp_path / 'run' / 'checkpoints' / str(stopped)).is_dir()
  run(tmp_path / 'run', steps)
  assert losses(tmp_path / 'run') == losses(tmp_path / 'ref')
  for a, b in zip(jax_leaves(final_params(tmp_path / 'ref', 16)),
                  jax_leaves(final_params(tmp_path / 'run', 16))):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_without_overwriting_checkpoint(tmp_path):
  run(tmp_path, '--config.total_steps=5')
  before = final_params(tmp_path, 5)
  proc = run(tmp_path, '--config.total_steps=20', '--config.optim.lr=1e30',
             '--config.optim.grad_clip=0', check=False)
  assert proc.returncode != 0 and 'Non-finite' in proc.stderr
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [5]
  for a, b in zip(jax_leaves(before), jax_leaves(final_params(tmp_path, 5))):
    np.testing.assert_array_equal(a, b)


def test_console_and_eval_mode_report_the_evaluated_step(tmp_path):
  """A banner, the random init evaluated at step 0, a final table with chance levels; a
  finished run says so; eval mode reproduces the logged numbers and names the step."""
  evals = ['--config.eval_every=6']
  proc = run(tmp_path, '--config.total_steps=6', *evals)
  for line in ('Training clip', f'Writing to {tmp_path}', 'Evaluating step 0', 'chance',
               'random init', 'training_curves.png'):
    assert line in proc.stderr + proc.stdout, (line, proc.stderr[-3000:])
  history = [json.loads(l) for l in (tmp_path / 'eval_history.jsonl').read_text().splitlines()]
  assert [r['step'] for r in history] == [0, 6]
  logged = json.loads((tmp_path / 'eval.json').read_text())
  again = run(tmp_path, '--config.total_steps=6', *evals)
  assert 'Already complete (6/6 steps)' in again.stderr
  (tmp_path / 'eval.json').unlink()
  run(tmp_path, '--config.total_steps=6', '--config.mode=eval', *evals)
  assert json.loads((tmp_path / 'eval.json').read_text()) == logged
  assert logged['step'] == 6 and len(logged) > 1


def test_relative_workdir_as_in_the_readme(tmp_path):
  proc = subprocess.run(cli('runs/quickstart', '--config.total_steps=5'), capture_output=True,
                        text=True, cwd=tmp_path, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'runs/quickstart/checkpoints/5').is_dir()


def test_export_mode_writes_the_checkpoint_model(tmp_path):
  run(tmp_path, '--config.total_steps=5')
  proc = run(tmp_path, '--config.total_steps=5', '--config.mode=export')
  assert f'Exported step 5 to {tmp_path / "export"}' in proc.stderr
  model, params, tokenizer = convert.load_clip(str(tmp_path / 'export'))
  text = ['a red circle above a blue square']
  np.testing.assert_array_equal(tokenizer(text, 24),
                                Tokenizer.load(tmp_path / 'tokenizer.json')(text, 24))
  want = final_params(tmp_path, 5)['params']
  for a, b in zip(jax_leaves(params), jax_leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert model.text['context_length'] == 24
