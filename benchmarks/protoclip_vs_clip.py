"""ProtoCLIP against CLIP on the quickstart's data, at equal steps and at equal wall time.

  python benchmarks/protoclip_vs_clip.py --seeds 0 1 2 [--steps 2000] [--json out.json]

Per seed: `configs/quickstart.py` (CLIP) and `configs/protoclip_quickstart.py`, both for
`--steps` steps; then CLIP again for as many steps as fit in ProtoCLIP's mean wall time
(the whole command, start-up and evaluations included, runs one at a time). Prints the
quickstart's evaluations (linear probe and zero-shot on sklearn's digits, zero-shot on
held-out shape/colour combinations) as mean +- standard deviation over the seeds.
"""
import argparse
import json
import os
import tempfile

import numpy as np

from training_command import train

METRICS = {'digits probe': 'digits_probe/linear_probe_top1',
           'digits zero-shot': 'digits/zeroshot_top1',
           'shape zero-shot': 'shapes_shape/zeroshot_top1',
           'colour zero-shot': 'shapes_colour/zeroshot_top1'}


def run(config, seed, steps, workdir):
  """(seconds, eval.json) of one training command."""
  seconds = train(config, workdir, f'--config.seed={seed}', f'--config.total_steps={steps}',
                  f'--config.eval_every={steps}', f'--config.checkpoint_every={steps}')
  with open(os.path.join(workdir, 'eval.json')) as f:
    return seconds, json.load(f)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--json', default='')
  args = p.parse_args()
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, config in (('CLIP', 'quickstart.py'), ('ProtoCLIP', 'protoclip_quickstart.py')):
      for seed in args.seeds:
        rows.setdefault(f'{name}, {args.steps} steps', []).append(
            run(config, seed, args.steps, os.path.join(tmp, f'{name}_{seed}')))
    proto = np.mean([s for s, _ in rows[f'ProtoCLIP, {args.steps} steps']])
    clip = np.mean([s for s, _ in rows[f'CLIP, {args.steps} steps']])
    equal_time = int(round(args.steps * proto / clip))
    for seed in args.seeds:
      rows.setdefault(f'CLIP, {equal_time} steps (equal time)', []).append(
          run('quickstart.py', seed, equal_time, os.path.join(tmp, f'CLIP_time_{seed}')))
  print(f'seeds {args.seeds}; mean +- std over seeds; wall time of the whole command')
  print('| run | seconds | ' + ' | '.join(METRICS) + ' |')
  print('|---' * (len(METRICS) + 2) + '|')
  summary = {}
  for name, results in rows.items():
    seconds = [s for s, _ in results]
    cells = {m: [r[k] for _, r in results] for m, k in METRICS.items()}
    summary[name] = dict(seconds=seconds, **cells)
    print(f'| {name} | {np.mean(seconds):.0f} | ' + ' | '.join(
        f'{np.mean(v):.3f} +- {np.std(v):.3f}' for v in cells.values()) + ' |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  main()
