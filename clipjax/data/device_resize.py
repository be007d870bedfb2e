"""Pillow's bicubic resize split in two: the host plans it, the accelerator does it.

A resized crop is half a training sample's host CPU time (`benchmarks/input_pipeline.py`),
so with `data.canvas_size` set a record transform ships the decoded pixels the crop reads
(uint8, in a fixed canvas), Pillow's filter taps and the normalisation, and the jitted step
makes the model's float image from them (`finish`). The taps are Pillow's own fixed-point
coefficients (Resample.c: `precompute_coeffs`, `normalize_coeffs_8bpc`), computed in float64
on the host and applied in int32 on the device in Pillow's order of passes, each rounded to
8 bits, so the device's image is bit for bit what `Image.resize(size, BICUBIC, box)` gives:
the crops, their distribution and every pixel stay those of the host path.

A deferred image `key` is four batch entries: `key` uint8 [C, C, 3] (the pixels the resize
reads, top-left; transposed when Pillow would resize rows first), `key + TAPS` int32
[2, S, 1 + K] (per output row, then column, of the canvas: the first canvas pixel it reads,
then K coefficients), `key + TRANSPOSED` bool (the canvas is transposed) and `key + NORM`
float32 [3, 256] (each channel's normalised value of each pixel value: a table, computed
as the host path computes it, since XLA fuses a multiply-add into one rounding).
"""
import math

import jax.numpy as jnp
import numpy as np

TAPS, TRANSPOSED, NORM = '.taps', '.transposed', '.normalised'
PARTS = (TAPS, TRANSPOSED, NORM)
_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_SUPPORT = 2.0  # bicubic


def num_taps(canvas: int, size: int) -> int:
  """The most taps one output pixel reads when a crop up to `canvas` wide becomes `size`."""
  return math.ceil(_SUPPORT * max(canvas / size, 1.0)) * 2 + 1


def _bicubic(x):
  """Pillow's bicubic_filter (a = -0.5), in its order of operations."""
  x = np.abs(x)
  near = ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * -0.5
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pillow_taps(in_size, lo, hi, out, first, size: int) -> tuple:
  """Pillow's resize of [lo, hi) of an axis of `in_size` pixels to `out` pixels, outputs
  `first` to `first + size`, for A axes at once (each argument [A]): (first input pixel
  int [A, size], taps read int [A, size], fixed-point coefficients int32 [A, size, ksize])."""
  in_size, first = np.asarray(in_size)[:, None], np.asarray(first)[:, None]
  lo, hi, out = (np.asarray(v, np.float64)[:, None] for v in (lo, hi, out))
  scale = (hi - lo) / out
  filterscale = np.maximum(scale, 1.0)
  support = _SUPPORT * filterscale
  ksize = int(np.ceil(support).max()) * 2 + 1
  center = lo + (first + np.arange(size) + 0.5) * scale
  start = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
  count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - start
  x = np.arange(ksize)[:, None, None]  # [ksize, A, size]: summed over axis 0 in Pillow's order
  w = _bicubic((x + start - center + 0.5) * (1.0 / filterscale))
  w = np.where(x < count, w, 0.0)
  total = w.sum(axis=0)
  w = w / np.where(total == 0.0, 1.0, total)
  w *= 1 << _BITS
  fixed = np.where(w < 0, np.trunc(-0.5 + w), np.trunc(0.5 + w)).astype(np.int32)
  return start, count, fixed.transpose(1, 2, 0)


def plan(pixels: np.ndarray, rows: tuple, cols: tuple, size: int, canvas: int):
  """A deferred image's (pixels, taps, transposed), or None when the pixels it reads do
  not fit the canvas: `size` outputs from `first` on of Pillow's resize of [lo, hi) to `out`
  pixels along each axis of `pixels` uint8 [H, W, 3] (`rows`, `cols`: (lo, hi, out, first))."""
  k = num_taps(canvas, size)
  (lo, hi, out, first), in_size = zip(rows, cols), pixels.shape[:2]
  start, count, coef = pillow_taps(in_size, lo, hi, out, first, size)
  begin, end = start.min(axis=1), np.minimum((start + count).max(axis=1), in_size)
  if (end - begin).max() > canvas:
    return None
  taps = np.zeros((2, size, 1 + k), np.int32)
  taps[:, :, 0] = start - begin[:, None]
  # A resize whose pixels fit the canvas reads at most k taps; zeros pad the rest.
  taps[:, :, 1:1 + coef.shape[2]] = coef[:, :, :k]
  block = pixels[begin[0]:end[0], begin[1]:end[1]]
  shrink_h, shrink_w = in_size[0] - out[0], in_size[1] - out[1]
  transposed = 0 < shrink_h and shrink_h > 2 * shrink_w  # Pillow 13 then resizes rows first
  if transposed:
    block, taps = block.transpose(1, 0, 2), taps[::-1]
  h, w = block.shape[:2]
  canvas_pixels = np.empty((canvas, canvas, 3), np.uint8)  # written once, not faulted twice
  canvas_pixels[:h, :w] = block
  canvas_pixels[h:] = 0
  canvas_pixels[:h, w:] = 0
  return canvas_pixels, np.ascontiguousarray(taps), np.bool_(transposed)


def identity(pixels: np.ndarray, canvas: int):
  """`plan` of an image already at its size: the pixels as they are."""
  size = pixels.shape[0]
  return plan(pixels, (0, size, size, 0), (0, size, size, 0), size, canvas)


def resample(pixels, taps, transposed):
  """uint8 [B, C, C, 3], taps [B, 2, S, 1 + K], transposed [B] -> uint8 [B, S, S, 3]:
  Pillow's two passes over the canvas, along its rows first, each accumulated in int32 then
  rounded and clipped to 8 bits; transposed canvases are transposed back."""
  x = pixels
  for axis, t in ((2, taps[:, 1]), (1, taps[:, 0])):
    shape = [t.shape[0], 1, 1, 1]
    shape[axis] = t.shape[1]
    acc = jnp.int32(1 << (_BITS - 1))
    for j in range(t.shape[-1] - 1):
      tap = jnp.take_along_axis(x, (t[..., 0] + j).reshape(shape), axis=axis, mode='clip')
      acc = acc + tap.astype(jnp.int32) * t[..., 1 + j].reshape(shape)
    x = jnp.clip(jnp.right_shift(acc, _BITS), 0, 255).astype(jnp.uint8)
  return jnp.where(transposed[:, None, None, None], x.swapaxes(1, 2), x)


def normalisation_table(scale, offset) -> np.ndarray:
  """float32 [3, 256]: pixel value v of channel c -> v * scale[c] + offset[c], rounded as
  the host path rounds it (the product, then the sum)."""
  table = np.multiply(np.arange(256, dtype=np.uint8)[None], np.asarray(scale)[:, None],
                      dtype=np.float32)
  table += np.asarray(offset, np.float32)[:, None]
  return table


def finish(batch: dict) -> dict:
  """The batch the model reads: every deferred image resampled and normalised (float32);
  a batch without deferred images is returned as it is."""
  out = {}
  for key, value in batch.items():
    if key.endswith(PARTS):
      continue
    if key + TAPS in batch:
      pixels = resample(value, batch[key + TAPS], batch[key + TRANSPOSED])
      table = batch[key + NORM].reshape(-1, 1, 1, 3 * 256)
      channel_values = pixels.astype(jnp.int32) + 256 * jnp.arange(3)
      value = jnp.take_along_axis(table, channel_values, axis=-1)
    out[key] = value
  return out
