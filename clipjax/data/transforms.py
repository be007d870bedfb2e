"""Per-record transforms (numpy, host side): crops and normalisation shared by training and
evaluation, and the records -> batch-row transforms that methods hand to the pipeline.

A record transform is a picklable `transform(record, rng) -> dict` run in grain workers:
`record` holds what the source decoded ('image' uint8 [H, W, 3] or PIL, 'caption', 'index'
for random-access sources, 'key' for shards, extra columns), `rng` a numpy Generator
that is a function of (seed, position in the stream). It returns one batch row: a dict of
arrays whose keys the method declares (`Method.example_batch`). It may raise
`sources.BadSample` to have the record skipped and counted.
"""
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from clipjax.data import device_resize

# OpenAI CLIP normalisation, the default everywhere open_clip users expect it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_AUGMENT = {'scale': (0.9, 1.0), 'ratio': (3 / 4, 4 / 3)}


def normalize(images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 [..., H, W, 3] -> float32 normalised."""
  x = images.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def center_crop_geometry(width: int, height: int, size: int) -> tuple:
  """(resized width, resized height, left, top) of `resize_center_crop`."""
  scale = size / min(width, height)
  w, h = max(size, round(width * scale)), max(size, round(height * scale))
  return w, h, (w - size) // 2, (h - size) // 2


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Evaluation transform: resize the short side to `size` (bicubic), centre crop."""
  image = image.convert('RGB')
  w, h, left, top = center_crop_geometry(*image.size, size)
  image = image.resize((w, h), Image.BICUBIC)
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def random_resized_crop_box(height, width, rng, scale, ratio):
  """torchvision's RandomResizedCrop box (x0, y0, x1, y1): area fraction in `scale`,
  log-uniform aspect ratio in `ratio`; falls back to the central crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y0 = int(rng.integers(0, height - h + 1))
      x0 = int(rng.integers(0, width - w + 1))
      return x0, y0, x0 + w, y0 + h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  x0, y0 = (width - w) // 2, (height - h) // 2
  return x0, y0, x0 + w, y0 + h


def random_resized_crop(image, size: int, rng, scale=DEFAULT_AUGMENT['scale'],
                        ratio=DEFAULT_AUGMENT['ratio']) -> np.ndarray:
  """uint8 [H, W, 3] or RGB PIL image -> uint8 [size, size, 3] (bicubic), CLIP's
  training crop."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  box = random_resized_crop_box(image.height, image.width, rng, scale, ratio)
  return np.asarray(image.resize((size, size), Image.BICUBIC, box=box), np.uint8)


def adjust_hue(image: Image.Image, factor: float) -> Image.Image:
  """Hue rotated by `factor` of a turn in HSV (torchvision's PIL path, uint8 wrap-around)."""
  h, s, v = image.convert('HSV').split()
  shifted = (np.asarray(h, np.int16) + int(factor * 255)) % 256
  return Image.merge('HSV', (Image.fromarray(shifted.astype(np.uint8), 'L'), s, v)).convert('RGB')


def colour_augment(image: Image.Image, rng, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                   grayscale_p=0.2, blur_p=0.1, blur_sigma=(0.1, 2.0),
                   solarize_p=0.2) -> Image.Image:
  """SLIP / A-CLIP's colour augmentations on an RGB PIL image, each with its probability:
  torchvision's ColorJitter (brightness, contrast, saturation factors uniform in
  [1 - x, 1 + x], hue shift uniform in [-x, x], applied in random order), random
  grayscale, Gaussian blur (sigma uniform in `blur_sigma`) and solarisation at 128."""
  if rng.random() < jitter_p:
    b, c, s, h = jitter
    factors = [rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
               rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h)]
    ops = [lambda im, f: ImageEnhance.Brightness(im).enhance(f),
           lambda im, f: ImageEnhance.Contrast(im).enhance(f),
           lambda im, f: ImageEnhance.Color(im).enhance(f), adjust_hue]
    for i in rng.permutation(4):
      image = ops[i](image, factors[i])
  if rng.random() < grayscale_p:
    image = image.convert('L').convert('RGB')
  if rng.random() < blur_p:
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*blur_sigma)))
  if rng.random() < solarize_p:
    image = ImageOps.solarize(image, 128)
  return image


