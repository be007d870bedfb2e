"""Batched, jit-compiled image and text embedding for every evaluator.

Evaluators only see this object (or anything with the same two methods), so they run
the same on a fresh model, a restored checkpoint, or a fake encoder in tests. What it
embeds with is an `EvalView`: a training method's view of its state (EMA weights, a
masked student, a frozen-LLM text path), or any CLIP-style model (`EvalView.of`).
"""
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.data.transforms import CLIP_MEAN, CLIP_STD


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Row-wise L2 normalisation in float32 (host side)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads the leading axis to `size` so every call has the same shape (one compile)."""
  if len(x) == size:
    return x
  pad = np.zeros((size - len(x),) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


@dataclasses.dataclass(frozen=True)
class EvalView:
  """What evaluators embed with: two pure functions of (variables, inputs) and the
  variables. Arrays that change during training (weights, masks) belong in `variables`,
  never in the functions' closures, which are compiled once."""
  encode_image: Callable  # (variables, float32 normalised images [B, S, S, 3]) -> [B, D]
  encode_text: Callable   # (variables, int32 ids [B, L]) -> [B, D]
  variables: Any
  # A text side the view runs itself, host side: (variables, strings, purpose) -> float32
  # [N, D], purpose 'captions' (retrieval) or 'classes' (zero-shot prompts). An LLM text
  # path (FLAME, LexVLA) prompts each purpose its own way and needs no tokenizer of the run.
  embed_texts: Optional[Callable] = None
  # Per-patch embeddings in the text space, (variables, images) -> [B, P, D], for dense
  # evaluators (PatchDis); None where a method has none.
  encode_patches: Optional[Callable] = None

  @classmethod
  def of(cls, model, params, **collections):
    """A CLIP-style model's own `encode_image` / `encode_text` on `params` (plus any
    non-parameter collections, e.g. batch_stats)."""
    return cls(lambda v, x: model.apply(v, x, method='encode_image'),
               lambda v, ids: model.apply(v, ids, method='encode_text'),
               {'params': params, **collections})


class Encoder:
  """Embeds uint8 images and strings through an `EvalView`; outputs are L2-normalised
  float32.

  Images are normalised on device (uint8 travels to the accelerator, 4x less transfer).
  Both towers are jitted once; the last batch is padded to `batch_size` so a dataset of
  any length compiles exactly one program per tower. Variables may be sharded jax
  Arrays; `batch_sharding` (optional) places each input batch, e.g. over the mesh's data
  axes, and must divide `batch_size`. Assigning `encoder.variables` (same tree and
  shardings, e.g. a later training state's view) reuses the compiled programs.
  """

  def __init__(self, view: EvalView, tokenizer: Callable, *, context_length: int,
               image_size: int, mean=CLIP_MEAN, std=CLIP_STD, batch_size: int = 256,
               batch_sharding: Optional[Any] = None):
    if batch_size <= 0:
      raise ValueError(f'Encoder batch_size must be positive, got {batch_size}')
    self.variables = view.variables
    self.embed_texts = view.embed_texts
    self.has_patches = view.encode_patches is not None
    self.tokenizer = tokenizer
    self.context_length = int(context_length)
    self.image_size = int(image_size)
    self.batch_size = int(batch_size)
    self.batch_sharding = batch_sharding
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    std = jnp.asarray(std, jnp.float32) * 255.0

    unit = lambda emb: emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)

    def encode_image(variables, images_uint8):
      x = (images_uint8.astype(jnp.float32) - mean) / std
      return unit(view.encode_image(variables, x).astype(jnp.float32))

    def encode_features(variables, features):
      return unit(view.encode_image(variables, features).astype(jnp.float32))

    def encode_text(variables, ids):
      return unit(view.encode_text(variables, ids).astype(jnp.float32))

    # With a mesh, gather outputs to every device: multi-host runs can then read them.
    mesh = getattr(batch_sharding, 'mesh', None)
    out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._encode_image = jax.jit(encode_image, out_shardings=out)
    self._encode_features = jax.jit(encode_features, out_shardings=out)
    self._encode_text = jax.jit(encode_text, out_shardings=out)
    if self.has_patches:
      self._encode_patches = jax.jit(lambda variables, images_uint8: unit(view.encode_patches(
          variables, (images_uint8.astype(jnp.float32) - mean) / std).astype(jnp.float32)),
                                     out_shardings=out)

  def _run(self, fn, inputs: np.ndarray) -> np.ndarray:
    outputs = []
    for start in range(0, len(inputs), self.batch_size):
      chunk = inputs[start:start + self.batch_size]
      batch = _pad_rows(chunk, self.batch_size)
      if self.batch_sharding is not None:
        batch = jax.device_put(batch, self.batch_sharding)
      outputs.append(np.asarray(jax.device_get(fn(self.variables, batch)))[:len(chunk)])
    return np.concatenate(outputs).astype(np.float32)

  def encode_images(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, image_size, image_size, 3] -> float32 [N, D], unit rows."""
    images = np.asarray(images)
    self._check_images(images)
    return self._run(self._encode_image, images)

  def _check_images(self, images: np.ndarray) -> None:
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f'encode_images wants uint8 [N, {self.image_size}, {self.image_size}, 3], '
                       f'got {images.dtype} {images.shape}')
    if not len(images):
      raise ValueError('encode_images got no images')

  def encode_patches(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> float32 [N, P, D], unit rows: each patch's embedding."""
    if not self.has_patches:
      raise ValueError('this model has no per-patch embeddings (EvalView.encode_patches)')
    self._check_images(images)
    return self._run(self._encode_patches, np.asarray(images))

  def encode_features(self, features: np.ndarray) -> np.ndarray:
    """float32 [N, F] precomputed image features -> [N, D], unit rows: for views whose
    image input is features, not pixels (NMTune on a black-box encoder's outputs)."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or not len(features):
      raise ValueError(f'encode_features wants float32 [N, F] with N > 0, got {features.shape}')
    return self._run(self._encode_features, features)

  def encode_texts(self, texts, purpose: str = 'captions') -> np.ndarray:
    """list of N strings -> float32 [N, D], unit rows. `purpose` ('captions' or
    'classes') matters only to views with their own text side (`EvalView.embed_texts`)."""
    texts = list(texts)
    if not texts:
      raise ValueError('encode_texts got no texts')
    if self.embed_texts is not None:
      return l2_normalize(self.embed_texts(self.variables, texts, purpose))
    ids = np.asarray(self.tokenizer(texts, self.context_length), np.int32)
    if ids.shape != (len(texts), self.context_length):
      raise ValueError(f'tokenizer returned shape {ids.shape}, expected '
                       f'({len(texts)}, {self.context_length})')
    return self._run(self._encode_text, ids)
