"""Evaluation results on disk: eval.json, eval_history.jsonl, per-class arrays, PNG curves.

Files in the workdir:
  eval.json              latest flat {"<name>/<metric>": value} (plus "step" when known)
  eval_history.jsonl     one line per evaluation: {"step": s, "<name>/<metric>": v, ...}
  eval_details/<name>_step<s>.npz   per-class accuracy, class counts and names
  metrics.jsonl          training log written by the loop: {"step", "loss", ...}
  training_curves.png    `plot_run`: training scalars and every eval metric over steps
"""
import json
import math
import os
from typing import Optional

import numpy as np

EVAL_JSON = 'eval.json'
EVAL_HISTORY = 'eval_history.jsonl'
METRICS = 'metrics.jsonl'
CURVES_PNG = 'training_curves.png'
TRAIN_KEYS = ('loss', 'learning_rate', 'examples_per_sec')


def atomic_write(path, text: str) -> None:
  """Write-then-rename: a reader never sees half a file, a crash never leaves one."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_eval_json(workdir: str, results: dict, step: Optional[int] = None) -> str:
  """Writes eval.json (atomically) and, with a step, appends the row to eval_history.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  row = {k: float(v) for k, v in results.items() if k != 'step'}
  if step is not None:
    row = {'step': int(step), **row}
  path = os.path.join(workdir, EVAL_JSON)
  atomic_write(path, json.dumps(row, indent=1, sort_keys=True) + '\n')
  if step is not None:
    with open(os.path.join(workdir, EVAL_HISTORY), 'a') as f:
      f.write(json.dumps(row) + '\n')
  return path


def save_eval_details(workdir: str, details: dict, step: Optional[int] = None) -> list:
  """details: {evaluator name: {array name: array}} (from run_evaluators) -> npz paths."""
  folder = os.path.join(workdir, 'eval_details')
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name, arrays in details.items():
    if arrays:
      suffix = '' if step is None else f'_step{int(step)}'
      path = os.path.join(folder, f'{name}{suffix}.npz')
      np.savez(path, **arrays)
      paths.append(path)
  return paths


def read_jsonl(path: str) -> list:
  """Rows of a JSON-lines file; [] when it does not exist. Names the file on bad lines."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{number} is not valid JSON: {e}') from e
  return rows


def _series(rows: list, key: str) -> tuple:
  points = [(r['step'], r[key]) for r in rows
            if 'step' in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
  return tuple(zip(*points)) if points else ((), ())


def plot_run(workdir: str) -> str:
  """training_curves.png: loss, learning rate, throughput, and one panel per evaluator.

  Eval points come from eval_history.jsonl, or from eval.json when there is no history.
  """
  # A bare Figure renders with Agg and leaves pyplot's global backend alone (notebooks).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  train_rows = read_jsonl(os.path.join(workdir, METRICS))
  eval_rows = read_jsonl(os.path.join(workdir, EVAL_HISTORY))
  eval_json = os.path.join(workdir, EVAL_JSON)
  if not eval_rows and os.path.exists(eval_json):
    with open(eval_json) as f:
      row = json.load(f)
    if 'step' not in row and train_rows:
      row['step'] = train_rows[-1].get('step', 0)
    eval_rows = [row]
  if not train_rows and not eval_rows:
    raise FileNotFoundError(f'nothing to plot in {workdir!r}: no {METRICS}, {EVAL_HISTORY} '
                            f'or {EVAL_JSON}')
  panels = [(k, {k: _series(train_rows, k)}) for k in TRAIN_KEYS
            if _series(train_rows, k)[0]]
  groups = {}
  for key in sorted({k for r in eval_rows for k in r if k != 'step'}):
    groups.setdefault(key.split('/')[0], {})[key.split('/', 1)[-1]] = _series(eval_rows, key)
  panels += sorted(groups.items())
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = Figure(figsize=(5 * cols, 3.5 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (title, lines) in zip(axes.flat, panels):
    for label, (steps, values) in lines.items():
      ax.plot(steps, values, marker='o' if len(steps) < 30 else None, label=label)
    ax.set_title(title)
    ax.set_xlabel('step')
    if title == 'learning_rate' or title == 'loss':
      ax.set_yscale('log' if all(v > 0 for v in lines[title][1]) else 'linear')
    if len(lines) > 1 or title not in TRAIN_KEYS:
      ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_PNG)
  fig.savefig(path, dpi=100)
  return path
