"""TinyCLIP's speed-up from weight inheritance on the synthetic shapes, over seeds.

  python benchmarks/tinyclip_speedup.py --seeds 0 1 2 [--steps 1500] [--eval_every 50]

One teacher (`configs/quickstart.py` on the shapes alone, 1000 steps, seed 0, as in
notebooks/tinyclip_distillation.ipynb); per seed, three students of the same smaller size
(`configs/tinyclip_quickstart.py`) at their best learning rates of the notebook's sweep:
InfoNCE from scratch, affinity mimicking from scratch, and manual inheritance + affinity
mimicking. Prints the first evaluated step at which each student is within 5 points of the
teacher's held-out zero-shot top-1 on both shape and colour, and the speed-ups (scratch
steps / inherited steps). `tests/test_tinyclip_speedup.py` asserts the affinity speed-up.
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
# name -> (method, inherit, lr): the notebook's best learning rate of {1e-3, 2e-3, 4e-3}.
STUDENTS = {'infonce_scratch': ('clip', 'none', 2e-3),
            'affinity_scratch': ('tinyclip', 'none', 4e-3),
            'affinity_inherited': ('tinyclip', 'manual', 2e-3)}


def schedule(config, steps, eval_every):
  config.total_steps = steps
  config.eval_every = eval_every
  config.eval_at_start = False
  config.checkpoint_every = steps
  config.log_every = steps
  for spec in config.evals.values():
    spec.num_samples = EVAL_SAMPLES
  return config


def train_quietly(config, workdir):
  trainer = Trainer(config, workdir)
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return trainer, trainer.train()


def train_teacher(workdir) -> tuple:
  """(exported teacher folder, its held-out accuracies)."""
  config = load_config(os.path.join(ROOT, 'configs/quickstart.py'))
  config.data.digit_fraction = 0.0  # as configs/tinyclip_quickstart.py's students
  config.evals = {k: config.evals[k] for k in ('shapes_shape', 'shapes_colour')}
  trainer, result = train_quietly(schedule(config, TEACHER_STEPS, TEACHER_STEPS), workdir)
  return str(trainer.export_checkpoint(os.path.join(workdir, 'export'))), {k: result[k] for k in KEYS}


def steps_to_teacher(history, teacher):
  """First evaluated step within 5 points of the teacher on every task (inf if none)."""
  hits = [r['step'] for r in history if all(r[k] >= teacher[k] - 0.05 for k in KEYS)]
  return hits[0] if hits else math.inf


def train_student(name, teacher_folder, teacher, seed, steps, eval_every, workdir, stop_at=0):
  """Steps to within 5 points of the teacher; `stop_at` ends the run early, its learning
  rates those of the `steps`-step schedule (what the test uses to save time)."""
  method, inherit, lr = STUDENTS[name]
  config = load_config(os.path.join(ROOT, 'configs/tinyclip_quickstart.py'),
                       f'{teacher_folder},{inherit}')
  config.method, config.optim.lr, config.seed = method, lr, seed
  config = schedule(config, steps, eval_every)
  config.stop_at_step = stop_at
  train_quietly(config, workdir)
  return steps_to_teacher(report.read_jsonl(os.path.join(workdir, 'eval_history.jsonl')), teacher)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--steps', type=int, default=1500)
  p.add_argument('--eval_every', type=int, default=50)
  p.add_argument('--json', default='')
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    folder, teacher = train_teacher(os.path.join(tmp, 'teacher'))
    print(f'teacher: {teacher}', file=sys.stderr, flush=True)
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
