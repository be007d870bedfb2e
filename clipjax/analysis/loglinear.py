"""Performance against log concept frequency, computed as the paper's notebooks do
(bethgelab/frequency_determines_performance, `save_plotting_info` in
notebooks/zero_shot_integrated_search_results.ipynb), plus a least-squares slope.

x = ln(max(count, 1)); edges = linspace(min x, max x, num_bins); bin b of a point is
`np.digitize(x, edges, right=True)`, the interval (edges[b-1], edges[b]], drawn at its
right edge. The curve is (edges[b], mean y in b) for b in 1..num_bins-2: the first and
last bins are dropped, as in the official plots (`first_bin=2` drops two at the start, as
their LAION-400M plots do). The paper's statistic is Pearson's r
between those edges and means. The official code indexes the means of non-empty bins
only, so an empty bin shifts every later mean onto the wrong edge; here an empty bin is
left out of the curve instead. The slope is ordinary least squares of y on ln(count)
over the raw points (accuracy points per e-fold of frequency); the paper fits none.
"""
import numpy as np
from scipy import stats


def log_counts(counts) -> np.ndarray:
  return np.log(np.maximum(np.asarray(counts, np.float64), 1.0))


def binned_curve(counts, values, num_bins: int = 12, first_bin: int = 1) -> dict:
  """{'edges': [k] log-frequency edges, 'mean', 'std', 'size': per drawn bin}."""
  x, y = log_counts(counts), np.asarray(values, np.float64)
  if len(x) != len(y) or len(x) < 2:
    raise ValueError(f'need as many values as counts (two or more), got {len(x)} counts '
                     f'and {len(y)} values')
  edges = np.linspace(x.min(), x.max(), num_bins)
  bins = np.digitize(x, edges, right=True)
  drawn = [b for b in range(first_bin, num_bins - 1) if np.any(bins == b)]
  return dict(edges=edges[drawn], mean=np.asarray([y[bins == b].mean() for b in drawn]),
              std=np.asarray([y[bins == b].std() for b in drawn]),
              size=np.asarray([np.sum(bins == b) for b in drawn]))


def fit(counts, values, num_bins: int = 12, first_bin: int = 1) -> dict:
  """Pearson r (and p) of the binned curve, as the paper reports it; Spearman rho and the
  OLS slope and intercept of the raw points against ln(count)."""
  curve = binned_curve(counts, values, num_bins, first_bin)
  x, y = log_counts(counts), np.asarray(values, np.float64)
  r, p = (stats.pearsonr(curve['edges'], curve['mean']) if len(curve['edges']) > 2
          else (np.nan, np.nan))
  slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (np.nan, np.nan)
  return dict(pearson_binned=float(r), p_binned=float(p),
              spearman=float(stats.spearmanr(x, y)[0]), slope=float(slope),
              intercept=float(intercept), num_concepts=int(len(x)), curve=curve)


def plot(ax, counts, values, label=None, num_bins: int = 12, **style) -> dict:
  """The raw points (faint), the binned curve and the OLS line on a log-x axis."""
  result = fit(counts, values, num_bins)
  x = np.maximum(np.asarray(counts, np.float64), 1.0)
  points = ax.scatter(x, values, s=8, alpha=0.25, **style)
  colour = points.get_facecolor()[0][:3]  # the points' colour without their alpha
  curve = result['curve']
  ax.plot(np.exp(curve['edges']), curve['mean'], marker='o', color=colour,
          label=f'{label or ""} r={result["pearson_binned"]:.2f}'.strip())
  grid = np.linspace(np.log(x.min()), np.log(x.max()), 50)
  ax.plot(np.exp(grid), result['intercept'] + result['slope'] * grid, ls='--', color=colour)
  ax.set_xscale('log')
  ax.set_xlabel('concept frequency in pretraining data')
  return result
