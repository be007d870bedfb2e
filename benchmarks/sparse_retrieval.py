"""Sparse retrieval with an inverted index against dense retrieval of the same vectors.

  python benchmarks/sparse_retrieval.py                  # 100k items, V = 17,149, 64 words each
  python benchmarks/sparse_retrieval.py --vocab 98 --words 4

Items and queries are lexical vectors as LexVLA's sparsification leaves them: `--words`
active words per vector (word frequencies Zipf-distributed, as in text), positive weights,
unit norm. Dense retrieval multiplies the queries by the item matrix (float32 BLAS, held
whole: 6.9 GB at the defaults; scores in chunks of `--chunk` items) and takes the top 10; sparse retrieval walks
the queries' posting lists (`clipjax.evaluate.inverted_index`). Both are timed on the same
queries on one thread each; the table gives the top-10 agreement (identical lists) too.
"""
import argparse
import os
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from clipjax.evaluate.inverted_index import InvertedIndex, top_k_rows  # pylint: disable=wrong-import-position


def lexical_vectors(n: int, vocab: int, words: int, rng, block: int = 2000) -> np.ndarray:
  """[n, vocab] float32: `words` distinct Zipf-drawn words per row (Gumbel top-k, drawn
  without replacement in proportion to 1/rank), positive weights, unit norm."""
  log_p = -np.log(np.arange(1, vocab + 1, dtype=np.float32))
  out = np.zeros((n, vocab), np.float32)
  for start in range(0, n, block):
    rows = min(block, n - start)
    keys = log_p + rng.gumbel(size=(rows, vocab)).astype(np.float32)
    chosen = np.argpartition(-keys, words - 1, axis=1)[:, :words]
    out[start + np.arange(rows)[:, None], chosen] = rng.uniform(0.1, 1.0, size=(rows, words))
  out /= np.linalg.norm(out, axis=1, keepdims=True)
  return out


def dense_top10(items: np.ndarray, queries: np.ndarray, chunk: int) -> np.ndarray:
  scores = np.concatenate([queries @ items[s:s + chunk].T for s in range(0, len(items), chunk)],
                          axis=1)
  return top_k_rows(scores.astype(np.float64), 10)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--items', type=int, default=100_000)
  parser.add_argument('--vocab', type=int, default=17_149)  # Llama 2's filtered vocabulary
  parser.add_argument('--words', type=int, default=64)
  parser.add_argument('--queries', type=int, default=200)
  parser.add_argument('--chunk', type=int, default=10_000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  items = lexical_vectors(args.items, args.vocab, args.words, rng)
  queries = lexical_vectors(args.queries, args.vocab, args.words, rng)
  t = time.perf_counter()
  index = InvertedIndex(items)
  build = time.perf_counter() - t
  t = time.perf_counter()
  dense = dense_top10(items, queries, args.chunk)
  dense_s = (time.perf_counter() - t) / args.queries
  t = time.perf_counter()
  sparse = index.search(queries, 10)
  sparse_s = (time.perf_counter() - t) / args.queries
  same = float(np.mean(np.all(dense == sparse, axis=1)))
  print(f'{args.items} items, vocabulary {args.vocab}, {args.words} active words per vector '
        f'({100 * args.words / args.vocab:.2f}%), {args.queries} queries, 1 thread; '
        f'index: {index.postings} postings, built in {build:.1f} s')
  print('| retrieval | ms per query | speed-up vs dense | top-10 identical to dense |')
  print('|---|---|---|---|')
  print(f'| dense (float32 matmul, chunked) | {1e3 * dense_s:.2f} | 1.00x | - |')
  print(f'| inverted index | {1e3 * sparse_s:.2f} | {dense_s / sparse_s:.2f}x | {same:.3f} |')


if __name__ == '__main__':
  main()
