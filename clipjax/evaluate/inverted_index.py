"""Sparse retrieval over lexical vectors (LexVLA, VDR, SPLADE) with an inverted index.

Items are stored by word: for every word, the items that activate it and their weights
(CSR over the vocabulary). A query touches only the posting lists of its own active words,
so its cost is the summed length of those lists, not items x vocabulary as in dense
retrieval. Scores are the dot products of the stored (sparsified) vectors, accumulated in
float64: the top k equal dense retrieval's over the same vectors up to the order of
summation (exactly, where products are representable), ties broken by the lower item id.
`benchmarks/sparse_retrieval.py` times it against dense retrieval.
"""
import numpy as np


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
  """Ids of the k highest scores of each row, best first, ties to the lower id."""
  k = min(k, scores.shape[-1])
  part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
  # Items tied with the k-th score outside the partition would break the tie rule: take
  # every item scoring at least the k-th score, then order by (-score, id).
  out = np.empty((len(scores), k), np.int64)
  for row, (s, p) in enumerate(zip(scores, part)):
    candidates = np.flatnonzero(s >= s[p].min())
    out[row] = candidates[np.lexsort((candidates, -s[candidates]))][:k]
  return out


def keep_top_words(vectors: np.ndarray, k: int) -> np.ndarray:
  """Each row's k largest entries (by value, ties to the lower word), the rest zero."""
  vectors = np.asarray(vectors, np.float32)
  out = np.zeros_like(vectors)
  if k <= 0:
    return out
  words = top_k_rows(vectors, k)
  rows = np.arange(len(vectors))[:, None]
  out[rows, words] = vectors[rows, words]
  return out


class InvertedIndex:
  """Non-negative item vectors [N, V] (zeros: inactive words) indexed by word."""

  def __init__(self, vectors: np.ndarray):
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2:
      raise ValueError(f'InvertedIndex wants [items, vocabulary] vectors, got {vectors.shape}')
    self.num_items, self.vocab_size = vectors.shape
    words, items = np.nonzero(vectors.T)  # word-major: each word's items, ascending
    self.items = items.astype(np.int32)
    self.weights = vectors[items, words]
    self.offsets = np.searchsorted(words, np.arange(self.vocab_size + 1))

  @property
  def postings(self) -> int:
    return len(self.items)

  def scores(self, query: np.ndarray) -> np.ndarray:
    """float64 [N]: the query's dot product with every item, from its words' lists."""
    out = np.zeros(self.num_items, np.float64)
    for word in np.flatnonzero(query):
      start, end = self.offsets[word], self.offsets[word + 1]
      out[self.items[start:end]] += np.float64(query[word]) * self.weights[start:end]  # ids unique per list
    return out

  def search(self, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """int64 [Q, k]: the top-k item ids of each query, best first."""
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.vocab_size:
      raise ValueError(f'queries must be [Q, {self.vocab_size}], got {queries.shape}')
    return top_k_rows(np.stack([self.scores(q) for q in queries]), k)
