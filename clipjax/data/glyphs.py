"""Hand-drawn-looking digits 0-9 rendered from stroke templates, for the synthetic data.

Shapes alone teach a tower shape and colour, not the strokes that tell a "3" from an
"8": a linear probe on real handwritten digits then does worse on trained features than
on random ones (the random features keep every pixel). Digits drawn with a varied pen
(slant, shear, aspect, stroke width, wobbly control points, low-resolution blur) give
the captions something stroke-level to name.
"""
import functools

import numpy as np
from PIL import Image


def _arc(cx, cy, rx, ry, start, stop, num=14):
  """Points of an elliptic arc; angles in degrees, 0 = right, 90 = down (image y)."""
  a = np.deg2rad(np.linspace(start, stop, num))
  return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _line(*points):
  return np.asarray(points, np.float64)


# Each digit: strokes (polylines) in a unit box, x right, y down.
STROKES = {
    0: [_arc(0.5, 0.5, 0.32, 0.45, 0, 360, 24)],
    1: [_line((0.3, 0.25), (0.55, 0.05), (0.55, 0.95))],
    2: [np.concatenate([_arc(0.5, 0.3, 0.3, 0.25, 200, 380),
                        _line((0.15, 0.95), (0.85, 0.95))])],
    3: [_arc(0.5, 0.28, 0.28, 0.22, 200, 450), _arc(0.5, 0.72, 0.3, 0.24, 270, 520)],
    4: [_line((0.6, 0.05), (0.12, 0.65), (0.88, 0.65)), _line((0.65, 0.35), (0.65, 0.95))],
    5: [np.concatenate([_line((0.8, 0.05), (0.25, 0.05), (0.2, 0.45)),
                        _arc(0.48, 0.66, 0.32, 0.29, -150, 150)])],
    6: [_arc(0.72, 0.68, 0.52, 0.63, 265, 180), _arc(0.5, 0.68, 0.3, 0.27, 180, 540, 20)],
    7: [_line((0.15, 0.05), (0.85, 0.05), (0.4, 0.95))],
    8: [_arc(0.5, 0.27, 0.24, 0.22, 0, 360, 18), _arc(0.5, 0.72, 0.3, 0.25, 0, 360, 20)],
    9: [_arc(0.5, 0.3, 0.3, 0.26, 0, 360, 20), _line((0.8, 0.3), (0.75, 0.95))],
}


def _segments(digit: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 2, 2] stroke segments of `digit` in the unit box after a random pen: every
  control point wobbles, then the glyph is sheared, rotated and squeezed."""
  wobble = rng.uniform(0.0, 0.04)
  shear, angle = rng.uniform(-0.25, 0.25), np.deg2rad(rng.uniform(-12, 12))
  aspect = rng.uniform(0.55, 0.9)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  out = []
  for stroke in STROKES[digit]:
    p = stroke + rng.normal(0, wobble, size=stroke.shape) - 0.5
    p = p @ np.array([[aspect, 0.0], [shear, 1.0]]).T @ rot.T
    out.append(np.stack([p[:-1], p[1:]], axis=1))
  return np.concatenate(out)


@functools.lru_cache(maxsize=None)
def _pixel_centres(size: int) -> tuple:
  """(x, y) of every pixel centre of a [size, size] image, row-major, each [1, size²]."""
  grid = np.arange(size, dtype=np.float64) + 0.5
  x, y = (np.ascontiguousarray(a.reshape(1, -1)) for a in np.meshgrid(grid, grid))
  x.flags.writeable = y.flags.writeable = False
  return x, y


def _distance_to_segments(px: np.ndarray, py: np.ndarray, segments: np.ndarray) -> np.ndarray:
  """[P] distance of each point (px, py: [1, P]) to the nearest segment [S, 2, 2].

  The glyphs' bits are pinned (the quickstart's figures depend on them): every element
  gets the same float64 operations in the same order as the plain vector form, but laid
  out [S, P] (the min runs down contiguous rows), in place, coordinates kept apart."""
  ax, ay = segments[:, 0, 0:1], segments[:, 0, 1:2]
  abx, aby = segments[:, 1, 0:1] - ax, segments[:, 1, 1:2] - ay
  t = (px - ax) * abx
  t += (py - ay) * aby
  t /= np.maximum(abx * abx + aby * aby, 1e-12)
  np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
  ex = t * abx
  ex += ax
  np.subtract(px, ex, out=ex)
  t *= aby
  t += ay
  np.subtract(py, t, out=t)
  ex *= ex
  t *= t
  ex += t
  return np.sqrt(ex.min(axis=0))  # sqrt is monotone: min first


def draw_digit(digit: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
  """float32 [S, S] ink in [0, 1]: one digit filling most of the frame, anti-aliased,
  sometimes drawn at low resolution and upsampled (blurred, as scanned digits are)."""
  if digit not in STROKES:
    raise ValueError(f'draw_digit: digit must be 0..9, got {digit!r}')
  s = image_size
  low = rng.random() < 0.5
  render = int(rng.integers(8, 17)) if low and s > 16 else s
  height = rng.uniform(0.65, 0.9) * render
  centre = render / 2 + rng.uniform(-0.06, 0.06, size=2) * render
  width = rng.uniform(0.06, 0.13) * height + 0.35
  segments = _segments(digit, rng) * height + centre
  d = _distance_to_segments(*_pixel_centres(render), segments).reshape(render, render)
  ink = np.clip(width - d + 0.5, 0.0, 1.0)
  if render != s:
    ink = np.asarray(Image.fromarray(ink.astype(np.float32)).resize((s, s), Image.BILINEAR))
  return ink.astype(np.float32)
