"""TinyCLIP's speed-up from weight inheritance on the synthetic shapes, over seeds.

  python benchmarks/tinyclip_speedup.py --seeds 0 1 2 [--steps 1500] [--eval_every 50]
  python benchmarks/tinyclip_speedup.py --sweep --seeds 1 2  # 500 steps, 2000 images

One teacher (`configs/quickstart.py` on the shapes alone, 1000 steps, seed 0, as in
notebooks/tinyclip_distillation.ipynb); per seed, three students of the same smaller size
(`configs/tinyclip_quickstart.py`) at their best learning rates of the notebook's sweep:
InfoNCE from scratch, affinity mimicking from scratch, and manual inheritance + affinity
mimicking. Prints the first evaluated step at which each student is within 5 points of the
teacher's held-out zero-shot top-1 on both shape and colour, and the speed-ups (scratch
steps / inherited steps). `tests/test_tinyclip_speedup.py` asserts the affinity speed-up.

`--sweep`: the notebook's learning-rate table instead (by default its 500 steps and 2000
evaluation images): every student at every rate of `SWEEP` at seed 0, then at its chosen
rate (`STUDENTS`) at each other seed of `--seeds`; per run the steps to within 5 points of
the teacher on shape, on colour and on both, and the final accuracies.
"""
import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from clipjax.config_base import load_config  # pylint: disable=wrong-import-position
from clipjax.evaluate import report  # pylint: disable=wrong-import-position
from clipjax.train.loop import Trainer  # pylint: disable=wrong-import-position

TEACHER_STEPS = 1000
EVAL_SAMPLES = 1000
KEYS = ('shapes_shape/zeroshot_top1', 'shapes_colour/zeroshot_top1')
# name -> (method, inherit, lr): the best learning rate of the notebook's sweep (SWEEP).
STUDENTS = {'infonce_scratch': ('clip', 'none', 2e-3),
            'affinity_scratch': ('tinyclip', 'none', 4e-3),
            'affinity_inherited': ('tinyclip', 'manual', 2e-3)}
SWEEP = {'infonce_scratch': (1e-3, 2e-3, 4e-3), 'affinity_scratch': (1e-3, 2e-3, 4e-3),
         'affinity_inherited': (5e-4, 1e-3, 2e-3, 4e-3)}


def schedule(config, steps, eval_every, eval_samples=EVAL_SAMPLES):
  config.total_steps = steps
  config.eval_every = eval_every
  config.eval_at_start = False
  config.checkpoint_every = steps
  config.log_every = steps
  for spec in config.evals.values():
    spec.num_samples = eval_samples
  return config


def train_quietly(config, workdir):
  trainer = Trainer(config, workdir)
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return trainer, trainer.train()


def train_teacher(workdir, eval_samples=EVAL_SAMPLES) -> tuple:
  """(exported teacher folder, its held-out accuracies)."""
  config = load_config(os.path.join(ROOT, 'configs/quickstart.py'))
  config.data.digit_fraction = 0.0  # as configs/tinyclip_quickstart.py's students
  config.evals = {k: config.evals[k] for k in ('shapes_shape', 'shapes_colour')}
  config = schedule(config, TEACHER_STEPS, TEACHER_STEPS, eval_samples)
  trainer, result = train_quietly(config, workdir)
  return str(trainer.export_checkpoint(os.path.join(workdir, 'export'))), {k: result[k] for k in KEYS}


def steps_to_teacher(history, teacher):
  """First evaluated step within 5 points of the teacher on every task (inf if none)."""
  hits = [r['step'] for r in history if all(r[k] >= teacher[k] - 0.05 for k in KEYS)]
  return hits[0] if hits else math.inf


def student_history(name, teacher_folder, seed, steps, eval_every, workdir, stop_at=0,
                    lr=None, eval_samples=EVAL_SAMPLES) -> list:
  """The student's evaluations; `stop_at` ends the run early, its learning rates those
  of the `steps`-step schedule (what the test uses to save time); `lr`: not STUDENTS'."""
  method, inherit, chosen = STUDENTS[name]
  config = load_config(os.path.join(ROOT, 'configs/tinyclip_quickstart.py'),
                       f'{teacher_folder},{inherit}')
  config.method, config.optim.lr, config.seed = method, chosen if lr is None else lr, seed
  config = schedule(config, steps, eval_every, eval_samples)
  config.stop_at_step = stop_at
  train_quietly(config, workdir)
  return report.read_jsonl(os.path.join(workdir, 'eval_history.jsonl'))


