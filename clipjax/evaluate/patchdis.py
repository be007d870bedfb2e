"""PatchDis (LexVLA, Li et al. 2024): patch-level interpretability as segmentation.

Every patch is classified by the class-name text embedding nearest to its own embedding
(`EvalView.encode_patches`); the patch grid is upsampled (nearest) to the pixels and
scored against the true segmentation by mean IoU over the classes present. On the
synthetic shapes the generator knows which object each pixel shows, so a pixel's class
is that object's colour (or shape); background pixels are left out of the score (the
paper's class prompts and background handling are not published). `patchdis_random_miou`
scores a uniformly random class per patch on the same pixels: the baseline to beat.

  evals.patchdis = dict(type='patchdis', attribute='colour', num_samples=200)
"""
import numpy as np

from clipjax.data import shapes
from clipjax.evaluate.zeroshot import zeroshot_classifier

TEMPLATES = {'colour': shapes.COLOUR_TEMPLATES, 'shape': shapes.SHAPE_TEMPLATES}


def mean_iou(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple:
  """(mIoU over the classes in `truth`, IoU per class; NaN where absent) of integer maps;
  pixels where truth < 0 are ignored."""
  valid = truth >= 0
  p, t = pred[valid], truth[valid]
  inter = np.bincount(t[p == t], minlength=num_classes).astype(np.float64)
  union = (np.bincount(p, minlength=num_classes) + np.bincount(t, minlength=num_classes)
           - inter).astype(np.float64)
  present = np.bincount(t, minlength=num_classes) > 0
  iou = np.where(present, inter / np.maximum(union, 1), np.nan)
  return float(np.nanmean(iou)), iou


def upsample(patch_classes: np.ndarray, image_size: int) -> np.ndarray:
  """[N, P] classes of a square patch grid -> [N, S, S] per pixel (nearest)."""
  n, p = patch_classes.shape
  grid = int(round(p ** 0.5))
  if grid * grid != p or image_size % grid:
    raise ValueError(f'{p} patches do not tile a {image_size}px image as a square grid')
  cell = image_size // grid
  return patch_classes.reshape(n, grid, grid).repeat(cell, axis=1).repeat(cell, axis=2)


class PatchDisEvaluator:
  """Config: attribute ('colour' or 'shape'), num_samples, seed, split (shapes combos),
  templates (default: the shapes zero-shot ones)."""

  def __init__(self, attribute: str = 'colour', num_samples: int = 200, seed: int = 3,
               split: str = 'train', templates=None):
    if attribute not in TEMPLATES:
      raise ValueError(f'patchdis attribute {attribute!r}: want one of {sorted(TEMPLATES)}')
    self.attribute, self.num_samples, self.seed, self.split = attribute, num_samples, seed, split
    self.templates = list(templates or TEMPLATES[attribute])
    combos = shapes.SPLITS[split]
    index = 1 if attribute == 'colour' else 0
    self.classes = sorted({combo[index] for combo in combos})

  def data(self, image_size: int) -> tuple:
    source = shapes.ShapesSource(self.split, self.num_samples, image_size, seed=self.seed)
    images, truth = [], []
    lookup = {c: i for i, c in enumerate(self.classes)}
    for i in range(self.num_samples):
      image, labels, objects = source.segmentation(i)
      classes = np.asarray([lookup[getattr(o, self.attribute)] for o in objects] + [-1])
      images.append(image)
      truth.append(classes[labels])  # labels -1 reads the appended -1
    return np.stack(images), np.stack(truth)

  def __call__(self, encoder) -> tuple:
    images, truth = self.data(encoder.image_size)
    classifier = zeroshot_classifier(encoder, self.classes, self.templates)
    patches = encoder.encode_patches(images)  # [N, P, D]
    pred = upsample(np.argmax(patches @ classifier.T, axis=-1), encoder.image_size)
    miou, iou = mean_iou(pred, truth, len(self.classes))
    rng = np.random.default_rng(self.seed)
    guess = upsample(rng.integers(len(self.classes), size=patches.shape[:2]), encoder.image_size)
    random_miou, _ = mean_iou(guess, truth, len(self.classes))
    fg = truth >= 0
    return ({'patchdis_miou': miou, 'patchdis_random_miou': random_miou,
             'patchdis_pixel_accuracy': float(np.mean(pred[fg] == truth[fg]))},
            {'iou': iou, 'classes': np.asarray(self.classes)})
