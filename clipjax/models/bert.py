"""BERT-family encoder (post-norm) with sentence-transformers pooling, for embedding teachers."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clipjax.models.layers import MLP, MultiHeadAttention, layer_norm, logical_param


class BertLayer(nn.Module):
  """Post-norm block: x = ln(x + attn(x)); x = ln(x + mlp(x))."""
  heads: int
  mlp_dim: int
  act: str = 'gelu'
  ln_eps: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    x = layer_norm('ln_attn', self.ln_eps, self.dtype)(
        x + MultiHeadAttention(self.heads, self.dtype, name='attn')(x, mask))
    return layer_norm('ln_mlp', self.ln_eps, self.dtype)(
        x + MLP(self.mlp_dim, self.act, self.dtype, name='mlp')(x))


def mean_pool(tokens, mask):
  mask = mask[..., None].astype(jnp.float32)
  return jnp.sum(tokens * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


class BertEncoder(nn.Module):
  """`__call__` gives token states; `encode` the pooled sentence embedding.

  pooling: 'mean' (masked mean), 'cls', 'max' or 'mean_sqrt_len' as in sentence-transformers;
  normalize: L2-normalise the sentence embedding (sentence-transformers' Normalize module).
  """
  vocab_size: int
  width: int
  layers: int
  heads: int
  mlp_dim: int
  max_len: int = 512
  type_vocab_size: int = 2
  act: str = 'gelu'
  ln_eps: float = 1e-12
  pooling: str = 'mean'
  normalize: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, mask=None, token_type_ids=None):
    """ids, mask (1 = real token), token_type_ids: [B, T].

    Returns (last hidden states [B, T, W], all hidden states: embeddings then each layer).
    """
    if ids.shape[-1] > self.max_len:
      raise ValueError(f'text length {ids.shape[-1]} exceeds max_len {self.max_len}')
    mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    token_type_ids = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
    embed = lambda name, n, axes: self.param(
        name, logical_param(nn.initializers.normal(0.02), axes), (n, self.width))
    x = (jnp.take(embed('token_embed', self.vocab_size, ('vocab', 'embed')), ids, axis=0)
         + embed('pos_embed', self.max_len, (None, 'embed'))[:ids.shape[-1]]
         + jnp.take(embed('type_embed', self.type_vocab_size, (None, 'embed')), token_type_ids,
                    axis=0))
    x = layer_norm('ln_embed', self.ln_eps, self.dtype)(x.astype(self.dtype))
    hidden = [x]
    for i in range(self.layers):
      x = BertLayer(self.heads, self.mlp_dim, self.act, self.ln_eps, self.dtype,
                    name=f'layer_{i}')(x, mask[:, None, None, :])
      hidden.append(x)
    return x, hidden

  def encode(self, ids, mask=None, token_type_ids=None):
    """Sentence embedding [B, W] pooled over the real tokens."""
    mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    x, _ = self(ids, mask, token_type_ids)
    x = x.astype(jnp.float32)
    if self.pooling == 'mean':
      out = mean_pool(x, mask)
    elif self.pooling == 'mean_sqrt_len':
      out = mean_pool(x, mask) * jnp.sqrt(jnp.sum(mask, axis=1, keepdims=True))
    elif self.pooling == 'cls':
      out = x[:, 0]
    elif self.pooling == 'max':
      out = jnp.max(jnp.where(mask[..., None], x, -1e9), axis=1)
    else:
      raise ValueError(f'Unknown pooling {self.pooling!r}; use mean, mean_sqrt_len, cls or max.')
    if self.normalize:
      out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