def train_student(name, teacher_folder, teacher, seed, steps, eval_every, workdir, stop_at=0):
  """Steps to within 5 points of the teacher."""
  return steps_to_teacher(student_history(name, teacher_folder, seed, steps, eval_every,
                                          workdir, stop_at), teacher)


def sweep(args, folder, teacher, tmp):
  """The notebook's learning-rate table (see the module's docstring)."""
  runs = [(name, lr, 0) for name, rates in SWEEP.items() for lr in rates]
  runs += [(name, STUDENTS[name][2], seed) for seed in args.seeds if seed != 0
           for name in STUDENTS]
  print(f'teacher (seed 0, {TEACHER_STEPS} steps): shape {teacher[KEYS[0]]:.3f}, colour '
        f'{teacher[KEYS[1]]:.3f}; students {args.steps} steps, evaluated every '
        f'{args.eval_every} on {args.eval_samples} images; steps to within 5 points of the '
        'teacher (- never) and final accuracies:')
  print('| student | lr | seed | shape | colour | both | final shape / colour |')
  print('|---|---|---|---|---|---|---|')
  rows = []
  for name, lr, seed in runs:
    history = student_history(name, folder, seed, args.steps, args.eval_every,
                              os.path.join(tmp, f'{name}_{lr:g}_{seed}'), lr=lr,
                              eval_samples=args.eval_samples)
    hits = [steps_to_teacher(history, {k: teacher[k] if k in keys else 0.0 for k in KEYS})
            for keys in (KEYS[:1], KEYS[1:], KEYS)]
    print(f'| {name} | {lr:g} | {seed} | ' +
          ' | '.join('-' if math.isinf(h) else str(h) for h in hits) +
          f' | {history[-1][KEYS[0]]:.3f} / {history[-1][KEYS[1]]:.3f} |', flush=True)
    rows.append(dict(student=name, lr=lr, seed=seed,
                     steps_to_teacher=[None if math.isinf(h) else h for h in hits],
                     final=[history[-1][k] for k in KEYS]))
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--steps', type=int, help='default 1500; 500 with --sweep')
  p.add_argument('--eval_every', type=int, default=50)
  p.add_argument('--eval_samples', type=int, help=f'default {EVAL_SAMPLES}; 2000 with --sweep')
  p.add_argument('--sweep', action='store_true', help="the notebook's learning-rate table")
  p.add_argument('--json', default='')
  args = p.parse_args()
  args.steps = args.steps or (500 if args.sweep else 1500)
  args.eval_samples = args.eval_samples or (2000 if args.sweep else EVAL_SAMPLES)
  with tempfile.TemporaryDirectory() as tmp:
    folder, teacher = train_teacher(os.path.join(tmp, 'teacher'), args.eval_samples)
    print(f'teacher: {teacher}', file=sys.stderr, flush=True)
    if args.sweep:
      rows = sweep(args, folder, teacher, tmp)
      if args.json:
        with open(args.json, 'w') as f:
          json.dump(dict(teacher=teacher, sweep=rows), f, indent=1)
      return
    steps = {}
    for seed in args.seeds:
      for name in STUDENTS:
        steps.setdefault(name, []).append(train_student(
            name, folder, teacher, seed, args.steps, args.eval_every,
            os.path.join(tmp, f'{name}_{seed}')))
        print(name, seed, steps[name][-1], file=sys.stderr, flush=True)
  print(f'teacher (seed 0, {TEACHER_STEPS} steps): shape {teacher[KEYS[0]]:.3f}, '
        f'colour {teacher[KEYS[1]]:.3f}; students {args.steps} steps, evaluated every '
        f'{args.eval_every}; steps to within 5 points of the teacher on both tasks:')
  print('| student | ' + ' | '.join(f'seed {s}' for s in args.seeds) + ' | speed-up of inheritance |')
  print('|---' * (len(args.seeds) + 2) + '|')
  inherited = steps['affinity_inherited']
  for name, row in steps.items():
    ratios = [s / i for s, i in zip(row, inherited)]
    print(f'| {name} | ' + ' | '.join(str(s) for s in row) + ' | ' +
          ('' if name == 'affinity_inherited' else
           f'{min(ratios):.1f}x-{max(ratios):.1f}x') + ' |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(teacher=teacher, steps=steps, seeds=args.seeds), f, indent=1)


if __name__ == '__main__':
  main()