def to_size(image, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: as is when already that size, else resize and centre crop."""
  if isinstance(image, np.ndarray):
    if image.shape[0] == size and image.shape[1] == size:
      return image
    image = Image.fromarray(image)
  return resize_center_crop(image, size)


class ImageText:
  """{'image': f32 [S, S, 3] normalised, 'text': i32 [L], *extra_keys}: a random resized
  crop (or resize-centre-crop when `augment` is None), the caption tokenized, and extra
  columns passed through (str values tokenized like the caption). With a `canvas_size`,
  'image' is deferred: its pixels, taps and normalisation, which the step turns into the
  same values on the accelerator (`clipjax.data.device_resize`)."""

  def __init__(self, tokenizer, context_length: int, image_size: int, augment=None,
               mean=CLIP_MEAN, std=CLIP_STD, extra_keys=(), canvas_size: int = 0):
    self.tokenizer, self.context_length = tokenizer, context_length
    self.image_size = image_size
    # normalize() as one multiply-add: (x / 255 - mean) / std.
    self.scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    self.offset = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    self.augment = None if augment is None else {**DEFAULT_AUGMENT, **augment}
    self.extra_keys = tuple(extra_keys)
    if canvas_size and canvas_size < image_size:
      raise ValueError(f'data.canvas_size={canvas_size} is smaller than the image size '
                       f'{image_size}: the canvas holds the pixels a crop reads')
    self.canvas_size = canvas_size
    self._table = device_resize.normalisation_table(self.scale, self.offset)

  @classmethod
  def from_config(cls, data_config, *, tokenizer, context_length: int, image_size: int):
    """From a data config's `augment`, `mean`, `std`, `extra_columns` and `canvas_size` keys."""
    get = data_config.get
    plain = lambda v: v.to_dict() if hasattr(v, 'to_dict') else v
    kwargs = {k: plain(get(k)) for k in ('augment', 'mean', 'std') if get(k) is not None}
    return cls(tokenizer, context_length, image_size, canvas_size=get('canvas_size') or 0,
               extra_keys=tuple(plain(get('extra_columns') or {})), **kwargs)

  def image(self, record, rng) -> dict:
    """{'image': the record's image cropped (or resized) and normalised, f32 [S, S, 3]},
    or with a canvas the deferred image's entries."""
    image = record['image']
    if not self.canvas_size:
      if self.augment is None:
        image = to_size(image, self.image_size)
      else:
        image = random_resized_crop(image, self.image_size, rng, self.augment['scale'],
                                    self.augment['ratio'])
      pixels = np.multiply(image, self.scale, dtype=np.float32)
      pixels += self.offset
      return {'image': pixels}
    parts = self._deferred(image, rng)
    return dict(zip(('image',) + tuple('image' + p for p in device_resize.PARTS),
                    parts + (self._table,)))

  def image_example(self, batch_size: int) -> dict:
    """Zero arrays with the shapes and dtypes of `image`'s entries, batched."""
    s, c = self.image_size, self.canvas_size
    if not c:
      return {'image': np.zeros((batch_size, s, s, 3), np.float32)}
    k, d = device_resize.num_taps(c, s), device_resize
    return {'image': np.zeros((batch_size, c, c, 3), np.uint8),
            'image' + d.TAPS: np.zeros((batch_size, 2, s, 1 + k), np.int32),
            'image' + d.TRANSPOSED: np.zeros((batch_size,), np.bool_),
            'image' + d.NORM: np.zeros((batch_size, 3, 256), np.float32)}

  def _deferred(self, image, rng) -> tuple:
    """(pixels, taps, transposed) of the crop `image` would get on the host path."""
    s, canvas = self.image_size, self.canvas_size
    if isinstance(image, np.ndarray) and self.augment is None and image.shape[:2] == (s, s):
      return device_resize.identity(image, canvas)
    if not isinstance(image, np.ndarray) and image.mode != 'RGB':
      image = image.convert('RGB')
    pixels = np.asarray(image, np.uint8)
    h, w = pixels.shape[:2]
    if self.augment is None:
      rw, rh, left, top = center_crop_geometry(w, h, s)
      rows, cols = (0, h, rh, top), (0, w, rw, left)
    else:
      x0, y0, x1, y1 = random_resized_crop_box(h, w, rng, self.augment['scale'],
                                               self.augment['ratio'])
      rows, cols = (y0, y1, s, 0), (x0, x1, s, 0)
    parts = device_resize.plan(pixels, rows, cols, s, canvas)
    if parts is None:  # it reads more than the canvas holds: resized here, shipped as is
      if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
      box = (cols[0], rows[0], cols[1], rows[1])
      resized = image.resize((cols[2], rows[2]), Image.BICUBIC, box=box)
      crop = (cols[3], rows[3], cols[3] + s, rows[3] + s)
      parts = device_resize.identity(np.asarray(resized.crop(crop), np.uint8), canvas)
    return parts

  def __call__(self, record, rng) -> dict:
    out = dict(self.image(record, rng), text=self._tokens(record['caption']))
    for key in self.extra_keys:
      value = record[key]
      out[key] = self._tokens(value) if isinstance(value, str) else np.asarray(value)
    return out

  def _tokens(self, text: str) -> np.ndarray:
    return self.tokenizer([text], self.context_length)[0]
