"""Caption counting throughput of `clipjax.analysis.frequency`, lemmatisation included,
on one core: the figure that sizes a 400M-caption job.

  python benchmarks/frequency_counting.py                    # 200k captions, 4,000 concepts
  python benchmarks/frequency_counting.py --captions 50000

Captions are drawn from a real English vocabulary (the inflected forms in lemminflect's
own lookup table, plurals and verb forms included, ~70k words) by a Zipf law (s = 1.1,
as word frequencies in web text), 6 to 18 words with function words among them, so the
lemma cache sees a realistic number of distinct words rather than a toy set. Concepts:
3,000 single words and 1,000 pairs (the paper's 4,029 concepts). The captions sit in
memory: reading shards is not counted. The lemma cache starts empty. The whole job runs
(parts of 10,000 captions written to a temporary folder, then merged by one process,
one part at a time): the merge's time per part sizes the last step of a large job.
"""
import argparse
import csv
import gzip
import os
import tempfile
import time

import lemminflect
import numpy as np
from ml_collections import ConfigDict

from clipjax.analysis import concepts, frequency
from clipjax.analysis.concepts import STOPWORDS


class Captions:

  def __init__(self, captions):
    self.captions = captions

  def __len__(self):
    return len(self.captions)

  def caption(self, index):
    return self.captions[index]


def vocabulary() -> list:
  path = os.path.join(os.path.dirname(lemminflect.__file__), 'resources', 'lemma_lu.csv.gz')
  with gzip.open(path, 'rt') as f:
    words = {row[0].lower() for row in csv.reader(f) if row and row[0].isalpha()}
  return sorted(words)


def make_captions(words, n, rng) -> list:
  ranks = np.minimum(rng.zipf(1.1, size=n * 12), len(words)) - 1
  order = rng.permutation(len(words))  # which word gets which rank
  stop = sorted(STOPWORDS)
  captions, used = [], 0
  for length in rng.integers(6, 19, size=n):
    picked = [words[order[r]] for r in ranks[used:used + length]]
    used += length
    if used + 18 > len(ranks):
      used = 0
    picked[::3] = [stop[i] for i in rng.integers(len(stop), size=len(picked[::3]))]
    captions.append(' '.join(picked).capitalize() + '.')
  return captions


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--captions', type=int, default=200_000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  words = vocabulary()
  captions = make_captions(words, args.captions, rng)
  content = [w for w in words if w not in STOPWORDS]
  singles = list(rng.choice(content, 3000, replace=False))
  pairs = [' '.join(rng.choice(content, 2, replace=False)) for _ in range(1000)]
  config = ConfigDict(dict(data=dict(format='in memory'), concepts=dict(b=singles + pairs),
                           part_size=10_000, max_samples=None, tagger=dict(model='')))
  source = Captions(captions)
  concepts.lemmas.cache_clear()
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    frequency.count_parts(config, tmp, source=source)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = frequency.merge_parts(config, tmp, source=source)
    merge = time.perf_counter() - t0
  rate = len(captions) / seconds
  parts = -(-len(captions) // 10_000)
  distinct = len({w for c in captions for w in concepts.words(c)})
  hits = sum(r['text'] for r in counts['concepts'].values())
  print('| captions | distinct words | concepts | hits | count s | captions/s per core '
        '| merge s per part | 400M captions: count on 64 cores | merge (one process) |')
  print('|---|---|---|---|---|---|---|---|---|')
  print(f'| {len(captions):,} | {distinct:,} | {len(singles) + len(pairs):,} | {hits:,} | '
        f'{seconds:.1f} | {rate:,.0f} | {merge / parts:.3f} | '
        f'{400e6 / (64 * rate) / 60:.0f} min | {merge / parts * 40_000 / 60:.0f} min |')
  print(f'target: >= 2,000 captions/s per core; ratio {rate / 2000:.1f}x')


if __name__ == '__main__':
  main()
