"""Where numbers go: metrics.jsonl, eval.json, TensorBoard and the progress bar (process 0 only)."""
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from clipjax.evaluate import report

# Measured on the clock, so they differ between a run and its resumed copy.
WALL_CLOCK_KEYS = ('examples_per_sec', 'tflops_per_device', 'mfu', 'input_wait')


def _summary_writer(logdir):
  """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX imports torch
  whenever it is installed, only to accept torch tensors (we log floats), and that import
  is ~1 s of every run's start (`python -X importtime -c "import tensorboardX"`); a None
  in sys.modules makes it take its numpy-only path.
  A later `import torch` in this process works as usual."""
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules['torch']
  return SummaryWriter(logdir)


class MetricWriter:

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.metrics_path = self.workdir / 'metrics.jsonl'
    self.history_path = self.workdir / 'eval_history.jsonl'
    self._tb = None
    if enabled:
      self._tb = _summary_writer(str(self.workdir / 'tensorboard'))

  def truncate_after(self, step: int) -> None:
    """On resume, drop lines a killed run logged after its last checkpoint."""
    if not self.enabled:
      return
    for path in (self.metrics_path, self.history_path):
      if path.exists():
        lines = [l for l in path.read_text().splitlines() if l and json.loads(l)['step'] <= step]
        path.write_text(''.join(l + '\n' for l in lines))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    with self.metrics_path.open('a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    for k, v in metrics.items():
      self._tb.add_scalar(f'train/{k}', v, step)

  def write_eval(self, step: int, results: dict, details=None, history: bool = True) -> None:
    if not self.enabled or not results:
      return
    report.write_eval_json(str(self.workdir), results, step, history)
    if details:
      report.save_eval_details(str(self.workdir), details, step)
    for k, v in results.items():
      self._tb.add_scalar(f'eval/{k}', v, step)

  def progress(self, start: int, total: int) -> 'Progress':
    return Progress(start, total, self.enabled)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """tqdm bar showing step, loss, examples/s, MFU, the input wait and an ETA from the
  measured steps/s (tqdm's own rate would count compilation and evaluation)."""

  def __init__(self, start, total, enabled):
    self.bar = tqdm(total=total, initial=start, disable=not enabled, unit='step',
                    dynamic_ncols=True,
                    bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]')
    self.step, self.total = start, total

  def update(self, step: int, metrics: dict, steps_per_sec: float) -> None:
    self.bar.update(step - self.step)
    self.step = step
    eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
    mfu = f', MFU={100 * metrics["mfu"]:.1f}%' if 'mfu' in metrics else ''
    self.bar.set_postfix_str(f'loss={metrics["loss"]:.4f}, ex/s={metrics["examples_per_sec"]:.0f}'
                             f'{mfu}, input={100 * metrics["input_wait"]:.0f}%, '
                             f'ETA {tqdm.format_interval(eta) if eta == eta else "?"}')

  def close(self) -> None:
    self.bar.close()
