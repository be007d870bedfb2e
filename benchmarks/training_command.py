"""The training command the quickstart benchmarks time: `python -m clipjax.main` run to the
end in a fresh process, as the README runs it."""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(config: str, workdir: str, *flags: str) -> float:
  """Runs `--config configs/<config> --workdir <workdir> <flags>`; its wall time in seconds
  (start-up, compilation and evaluations included). Raises with its stderr if it fails."""
  cmd = [sys.executable, '-m', 'clipjax.main', '--config', os.path.join(ROOT, 'configs', config),
         '--workdir', workdir, *flags]
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
  return seconds
