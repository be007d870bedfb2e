"""Synthetic captioned shapes: a tiny image-text dataset for tests and the quickstart.

Every sample is a pure function of (seed, split, index), so the source is random
access and any position in an epoch can be regenerated exactly (resume, workers).

Scenes hold one to three objects, each a (shape, colour, size, position). The
'heldout' split only uses the (shape, colour) pairs in `HELDOUT_COMBOS`, which the
'train' split never draws: zero-shot accuracy on it measures composition of
attributes seen separately in training, not memorised pairs. The 'all' split draws
every pair.

With `digit_fraction` > 0 that share of the training samples is instead one drawn digit
(`clipjax.data.glyphs`) captioned with its number, so trained features also separate
strokes (real handwritten digits: sklearn's, MNIST). Which indices are digits comes
from its own random stream: the shape samples stay the same whatever the fraction.

With `caption_style='long'` scenes hold two to four objects and each caption names every
object's colour, shape and position after a generic opening sentence: more than a 32-token
text tower reads (FLAME's long-caption retrieval).

With `zipf` > 0 the attributes are long-tailed, as concepts in web data are: the shape and
the colour of rank r (in `SHAPES` and `COLOURS` order) are drawn in proportion to
r ** -zipf, independently, so a (shape, colour) pair's share is the product and spans
orders of magnitude (the concept-frequency study, `clipjax.analysis.frequency_study`).
"""
import dataclasses
import functools

import numpy as np

from clipjax.data import glyphs

SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross', 'ring')
COLOURS = {  # No name starts with a vowel, so "a {}" reads right for every class.
    'red': (220, 40, 40),
    'green': (40, 190, 60),
    'blue': (50, 80, 235),
    'yellow': (240, 220, 40),
    'purple': (150, 50, 200),
    'pink': (255, 140, 190),
    'cyan': (40, 210, 220),
    'white': (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
# Colours shown with every shape, in training only. Six colours per shape let the image
# tower bind shape to colour; fourteen push it towards colour-invariant shape features,
# which the held-out combinations test.
EXTRA_COLOURS = {
    'brown': (140, 80, 30), 'grey': (140, 140, 140), 'navy': (20, 30, 130),
    'maroon': (125, 10, 45), 'lime': (170, 255, 60), 'teal': (0, 130, 130),
}
COLOURS.update(EXTRA_COLOURS)
SIZES = ('small', 'large')
POSITIONS = ('left', 'right', 'top', 'bottom', 'centre')
# Object centres as fractions of the image side (x, y).
_CENTRES = {'left': (0.24, 0.5), 'right': (0.76, 0.5), 'top': (0.5, 0.24),
            'bottom': (0.5, 0.76), 'centre': (0.5, 0.5)}
_RADII = {'small': 0.18, 'large': 0.28}  # fractions of the image side; big enough for 8px patches
_POSITION_PHRASES = {
    'left': ('on the left', 'at the left', 'on the left side'),
    'right': ('on the right', 'at the right', 'on the right side'),
    'top': ('at the top', 'near the top', 'in the upper part'),
    'bottom': ('at the bottom', 'near the bottom', 'in the lower part'),
    'centre': ('in the centre', 'in the middle', 'in the center'),
}
# Shape s is never shown in colours 2s and 2s+1 (mod 8) during training: 12 of the
# 48 pairs. Every shape and every colour still occurs in training with others.
HELDOUT_COMBOS = frozenset(
    (SHAPES[s], COLOUR_NAMES[(2 * s + k) % len(COLOUR_NAMES)])
    for s in range(len(SHAPES)) for k in range(2))
TRAIN_COMBOS = frozenset(
    (s, c) for s in SHAPES for c in COLOURS) - HELDOUT_COMBOS
SPLITS = {'train': TRAIN_COMBOS, 'heldout': HELDOUT_COMBOS,
          'all': TRAIN_COMBOS | HELDOUT_COMBOS}
_SPLIT_IDS = {'train': 0, 'heldout': 1, 'zeroshot': 2, 'digit': 3, 'digit_task': 4,
              'concepts': 5, 'all': 6}
# 'short': 1-3 objects, varied short captions; 'long': 2-4 objects, every attribute named.
CAPTION_STYLES = ('short', 'long')
NUMBER_WORDS = {1: 'one', 2: 'two', 3: 'three', 4: 'four'}


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  shape: str
  colour: str
  size: str
  position: str


@dataclasses.dataclass
class ZeroShotTask:
  """Images with integer labels into `classnames`; prompts are `templates` filled in."""
  classnames: list
  templates: list
  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int64 [N]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def zipf_weights(combos, exponent: float) -> np.ndarray:
  """Probabilities of sorted(combos): rank(shape) ** -exponent * rank(colour) ** -exponent,
  ranks from 1 in `SHAPES` and `COLOURS` order."""
  colours = list(COLOURS)
  weights = np.asarray([((SHAPES.index(s) + 1) * (colours.index(c) + 1)) ** -float(exponent)
                        for s, c in sorted(combos)])
  return weights / weights.sum()


@functools.lru_cache(maxsize=None)
def _sorted(combos: frozenset) -> list:
  return sorted(combos)


def sample_scene(rng: np.random.Generator, combos, num_objects=None, weights=None) -> list:
  """1-3 objects at distinct positions, each (shape, colour) drawn from `combos`
  (uniformly, or with `weights` over sorted(combos))."""
  combos = _sorted(frozenset(combos))
  if num_objects is None:
    num_objects = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
  positions = rng.permutation(len(POSITIONS))[:num_objects]
  objects = []
  for p in positions:
    pick = rng.integers(len(combos)) if weights is None else rng.choice(len(combos), p=weights)
    shape, colour = combos[pick]
    size = SIZES[rng.integers(len(SIZES))] if num_objects == 1 else 'small'
    objects.append(ShapeObject(shape, colour, size, POSITIONS[p]))
  return objects


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask of `shape` with radius `r` given pixel offsets from its centre."""
  ax, ay = np.abs(dx), np.abs(dy)
  if shape == 'circle':
    return dx * dx + dy * dy <= r * r
  if shape == 'square':
    return np.maximum(ax, ay) <= 0.8 * r
  if shape == 'diamond':
    return ax + ay <= 1.05 * r
  if shape == 'triangle':  # apex up, base at 0.75 r below the centre
    return (dy <= 0.75 * r) & (ax <= (dy + r) * 0.6)
  if shape == 'cross':
    arm = 0.32 * r
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
  if shape == 'ring':
    d2 = dx * dx + dy * dy
    return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
  raise ValueError(f'Unknown shape {shape!r}; known: {SHAPES}')


def _background(s: int, rng: np.random.Generator) -> np.ndarray:
  base = rng.integers(15, 60)
  noise = rng.integers(-6, 7, size=(s, s, 1))
  return np.minimum(np.maximum(base + noise, 0), 255).astype(np.int16).repeat(3, axis=-1)


def draw_scene(objects, image_size: int, rng: np.random.Generator, with_labels: bool = False):
  """uint8 [S, S, 3]: a dark, slightly noisy background with the objects painted in order;
  with_labels: also int32 [S, S], the index of the object each pixel shows (-1: background)."""
  s = image_size
  image = _background(s, rng)
  labels = np.full((s, s), -1, np.int32)
  grid = np.arange(s, dtype=np.float32) + 0.5
  for k, obj in enumerate(objects):
    fx, fy = _CENTRES[obj.position]
    jitter = rng.uniform(-0.04, 0.04, size=2) * s
    cx, cy = fx * s + jitter[0], fy * s + jitter[1]
    r = _RADII[obj.size] * s * rng.uniform(0.9, 1.1)
    mask = shape_mask(obj.shape, grid[None, :] - cx, grid[:, None] - cy, r)
    colour = np.asarray(COLOURS[obj.colour], np.int16) + rng.integers(-12, 13, size=3)
    image[mask] = colour
    labels[mask] = k
  image = np.minimum(np.maximum(image, 0), 255).astype(np.uint8)
  return (image, labels) if with_labels else image


def _object_phrase(obj: ShapeObject, rng, with_size: bool, with_position: bool) -> str:
  # Half the phrases leave the colour out: otherwise colour alone tells captions apart
  # within a batch and the towers never need to see shapes.
  with_colour = rng.random() < 0.5
  words = ['a'] + ([obj.size] if with_size else []) + ([obj.colour] if with_colour else []) + [obj.shape]
  phrase = ' '.join(words)
  if with_position:
    options = _POSITION_PHRASES[obj.position]
    phrase += ' ' + options[rng.integers(len(options))]
  return phrase


def caption_scene(objects, rng: np.random.Generator) -> str:
  """A varied-wording caption that names every object's shape and, mostly, its colour."""
  if len(objects) == 1:
    obj = objects[0]
    style = rng.integers(8)
    if style == 0:  # Colour-only and shape-only captions teach the zero-shot prompts.
      return f'a {obj.colour} {("object", "shape", "thing")[rng.integers(3)]}'
    if style == 1:
      return f'a {obj.shape}'
    phrase = _object_phrase(obj, rng, rng.random() < 0.6, rng.random() < 0.6)
    prefix = ('', '', 'an image showing ', 'a picture of ', 'there is ',
              'a photo of ')[rng.integers(6)]
    return prefix + phrase
  phrases = [_object_phrase(o, rng, False, rng.random() < 0.5) for o in objects]
  listed = ', '.join(phrases[:-1]) + ' and ' + phrases[-1]
  style = rng.integers(3)
  if style == 0:
    return f'{NUMBER_WORDS[len(objects)]} objects: {listed}'
  if style == 1:
    return f'an image showing {listed}'
  return listed


_LONG_OPENINGS = (
    'A detailed picture of {n} objects drawn on a dark, slightly noisy background.',
    'This synthetic image shows {n} objects on a dark and grainy background.',
    'The picture has a dark, noisy background with {n} flat coloured objects on it.',
)


def caption_scene_long(objects, rng: np.random.Generator) -> str:
  """A long caption naming every object's colour, shape and position, in scene order,
  after a generic opening sentence (long-caption retrieval: with four objects it runs
  past a 32-token text tower)."""
  sentences = [_LONG_OPENINGS[rng.integers(len(_LONG_OPENINGS))].format(
      n=NUMBER_WORDS[len(objects)])]
  for obj in objects:
    where = _POSITION_PHRASES[obj.position][rng.integers(3)]
    if rng.random() < 0.5:
      sentences.append(f'{where[0].upper()}{where[1:]} there is a {obj.colour} {obj.shape}.')
    else:
      sentences.append(f'A {obj.colour} {obj.shape} is {where}.')
  return ' '.join(sentences)


def draw_digit(digit: int, colour: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [S, S, 3]: one digit in `colour` ink on the scenes' background."""
  background = _background(image_size, rng).astype(np.float32)
  ink = glyphs.draw_digit(digit, image_size, rng)[..., None]
  colour = np.asarray(COLOURS[colour], np.float32) + rng.integers(-12, 13, size=3)
  return np.clip(np.round(background * (1 - ink) + colour * ink), 0, 255).astype(np.uint8)


def caption_digit(digit: int, colour: str, rng: np.random.Generator) -> str:
  """Names the digit as a numeral (as MNIST-style prompts do), sometimes with its colour.

  Numerals only, so the text tower need not first learn that "seven" is "7"."""
  style = rng.integers(6)
  if style == 0:
    return f'a {colour} {digit}' if rng.random() < 0.5 else f'the {colour} number {digit}'
  return ('the digit {}', 'the number {}', 'a handwritten {}', 'a photo of the number: "{}".',
          'a {}')[style - 1].format(digit)


def sample_digit(rng: np.random.Generator) -> tuple:
  """(digit, ink colour): white half the time, as digit sets store ink as intensity."""
  colour = 'white' if rng.random() < 0.5 else COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
  return int(rng.integers(10)), colour


# Drawn samples a source keeps in memory (per process) when all of its images fit.
CACHE_BYTES = 1 << 29


class ShapesSource:
  """grain RandomAccessDataSource of {'image', 'caption', 'index'} records.

  Drawing costs 0.09 ms a scene and 0.28 ms a digit (numpy), against the quickstart
  step's 0.45 ms a sample on two cores, so a source whose images all fit in `cache_bytes`
  keeps what it has drawn (read only; each process, loader workers included, its own):
  from the second epoch on, records are looked up, not drawn. The records are the same
  either way."""

  def __init__(self, split: str = 'train', num_samples: int = 10_000,
               image_size: int = 32, seed: int = 0, digit_fraction: float = 0.0,
               zipf: float = 0.0, caption_style: str = 'short',
               cache_bytes: int = CACHE_BYTES):
    if caption_style not in CAPTION_STYLES:
      raise ValueError(f'ShapesSource caption_style must be one of {CAPTION_STYLES}, '
                       f'got {caption_style!r}')
    if split not in SPLITS:
      raise ValueError(f'ShapesSource split must be one of {sorted(SPLITS)}, got {split!r}')
    if num_samples <= 0 or image_size < 8:
      raise ValueError(f'ShapesSource needs num_samples > 0 and image_size >= 8, got '
                       f'num_samples={num_samples}, image_size={image_size}')
    if not 0.0 <= digit_fraction <= 1.0:
      raise ValueError(f'ShapesSource digit_fraction must be in [0, 1], got {digit_fraction}')
    if zipf < 0:
      raise ValueError(f'ShapesSource zipf must be >= 0 (0: uniform attributes), got {zipf}')
    self.split, self.num_samples = split, int(num_samples)
    self.digit_fraction = float(digit_fraction)
    self.image_size, self.seed = int(image_size), int(seed)
    self.combos = SPLITS[split]
    self.zipf = float(zipf)
    self.weights = zipf_weights(self.combos, zipf) if zipf else None
    self.caption_style = caption_style
    self._cache = {} if self.num_samples * self.image_size ** 2 * 3 <= cache_bytes else None

  def __getstate__(self) -> dict:  # loader workers start with an empty cache
    return {**self.__dict__, '_cache': None if self._cache is None else {}}

  def __len__(self) -> int:
    return self.num_samples

  def _check(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < self.num_samples:
      raise IndexError(f'ShapesSource index {index} out of range [0, {self.num_samples})')
    return index

  def scene(self, index: int) -> list:
    """The objects sample `index` shows ([] for a drawn digit)."""
    index = self._check(index)
    if self._digit_rng(index) is not None:
      return []
    return self._scene(_rng(self.seed, self.split, index))

  def _scene(self, rng) -> list:
    long = self.caption_style == 'long'
    return sample_scene(rng, self.combos, int(rng.integers(2, 5)) if long else None,
                        weights=self.weights)

  def _digit_rng(self, index: int):
    """The random stream of a digit sample, or None where `index` holds a scene."""
    if self.digit_fraction == 0.0:
      return None
    rng = _rng(self.seed, 'digit', index + _SPLIT_IDS[self.split] * self.num_samples)
    return rng if rng.random() < self.digit_fraction else None

  def _sample(self, index: int) -> tuple:
    """(caption, draw): the caption now, the image only when `draw()` is called, from
    the same random stream (captions for the tokenizer need no images)."""
    rng = self._digit_rng(index)
    if rng is not None:
      digit, colour = sample_digit(rng)
      return (caption_digit(digit, colour, rng),
              lambda: draw_digit(digit, colour, self.image_size, rng))
    rng = _rng(self.seed, self.split, index)
    objects = self._scene(rng)
    caption = (caption_scene_long if self.caption_style == 'long' else caption_scene)(objects, rng)
    return caption, lambda: draw_scene(objects, self.image_size, rng)

  def __getitem__(self, index: int) -> dict:
    index = self._check(index)
    drawn = None if self._cache is None else self._cache.get(index)
    if drawn is None:
      caption, draw = self._sample(index)
      drawn = caption, draw()
      if self._cache is not None:
        drawn[1].flags.writeable = False
        self._cache[index] = drawn
    return {'image': drawn[1], 'caption': drawn[0], 'index': np.int64(index)}

  def segmentation(self, index: int) -> tuple:
    """(image uint8 [S, S, 3], object index per pixel int32 [S, S] (-1: background),
    objects) of scene sample `index`: the image `__getitem__` draws."""
    index = self._check(index)
    if self._digit_rng(index) is not None:
      raise ValueError(f'sample {index} is a drawn digit, not a scene')
    rng = _rng(self.seed, self.split, index)
    objects = self._scene(rng)
    (caption_scene_long if self.caption_style == 'long' else caption_scene)(objects, rng)
    image, labels = draw_scene(objects, self.image_size, rng, with_labels=True)
    return image, labels, objects

  def caption(self, index: int) -> str:
    """Sample `index`'s caption without drawing its image."""
    return self._sample(self._check(index))[0]

  def captions(self, num: int | None = None) -> list:
    """Captions of the first `num` samples without drawing images (tokenizer training)."""
    return [self._sample(index)[0] for index in range(min(num or self.num_samples,
                                                          self.num_samples))]

  def __repr__(self) -> str:
    return (f'ShapesSource(split={self.split!r}, num_samples={self.num_samples}, '
            f'image_size={self.image_size}, seed={self.seed}, '
            f'digit_fraction={self.digit_fraction}, zipf={self.zipf}, '
            f'caption_style={self.caption_style!r})')


SHAPE_TEMPLATES = ['a {}', 'an image showing a {}', 'a picture of a {}', 'there is a {}']
COLOUR_TEMPLATES = ['a {} object', 'a {} shape', 'an image showing a {} thing',
                    'a {} thing']
POSITION_TEMPLATES = ['a shape {}', 'an object {}', 'an image showing a thing {}']


def digit_task(image_size: int = 32, num_samples: int = 500, seed: int = 0) -> ZeroShotTask:
  """'shapes_digits': drawn digits as the training data draws them (`digit_fraction`),
  labelled 0-9; beside scikit-learn's handwritten digits, the same task in another domain."""
  images, labels = [], []
  for index in range(num_samples):
    rng = _rng(seed, 'digit_task', index)
    digit, colour = sample_digit(rng)
    images.append(draw_digit(digit, colour, image_size, rng))
    labels.append(digit)
  return ZeroShotTask([str(d) for d in range(10)], ['a photo of the number: "{}".'],
                      np.stack(images), np.asarray(labels, np.int64))


def single_objects(split: str, combos, image_size: int, num_samples: int, seed: int) -> tuple:
  """(uint8 images [N, S, S, 3], their objects): one object each, (shape, colour) uniform
  over `combos`, sample i a function of (seed, split, i)."""
  images, objects = [], []
  for index in range(num_samples):
    rng = _rng(seed, split, index)
    scene = sample_scene(rng, combos, num_objects=1)
    images.append(draw_scene(scene, image_size, rng))
    objects.append(scene[0])
  return np.stack(images), objects


def zeroshot_tasks(image_size: int = 32, num_samples: int = 500, seed: int = 0) -> dict:
  """Zero-shot classification tasks over single-object held-out-combination images.

  Tasks: 'shapes_heldout_shape' (6 classes), 'shapes_heldout_colour' (8 classes),
  'shapes_heldout_position' (5 classes); chance is 1 / len(classnames).
  """
  images, objects = single_objects('zeroshot', HELDOUT_COMBOS, image_size, num_samples, seed)

  def task(names, attr, templates):
    labels = np.asarray([names.index(getattr(o, attr)) for o in objects], np.int64)
    return ZeroShotTask(list(names), list(templates), images, labels)

  position_names = tuple(_POSITION_PHRASES[p][0] for p in POSITIONS)
  position_task = task(POSITIONS, 'position', POSITION_TEMPLATES)
  position_task.classnames = list(position_names)
  return {
      'shapes_heldout_shape': task(SHAPES, 'shape', SHAPE_TEMPLATES),
      'shapes_heldout_colour': task(COLOUR_NAMES, 'colour', COLOUR_TEMPLATES),
      'shapes_heldout_position': position_task,
  }


CONCEPT_TASKS = ('shapes_all_shape', 'shapes_all_colour', 'shapes_all_combo')


def concept_tasks(image_size: int = 32, num_samples: int = 840, seed: int = 0) -> dict:
  """Zero-shot tasks over single objects drawn uniformly from every (shape, colour) pair,
  held-out ones included: 'shapes_all_shape' (6 classes), 'shapes_all_colour' (all 14
  colours) and 'shapes_all_combo' (84 classes such as 'red circle'), one class per
  concept, as the concept-frequency study pairs them with their counts."""
  combos = sorted(SPLITS['all'])
  images, objects = single_objects('concepts', combos, image_size, num_samples, seed)
  colours = list(COLOURS)

  def labels(values, names):
    return np.asarray([names.index(v) for v in values], np.int64)

  return {
      'shapes_all_shape': ZeroShotTask(list(SHAPES), list(SHAPE_TEMPLATES), images,
                                       labels([o.shape for o in objects], list(SHAPES))),
      'shapes_all_colour': ZeroShotTask(colours, list(COLOUR_TEMPLATES), images,
                                        labels([o.colour for o in objects], colours)),
      'shapes_all_combo': ZeroShotTask(
          [f'{c} {s}' for s, c in combos], list(SHAPE_TEMPLATES), images,
          labels([(o.shape, o.colour) for o in objects], combos)),
  }
