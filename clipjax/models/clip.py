"""Two-tower contrastive model with a learnable temperature and (SigLIP) bias."""
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from clipjax.models.text import TextTransformer
from clipjax.models.vit import VisionTransformer

MAX_LOGIT_SCALE = 100.0


def l2_normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class CLIPModel(nn.Module):
  """`encode_image` / `encode_text` give projected embeddings before L2 normalisation.
  `masks` ({'visual': ..., 'textual': ...}, each as clipjax.models.layers describes)
  scale away what structured pruning would remove."""
  embed_dim: int
  vision: dict
  text: dict
  init_logit_scale: float = 1 / 0.07
  init_logit_bias: Optional[float] = None  # SigLIP: -10
  dtype: Any = jnp.float32

  def setup(self):
    self.visual = VisionTransformer(output_dim=self.embed_dim, dtype=self.dtype, **self.vision)
    self.textual = TextTransformer(output_dim=self.embed_dim, dtype=self.dtype, **self.text)
    self.log_logit_scale = self.param(
        'log_logit_scale', nn.with_logical_partitioning(
            nn.initializers.constant(math.log(self.init_logit_scale)), ()), ())
    if self.init_logit_bias is not None:
      self.logit_bias = self.param('logit_bias', nn.with_logical_partitioning(
          nn.initializers.constant(self.init_logit_bias), ()), ())

  def encode_image(self, images, keep_indices=None, masks=None, token_keep=None):
    return self.visual(images, keep_indices, masks, token_keep)[0]

  def encode_image_pooled(self, images, keep_indices=None, token_keep=None):
    """(projected embedding, the pooled token before the projection)."""
    return self.visual(images, keep_indices, token_keep=token_keep)[:2]

  def encode_text(self, ids, masks=None):
    return self.textual(ids, masks)[0]

  def logit_scale(self):
    """exp of the learned log-scale, clamped at 100 as in CLIP."""
    return jnp.exp(jnp.minimum(self.log_logit_scale, math.log(MAX_LOGIT_SCALE)))

  def __call__(self, images, ids, keep_indices=None, masks=None):
    masks = masks or {}
    out = dict(image_emb=l2_normalize(self.encode_image(images, keep_indices, masks.get('visual'))),
               text_emb=l2_normalize(self.encode_text(ids, masks.get('textual'))),
               logit_scale=self.logit_scale())
    if self.init_logit_bias is not None:
      out['logit_bias'] = self.logit_bias
    return out
