"""A-CLIP against its baselines on the quickstart's data, at equal wall time.

  python benchmarks/aclip_vs_clip.py --seeds 0 1 2 [--steps 2000] [--json out.json]

Per seed, one command at a time: `configs/aclip_quickstart.py` (attentive masks) and
`configs/aclip_quickstart.py:random` (as many blocks kept at random: FLIP's masking, the
paper's baseline) for `--steps` steps; CLIP (`configs/quickstart.py`) for `--steps`
steps on the first seed, which sets how many CLIP steps fit in A-CLIP's mean wall time;
then CLIP for that many steps on every seed (equal wall time: the whole command,
start-up and evaluations included). Prints the quickstart's evaluations as mean +-
standard deviation over the seeds, the mean wall time and the logged training examples/s,
and the curves (evaluated at every quarter of each run).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

from training_command import ROOT, train

sys.path.insert(0, ROOT)

from clipjax.evaluate.report import read_jsonl  # pylint: disable=wrong-import-position,g-import-not-at-top

METRICS = {'shape zero-shot': 'shapes_shape/zeroshot_top1',
           'colour zero-shot': 'shapes_colour/zeroshot_top1',
           'digits zero-shot': 'digits/zeroshot_top1',
           'digits probe': 'digits_probe/linear_probe_top1'}


def run(config, seed, steps, workdir):
  """{'seconds', 'examples/s', metric: value} of one training command."""
  seconds = train(config, workdir, f'--config.seed={seed}', f'--config.total_steps={steps}',
                  f'--config.eval_every={steps // 4}', f'--config.checkpoint_every={steps}')
  history = read_jsonl(os.path.join(workdir, 'eval_history.jsonl'))
  final = history[-1]
  speed = [r['examples_per_sec'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
           if 'examples_per_sec' in r][1:]  # the first interval holds the compilation
  row = {name: final[key] for name, key in METRICS.items()}
  curve = {name: [h[key] for h in history] for name, key in METRICS.items()}
  return dict(row, seconds=seconds, steps=steps, curve=curve,
              **{'examples/s': float(np.median(speed))})


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--json', default='')
  args = p.parse_args()
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    def add(name, config, seed, steps):
      row = run(config, seed, steps, os.path.join(tmp, f'{len(rows)}_{seed}_{steps}'))
      rows.setdefault(name, []).append(row)
      print(name, seed, row, file=sys.stderr, flush=True)
    for name, config in (('A-CLIP attentive', 'aclip_quickstart.py'),
                         ('A-CLIP random', 'aclip_quickstart.py:random')):
      for seed in args.seeds:
        add(f'{name}, {args.steps} steps', config, seed, args.steps)
    add(f'CLIP, {args.steps} steps', 'quickstart.py', args.seeds[0], args.steps)
    aclip = np.mean([r['seconds'] for r in rows[f'A-CLIP attentive, {args.steps} steps']])
    clip = rows[f'CLIP, {args.steps} steps'][0]['seconds']
    equal = 4 * int(round(args.steps * aclip / clip / 4))  # quarters for the curves
    for seed in args.seeds:
      add(f'CLIP, {equal} steps (equal time)', 'quickstart.py', seed, equal)
  print(f'seeds {args.seeds}; mean +- std over seeds; seconds: the whole command')
  columns = list(METRICS) + ['examples/s']
  print('| run | seeds | seconds | ' + ' | '.join(columns) + ' |')
  print('|---' * (len(columns) + 3) + '|')
  for name, results in rows.items():
    cell = lambda k: (f'{np.mean([r[k] for r in results]):.0f}' if k == 'examples/s' else
                      f'{np.mean([r[k] for r in results]):.3f} +- {np.std([r[k] for r in results]):.3f}')
    print(f'| {name} | {len(results)} | {np.mean([r["seconds"] for r in results]):.0f} | ' +
          ' | '.join(cell(k) for k in columns) + ' |')
  print('\nCurves: mean over seeds at 0, 1/4, 1/2, 3/4 and all of each run')
  print('| run | ' + ' | '.join(METRICS) + ' |')
  print('|---' * (len(METRICS) + 1) + '|')
  for name, results in rows.items():
    curve = lambda m: ' / '.join(f'{v:.2f}' for v in np.mean([r['curve'][m] for r in results], 0))
    print(f'| {name} | ' + ' | '.join(curve(m) for m in METRICS) + ' |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
