"""ProtoCLIP's episode hook on the quickstart (`configs/protoclip_quickstart.py`): seconds
per episode (the sharded feature pass over its 3,200 samples, K-means per modality, back
translation) by the feature pass's read threads (`data.read_threads`).

  python benchmarks/protoclip_episode.py [--threads 0 16] [--episodes 3]

Each thread count runs in a fresh trainer: the first pass over the episodes draws their
samples, the second finds them kept by the source (`clipjax.data.shapes.ShapesSource`),
as from the quickstart's second epoch. The labels do not depend on the thread count.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clipjax.config_base import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from clipjax.train.loop import Trainer  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'configs/protoclip_quickstart.py')


def seconds(threads: int, episodes: int) -> tuple:
  """(drawn, kept) median seconds of an episode hook with `threads` read threads."""
  config = load_config(CONFIG)
  config.data.read_threads = threads
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir)
    state, method = trainer.initial_state(), trainer.method
    method.new_episode(trainer.hook_context, state)  # compiles; episode 0 is now kept
    passes = []
    for _ in range(2):
      times = []
      for episode in range(1, episodes + 1):
        at = state.replace(step=np.int32(episode * method.steps_per_episode))
        start = time.perf_counter()
        method.new_episode(trainer.hook_context, at)
        times.append(time.perf_counter() - start)
      passes.append(float(np.median(times)))
  return tuple(passes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--threads', type=int, nargs='+', default=[0, 16])
  parser.add_argument('--episodes', type=int, default=3)
  args = parser.parse_args(argv)
  print('| read threads | episode, samples drawn (s) | episode, samples kept (s) |')
  print('|---|---|---|')
  for threads in args.threads:
    drawn, kept = seconds(threads, args.episodes)
    print(f'| {threads} | {drawn:.2f} | {kept:.2f} |', flush=True)


if __name__ == '__main__':
  main()
