"""Flax towers and the two-tower CLIP model."""
import jax.numpy as jnp

from clipjax.models.clip import CLIPModel, l2_normalize
from clipjax.models.registry import MODELS, model_spec


def build_clip(name: str, dtype=None, **overrides) -> CLIPModel:
  """A `CLIPModel` from a registered size name (see `registry.MODELS`)."""
  return CLIPModel(dtype=dtype or jnp.float32, **model_spec(name, **overrides))
