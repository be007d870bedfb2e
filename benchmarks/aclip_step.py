"""A-CLIP's train step against CLIP's, and its two ways of dropping patches.

  python benchmarks/aclip_step.py [--steps 5] [--only quickstart]

For the quickstart model (`configs/aclip_quickstart.py`, batch 64) and the paper's ViT-B/16
(`configs/aclip.py`, batch 8 on a CPU): milliseconds per jitted step (the compiling step
excluded, the best of `--steps`) and XLA's FLOP count of the compiled step, for CLIP on
one view, A-CLIP with `keep_path` 'gather' (kept patches gathered: the sequence shrinks)
and 'mask' (full length, dropped keys masked out of attention), and A-CLIP unmasked
(`mask='none'`); ratios against CLIP.
"""
import argparse
import tempfile
import time
from pathlib import Path

import jax

from clipjax import sharding
from clipjax.config_base import load_config
from clipjax.train.loop import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
CASES = {'quickstart': ('quickstart.py', 'aclip_quickstart.py', 64),
         'ViT-B/16': (None, 'aclip.py', 8)}


def config(path, batch_size, **overrides):
  c = load_config(str(CONFIGS / path))
  c.batch_size, c.evals, c.data.num_workers = batch_size, {}, 0
  c.model.dtype = 'float32'
  if c.model.name != 'tiny':  # synthetic data and a small tokenizer at the paper's shapes
    c.data = load_config(str(CONFIGS / 'quickstart.py')).data
    c.tokenizer.vocab_size = 49408
  c.update_from_flattened_dict(overrides)
  return c


def measure(c, steps):
  """(best seconds per step, compiled step FLOPs)."""
  trainer = Trainer(c, tempfile.mkdtemp())
  state, loader = trainer.initial_state(), trainer.make_loader()
  batches = [sharding.global_batch(next(loader), trainer.mesh) for _ in range(steps + 1)]
  flops = trainer.train_step.lower(state, batches[0]).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops)['flops']
  state, metrics = trainer.train_step(state, batches[0])
  jax.block_until_ready(metrics)
  best = float('inf')
  for batch in batches[1:]:
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    best = min(best, time.perf_counter() - start)
  return best, flops


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--only', default='')
  args = p.parse_args()
  print('| model | run | ms / step | vs CLIP | GFLOP / step | vs CLIP |')
  print('|---|---|---|---|---|---|')
  for name, (clip_path, aclip_path, batch) in CASES.items():
    if args.only not in name:
      continue
    runs = {'A-CLIP, gather': config(aclip_path, batch),
            'A-CLIP, mask': config(aclip_path, batch, **{'aclip.keep_path': 'mask'}),
            'A-CLIP, unmasked': config(aclip_path, batch, **{'aclip.mask': 'none'})}
    clip = config(clip_path or aclip_path, batch, method='clip')
    results = {'CLIP': measure(clip, args.steps)}
    results.update({run: measure(c, args.steps) for run, c in runs.items()})
    base_s, base_f = results['CLIP']
    for run, (s, f) in results.items():
      print(f'| {name} | {run} | {s * 1e3:.1f} | {s / base_s:.2f} | {f / 1e9:.2f} | '
            f'{f / base_f:.2f} |', flush=True)


if __name__ == '__main__':
  main()
