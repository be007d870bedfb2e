"""Evaluation results on disk: eval.json, eval_history.jsonl, per-class arrays, PNG curves.

Files in the workdir:
  eval.json              latest flat {"<name>/<metric>": value} (plus "step" when known)
  eval_history.jsonl     one line per evaluation: {"step": s, "<name>/<metric>": v, ...};
                         a row of step 0 is the random init
  eval_details/<name>_step<s>.npz   per-class accuracy, class counts and names (retrieval:
                         captions per image), which give the metrics' chance levels
  metrics.jsonl          training log written by the loop: {"step", "loss", ...}
  training_curves.png    `plot_run`: training scalars and every eval metric over steps
"""
import json
import math
import os
import re
from typing import Optional

import numpy as np

EVAL_JSON = 'eval.json'
EVAL_HISTORY = 'eval_history.jsonl'
METRICS = 'metrics.jsonl'
CURVES_PNG = 'training_curves.png'
TRAIN_KEYS = {'loss': ('training loss', 'loss'),  # key: (panel title, y label)
              'learning_rate': ('learning rate', 'learning rate'),
              'examples_per_sec': ('throughput', 'examples/s')}
# Metric names of the evaluators (after "<name>/"); group 2 is k, absent for mean recall.
CLASSIFICATION = re.compile(r'(?:(zeroshot|linear_probe)_)?(?:top(\d+)|mean_per_class_recall)')
RETRIEVAL = re.compile(r'(image_to_text|text_to_image)_R@(\d+)')
CLASS_ARRAYS = ('per_class_accuracy', 'class_counts', 'classnames')  # any gives the classes
# Chosen on validation data rather than measured, and not in [0, 1]: left out of the plot.
HYPERPARAMETERS = ('linear_probe_log10_C',)
MARKERS = ('o', 's', '^', 'D', 'v', 'P')


def atomic_write(path, text: str) -> None:
  """Write-then-rename: a reader never sees half a file, a crash never leaves one, and
  processes writing the same file at once never share a temporary."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_eval_json(workdir: str, results: dict, step: Optional[int] = None,
                    history: bool = True) -> str:
  """Writes eval.json (atomically, with the step evaluated when known) and, with a step and
  `history`, appends the row to eval_history.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  row = {k: float(v) for k, v in results.items() if k != 'step'}
  if step is not None:
    row = {'step': int(step), **row}
  path = os.path.join(workdir, EVAL_JSON)
  atomic_write(path, json.dumps(row, indent=1, sort_keys=True) + '\n')
  if step is not None and history:
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


def load_eval_details(workdir: str, name: str) -> dict:
  """Arrays of evaluator `name`'s newest eval_details file; {} when it wrote none."""
  folder = os.path.join(workdir, 'eval_details')
  pattern = re.compile(re.escape(name) + r'(?:_step(\d+))?\.npz')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  found = sorted((int(m.group(1) or -1), m.group(0)) for m in map(pattern.fullmatch, names) if m)
  if not found:
    return {}
  with np.load(os.path.join(folder, found[-1][1])) as arrays:
    return {k: arrays[k] for k in arrays.files}


def chance_from_details(metric: str, details: dict) -> Optional[float]:
  """A uniform random guess's expected score on `metric` (no "<name>/"); None if unknown.

  Top-k accuracy and mean per-class recall: k / classes. Text-to-image R@k: k / images.
  Image-to-text R@k with m captions an image among T texts: 1 - C(T-m, k) / C(T, k),
  averaged over the images (k / images when each has one caption).
  """
  match = CLASSIFICATION.fullmatch(metric)
  if match:
    sizes = [len(details[k]) for k in CLASS_ARRAYS if k in details]
    return min(1.0, int(match.group(2) or 1) / sizes[0]) if sizes else None
  match = RETRIEVAL.fullmatch(metric)
  if not match or 'captions_per_image' not in details:
    return None
  counts, k = np.asarray(details['captions_per_image'], np.int64), int(match.group(2))
  if match.group(1) == 'text_to_image':
    return min(1.0, k / len(counts))
  texts, drawn = counts.sum(), np.arange(k)
  counts = counts[counts > 0, None]
  miss = np.prod(np.clip(texts - counts - drawn, 0, None) / np.maximum(texts - drawn, 1), axis=1)
  return float(np.mean(1.0 - miss))


def chance_level(workdir: str, key: str) -> Optional[float]:
  """Chance level of eval metric `key` ("<name>/<metric>") from the evaluator's eval_details
  in `workdir`; None when unknown (a metric without one, or no details on disk)."""
  name, _, metric = key.partition('/')
  return chance_from_details(metric, load_eval_details(workdir, name))


def _initial_row(rows: list) -> dict:
  """The eval_history row of step 0: the random-init baseline (a run evaluates it first)."""
  return next((r for r in reversed(rows) if r.get('step') == 0), {})


def _metric_order(metric: str) -> tuple:
  """Top-1 first, then mean per-class recall, then top-k; recalls by direction, then k."""
  match = CLASSIFICATION.fullmatch(metric)
  if match:
    return (0, '', int(match.group(2)) if match.group(2) else 1.5)
  match = RETRIEVAL.fullmatch(metric)
  if match:
    return (1, match.group(1), int(match.group(2)))
  return (2, metric, 0)


