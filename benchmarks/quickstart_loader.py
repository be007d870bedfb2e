"""The quickstart's loader alone: examples/s over its first epoch (every sample drawn) and
over the next batches (the source's kept samples, `clipjax.data.shapes.ShapesSource`).

  python benchmarks/quickstart_loader.py [--workers 0 2] [--batches 300]

Compare with the step alone (`python benchmarks/train_step.py --only quickstart`): a
loader that yields batches faster than the step takes them keeps up, as far as the two
share this machine's cores. Rates are wall clock.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clipjax.config_base import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from clipjax.train.loop import Trainer  # pylint: disable=g-import-not-at-top,wrong-import-position

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs/quickstart.py')


def rates(workers: int, batches: int) -> tuple:
  """(first epoch, later) examples/s of the quickstart's loader with `workers`."""
  config = load_config(QUICKSTART)
  config.data.num_workers = workers
  with tempfile.TemporaryDirectory() as workdir:
    loader = Trainer(config, workdir).make_loader()
    it = iter(loader)
    epoch = config.data.train_num_samples // config.batch_size
    next(it)  # workers' start-up
    start = time.perf_counter()
    for _ in range(epoch - 1):
      next(it)
    middle = time.perf_counter()
    for _ in range(batches):
      next(it)
    end = time.perf_counter()
    loader.close()
  b = config.batch_size
  return (epoch - 1) * b / (middle - start), batches * b / (end - middle)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
  parser.add_argument('--batches', type=int, default=300,
                      help='batches timed after the first epoch')
  args = parser.parse_args(argv)
  print('| workers | first epoch, examples/s | later epochs, examples/s |')
  print('|---|---|---|')
  for workers in args.workers:
    first, later = rates(workers, args.batches)
    print(f'| {workers} | {first:,.0f} | {later:,.0f} |', flush=True)


if __name__ == '__main__':
  main()
