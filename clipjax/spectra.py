"""Feature spectra (NMTune, Chen et al. ICLR 2024 §3): how pretraining noise reshapes a
frozen feature space, read off the singular values of a downstream set's features.

As the official `svd.py` computes them: each row L2-normalised, then centred over its
own D coordinates (the row mean, not the column mean; reproduced as written), then all
min(M, D) singular values. With s~ = s / sum(s):

  singular value entropy (SVE)        = -sum_i s~_i log s~_i   (flatter spectrum: larger)
  largest singular value ratio (LSVR) = s~_1                   (one dominant direction)

The paper ties slight noise to a higher SVE (small in-domain gains) and noise of any
amount to out-of-domain losses, which NMTune's regulariser counters by raising the top
normalised singular values (`clipjax.methods.nmtune.dominant_singular_loss`).
"""
import numpy as np


def singular_values(features) -> np.ndarray:
  """float64 [min(M, D)], descending, of row-normalised, row-centred `features` [M, D]."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or min(x.shape) == 0:
    raise ValueError(f'singular_values wants a non-empty [M, D] matrix, got shape {x.shape}')
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  x = x - x.mean(axis=1, keepdims=True)
  return np.linalg.svd(x, compute_uv=False)


def _normalised(s) -> np.ndarray:
  s = np.asarray(s, np.float64)
  return s / s.sum()


def singular_value_entropy(s) -> float:
  p = _normalised(s)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def largest_singular_value_ratio(s) -> float:
  return float(_normalised(s).max())


def spectrum(features) -> dict:
  """{'sve', 'lsvr', 'singular_values'} of a feature set."""
  s = singular_values(features)
  return dict(sve=singular_value_entropy(s), lsvr=largest_singular_value_ratio(s),
              singular_values=s)


def plot_spectra(ax, spectra: dict, top: int = 32) -> None:
  """Normalised singular values (log scale) of named sets, one line each, on a
  matplotlib axis."""
  for name, s in spectra.items():
    p = _normalised(s)[:top]
    ax.semilogy(np.arange(1, len(p) + 1), p, label=name)
  ax.set_xlabel('index i')
  ax.set_ylabel('s_i / sum s')
  ax.legend(fontsize=7)
