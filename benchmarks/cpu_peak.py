"""The CPU peak that runs divide by for MFU: how much other work on the host moves it.

  python benchmarks/cpu_peak.py [--repeats 8] [--busy 2]

`throughput.matmul_peak_flops` (the best 1024^3 float32 matmul over 0.5 s, what every CPU
run measures at start) against the same with `seconds=0` (the best of only 5, about 50 ms
on 2 cores), first on an idle host, then while `--busy` processes each multiply numpy
matrices for 0.2 s and sleep for 0.2 s (a bursty neighbour, as a data loader or a second
job is). A peak measured low inflates every MFU the run logs by the same factor.
"""
import argparse
import subprocess
import sys
import time

from clipjax.train import throughput

BURSTS = '''
import time, numpy as np
a = np.random.rand(600, 600)
while True:
  t = time.time()
  while time.time() - t < 0.2:
    a @ a
  time.sleep(0.2)
'''


def measure(repeats: int) -> dict:
  return {name: [throughput.matmul_peak_flops(seconds=s) / 1e9 for _ in range(repeats)]
          for name, s in (('best of 5', 0.0), ('best over 0.5 s', 0.5))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=8)
  p.add_argument('--busy', type=int, default=2, help='bursty neighbour processes')
  a = p.parse_args()
  rows = {'idle': measure(a.repeats)}
  neighbours = [subprocess.Popen([sys.executable, '-c', BURSTS]) for _ in range(a.busy)]
  try:
    time.sleep(1.0)
    rows[f'{a.busy} bursty neighbours'] = measure(a.repeats)
  finally:
    for n in neighbours:
      n.kill()
  print(f'Measured CPU peak, GFLOP/s, {a.repeats} measurements each (min-max, median):\n')
  print('| host | best of 5 | best over 0.5 s |\n|---|---|---|')
  for host, cells in rows.items():
    print(f'| {host} | ' + ' | '.join(
        f'{min(v):.0f}-{max(v):.0f} ({sorted(v)[len(v) // 2]:.0f})' for v in cells.values()) + ' |')


if __name__ == '__main__':
  main()