def _eval_panels(keys) -> list:
  """(title, y label, keys) per evaluator and metric family, hyperparameters left out."""
  panels = {}
  for key in keys:
    name, metric = key.split('/', 1)
    if metric in HYPERPARAMETERS:
      continue
    classification, retrieval = CLASSIFICATION.fullmatch(metric), RETRIEVAL.fullmatch(metric)
    if classification:
      kind = {'zeroshot': 'zero-shot', 'linear_probe': 'linear probe'}.get(classification[1])
      panel = (f'{name}: {kind}' if kind else name, 'accuracy')
    elif retrieval:
      panel = (f'{name}: {retrieval[1].replace("_to_", " → ")}', 'recall@k')
    else:
      panel = (key, metric)
    panels.setdefault(panel, []).append(key)
  return [(title, ylabel, sorted(keys, key=lambda k: _metric_order(k.split('/', 1)[1])))
          for (title, ylabel), keys in sorted(panels.items())]


def _label(metric: str) -> str:
  match = CLASSIFICATION.fullmatch(metric) or RETRIEVAL.fullmatch(metric)
  if match is None:
    return metric
  if match.re is RETRIEVAL:
    return f'R@{match.group(2)}'
  return f'top-{match.group(2)}' if match.group(2) else 'mean per-class recall'


def _plot_eval_panel(ax, keys: list, eval_rows: list, workdir: str) -> None:
  """Curves in distinct markers (hollow ones over filled, so equal curves stay visible), a
  dotted line per chance level and a dashed one per random-init value, each in its curve's
  colour; the legend names the two line styles once rather than every line."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  init = _initial_row(eval_rows)
  curves, chances = [], {}
  for i, key in enumerate(keys):
    steps, values = _series(eval_rows, key)
    label = _label(key.split('/', 1)[1])
    curves += ax.plot(steps, values, color=f'C{i}', marker=MARKERS[i % len(MARKERS)],
                      markersize=5 if i == 0 else 8, markerfacecolor=None if i == 0 else 'none',
                      linewidth=2.2 if i == 0 else 1.2, markevery=max(1, len(steps) // 20),
                      label=label)
    chance = chance_level(workdir, key)
    if chance is not None:
      chances.setdefault(round(chance, 9), []).append((i, label))
    if key in init:
      ax.axhline(init[key], color=f'C{i}', linestyle='--', linewidth=1,
                 label=f'random init {label}')
  for chance, owners in chances.items():
    ax.axhline(chance, color='0.4' if len(chances) == 1 else f'C{owners[0][0]}', linestyle=':',
               linewidth=1.2, label=f'chance {", ".join(label for _, label in owners)}')
  styles = [(':', 'chance')] * bool(chances)
  styles += [('--', 'random init')] * any(k in init for k in keys)
  ax.legend(handles=curves + [Line2D([], [], color='0.4', linestyle=style, label=label)
                              for style, label in styles], fontsize=7)
  if all(0.0 <= v <= 1.0 for line in ax.get_lines() for v in line.get_ydata()):
    ax.set_ylim(bottom=0)


def run_figure(workdir: str):
  """The training_curves Figure: loss, learning rate, throughput, then one panel per
  evaluator and metric family with chance and random-init lines.

  Eval points come from eval_history.jsonl, or from eval.json when there is no history.
  """
  # A bare Figure renders with Agg and leaves pyplot's global backend alone (notebooks).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

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
  panels = [(title, ylabel, [key]) for key, (title, ylabel) in TRAIN_KEYS.items()
            if _series(train_rows, key)[0]]
  panels += _eval_panels(sorted({k for r in eval_rows for k in r if '/' in k}))
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = Figure(figsize=(5.2 * cols, 3.8 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (title, ylabel, keys) in zip(axes.flat, panels):
    if keys[0] in TRAIN_KEYS:
      steps, values = _series(train_rows, keys[0])
      ax.plot(steps, values, marker='o' if len(steps) < 30 else None)
      # Log scale only over a decade or more: a narrower range reads better linear.
      if keys[0] in ('loss', 'learning_rate') and 0 < 10 * min(values) < max(values):
        ax.set_yscale('log')
    else:
      _plot_eval_panel(ax, keys, eval_rows, workdir)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  return fig


def plot_run(workdir: str) -> str:
  """Saves `run_figure` as training_curves.png in the workdir; returns its path."""
  path = os.path.join(workdir, CURVES_PNG)
  run_figure(workdir).savefig(path, dpi=100)
  return path


def _number(value) -> str:
  return '' if value is None else f'{value:.4f}'


def summary_table(results: dict, workdir: str) -> str:
  """Final eval metrics beside chance and the random init, then where eval.json and the
  curves are: what a run prints last, so learning shows apart from luck at a glance.

  Eval metrics are the "<name>/<metric>" keys of `results` that metrics.jsonl does not log
  (training scalars such as data/skipped have a '/' too).
  """
  init = _initial_row(read_jsonl(os.path.join(workdir, EVAL_HISTORY)))
  logged = {k for row in read_jsonl(os.path.join(workdir, METRICS)) for k in row}
  groups = {}
  for key in sorted(k for k in results if '/' in k and k not in logged):
    groups.setdefault(key.split('/', 1)[0], []).append(key)
  table = [('metric', 'value', 'chance', 'random init')]
  for name, keys in groups.items():
    table.append((name, '', '', ''))
    for key in sorted(keys, key=lambda k: _metric_order(k.split('/', 1)[1])):
      table.append(('  ' + key.split('/', 1)[1], _number(results[key]),
                    _number(chance_level(workdir, key)), _number(init.get(key))))
  widths = [max(len(row[i]) for row in table) for i in range(4)]

  def line(row):
    return '  '.join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
  lines = [line(row).rstrip() for row in table] if groups else ['no eval metrics']
  for what, name in (('eval metrics', EVAL_JSON), ('curves', CURVES_PNG)):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      lines.append(f'{what}: {path}')
  return '\n'.join(lines)
