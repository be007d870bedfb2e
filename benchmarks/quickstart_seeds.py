"""The README's quickstart figures over seeds: what `tests/test_quickstart.py` asserts.

  python benchmarks/quickstart_seeds.py --seeds 0 1 2 [--configs quickstart.py quickstart.py:siglip]

Runs the README's first command (`python -m clipjax.main --config configs/<config>`) once
per seed, one at a time, and prints per seed and over the seeds (min / max): the held-out
zero-shot top-1 (shape, colour, sklearn's digits), the digits linear probe against the
random init's, the first and final logged loss, and the command's wall time.
"""
import argparse
import json
import os
import sys
import tempfile

from training_command import ROOT, train

sys.path.insert(0, ROOT)

from clipjax.evaluate.report import read_jsonl  # pylint: disable=wrong-import-position,g-import-not-at-top

COLUMNS = {'shape': 'shapes_shape/zeroshot_top1', 'colour': 'shapes_colour/zeroshot_top1',
           'digits': 'digits/zeroshot_top1', 'digits probe': 'digits_probe/linear_probe_top1'}


def run(config, seed, workdir):
  seconds = train(config, workdir, f'--config.seed={seed}')
  history = read_jsonl(os.path.join(workdir, 'eval_history.jsonl'))
  losses = [r['loss'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
  row = {name: history[-1][key] for name, key in COLUMNS.items()}
  row.update({'random probe': history[0][COLUMNS['digits probe']], 'first loss': losses[0],
              'final loss': losses[-1], 'seconds': seconds})
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--configs', nargs='+', default=['quickstart.py', 'quickstart.py:siglip'])
  p.add_argument('--json', default='')
  args = p.parse_args()
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for config in args.configs:
      for seed in args.seeds:
        out.setdefault(config, {})[seed] = run(config, seed, os.path.join(tmp, f'{len(out)}_{seed}'))
        print(config, seed, out[config][seed], file=sys.stderr, flush=True)
  names = list(next(iter(next(iter(out.values())).values())))
  print('| config | seed | ' + ' | '.join(names) + ' |')
  print('|---' * (len(names) + 2) + '|')
  fmt = lambda name, v: f'{v:.0f}' if name == 'seconds' else f'{v:.3f}'
  for config, rows in out.items():
    for seed, row in rows.items():
      print(f'| {config} | {seed} | ' + ' | '.join(fmt(n, row[n]) for n in names) + ' |')
    print(f'| {config} | min-max | ' + ' | '.join(
        f'{fmt(n, min(r[n] for r in rows.values()))}-{fmt(n, max(r[n] for r in rows.values()))}'
        for n in names) + ' |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
