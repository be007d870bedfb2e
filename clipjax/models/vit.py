"""ViT image tower (CLIP layout: ln_pre, class token, ln_post, projection)."""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from clipjax.models.layers import (MLP, Transformer, attention, constrain, layer_norm,
                                   logical_param)


class MAPHead(nn.Module):
  """Multi-head attention pooling with a learned probe (SigLIP / big_vision 'map')."""
  heads: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    probe = self.param('probe', logical_param(nn.initializers.xavier_uniform(), (None, None, 'embed')),
                       (1, 1, width))
    probe = jnp.broadcast_to(probe, (x.shape[0], 1, width)).astype(x.dtype)
    q = nn.DenseGeneral((self.heads, width // self.heads), dtype=self.dtype, name='query',
                        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'heads', 'kv')),
                        bias_init=logical_param(nn.initializers.zeros, ('heads', 'kv')))(probe)
    kv = lambda n: nn.DenseGeneral((self.heads, width // self.heads), dtype=self.dtype, name=n,
                                   kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'heads', 'kv')),
                                   bias_init=logical_param(nn.initializers.zeros, ('heads', 'kv')))(x)
    y = attention(q, kv('key'), kv('value'))
    y = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name='out',
                        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('heads', 'kv', 'embed')),
                        bias_init=logical_param(nn.initializers.zeros, ('embed',)))(y)
    y = y + MLP(int(width * self.mlp_ratio), self.act, self.dtype, name='mlp')(
        layer_norm('ln', dtype=self.dtype)(y))
    return y[:, 0]


class VisionTransformer(nn.Module):
  width: int
  layers: int
  heads: int
  patch_size: int
  image_size: int
  output_dim: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  pool: str = 'cls'  # 'cls' (CLIP), 'map' (attention pool), 'gap' (mean of tokens)
  remat: bool = False
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32
  head_dim: Optional[int] = None  # per-layer sizes: see clipjax.models.layers
  layer_heads: Optional[tuple] = None
  layer_mlp: Optional[tuple] = None
  head: bool = True  # False: no ln_post, pooling or projection (heads of a method's own)

  @nn.compact
  def __call__(self, images, keep_indices: Optional[jnp.ndarray] = None, masks=None,
               token_keep: Optional[jnp.ndarray] = None):
    """images: [B, H, W, 3] normalised; masks: structured masks (clipjax.models.layers),
    'cls' or 'gap' pooling. Patch tokens are dropped one of two ways (A-CLIP, FLIP):
    keep_indices [B, K] gathers the kept patches (the sequence shrinks, and the cost with
    it); token_keep bool [B, N] keeps every patch but masks the dropped ones out of every
    attention's keys (and of 'gap' pooling): fixed shapes, the same outputs, full cost.

    Returns (projected embedding [B, output_dim], pooled [B, width] before the projection,
    tokens [B, T, width] before ln_post); without `head`, (None, None, tokens).
    """
    if keep_indices is not None and token_keep is not None:
      raise ValueError('VisionTransformer: give keep_indices or token_keep, not both')
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding='VALID', use_bias=False, dtype=self.dtype, name='patch_embed',
                kernel_init=logical_param(nn.initializers.lecun_normal(), (None, None, None, 'embed')))(
                    images.astype(self.dtype))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    num_pos = h * w + (self.pool == 'cls')
    pos = self.param('pos_embed', logical_param(nn.initializers.normal(self.width ** -0.5), (None, 'embed')),
                     (num_pos, self.width)).astype(self.dtype)
    if self.pool == 'cls':
      x = x + pos[1:]
    else:
      x = x + pos
    if keep_indices is not None:
      x = jnp.take_along_axis(x, keep_indices[..., None], axis=1)
    keep = token_keep
    if self.pool == 'cls':
      cls = self.param('cls_token', logical_param(nn.initializers.normal(self.width ** -0.5), ('embed',)),
                       (self.width,)).astype(self.dtype)
      cls = jnp.broadcast_to(cls + pos[0], (b, 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
      if keep is not None:
        keep = jnp.concatenate([jnp.ones((b, 1), bool), keep.astype(bool)], axis=1)
    hidden = None if masks is None else masks['hidden']
    if hidden is not None:
      x = x * hidden
    x = layer_norm('ln_pre', dtype=self.dtype)(x, hidden)
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.act, self.remat, self.dtype,
                    attention_impl=self.attention_impl, head_dim=self.head_dim,
                    layer_heads=self.layer_heads, layer_mlp=self.layer_mlp, name='transformer')(
                        x, keep, masks=masks)
    if not self.head:
      return None, None, x
    if self.pool == 'cls':
      pooled = layer_norm('ln_post', dtype=self.dtype)(x[:, 0], hidden)
    elif self.pool == 'gap':
      mean = x.mean(axis=1) if keep is None else (
          jnp.sum(x * keep[..., None], axis=1) / jnp.sum(keep, axis=1, keepdims=True).astype(x.dtype))
      pooled = layer_norm('ln_post', dtype=self.dtype)(mean, hidden)
    elif masks is not None or keep is not None:
      raise ValueError(f'Structured masks and token_keep support pool "cls" and "gap", '
                       f'not {self.pool!r}')
    elif self.pool == 'map':
      pooled = MAPHead(self.heads, self.mlp_ratio, self.act, self.dtype, name='map_head')(
          layer_norm('ln_post', dtype=self.dtype)(x))
    else:
      raise ValueError(f'Unknown vision pool {self.pool!r}; use cls, map or gap.')
    proj = self.param('proj', logical_param(nn.initializers.normal(self.width ** -0.5), ('embed', None)),
                      (self.width, self.output_dim))
    return constrain(pooled @ proj.astype(self.dtype), ('batch', 'act_embed')), pooled, x
