"""Llama-family decoder (Llama, Mistral, Qwen2) used as a frozen text encoder.

Pre-norm RMSNorm blocks, rotary position embeddings (half-split layout, as Hugging Face),
grouped-query attention and a SwiGLU MLP. It returns every layer's hidden states so FLAME /
LexVLA can read any of them, and accepts a custom attention mask in place of the causal one.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.models.layers import attention, logical_param


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', logical_param(nn.initializers.ones, ('embed',)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x32.astype(self.dtype)


def rope(x, positions, theta: float):
  """Rotates [B, T, H, D] by position: pairs are (i, i + D/2), as in HF's rotate_half."""
  dim = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class LlamaBlock(nn.Module):
  heads: int
  kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  out_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def dense(self, features, axes, name, bias, axis=-1):
    out_rank = len(features) if isinstance(features, tuple) else 1
    return nn.DenseGeneral(
        features, axis=axis, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name, kernel_init=logical_param(nn.initializers.lecun_normal(), axes),
        bias_init=logical_param(nn.initializers.zeros, axes[-out_rank:]))

  @nn.compact
  def __call__(self, x, mask, positions):
    width = x.shape[-1]
    norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)
    h = norm('ln_attn')(x)
    q = self.dense((self.heads, self.head_dim), ('embed', 'heads', 'kv'), 'query', self.qkv_bias)(h)
    kv = lambda name: self.dense((self.kv_heads, self.head_dim), ('embed', 'kv_heads', 'kv'), name,
                                 self.qkv_bias)(h)
    k, v = kv('key'), kv('value')
    q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    group = self.heads // self.kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # Head h reads kv h // group.
    y = attention(q, k, v, mask)
    x = x + self.dense(width, ('heads', 'kv', 'embed'), 'out', self.out_bias, axis=(-2, -1))(y)
    h = norm('ln_mlp')(x)
    gate = self.dense(self.mlp_dim, ('embed', 'mlp'), 'gate', False)(h)
    up = self.dense(self.mlp_dim, ('embed', 'mlp'), 'up', False)(h)
    return x + self.dense(width, ('mlp', 'embed'), 'down', False)(nn.silu(gate) * up)


class LlamaEncoder(nn.Module):
  """Decoder-only transformer returning hidden states (no LM head: it is a frozen encoder)."""
  vocab_size: int
  width: int
  layers: int
  heads: int
  kv_heads: int
  mlp_dim: int
  head_dim: Optional[int] = None
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2: biases on q, k, v.
  out_bias: bool = False  # Llama attention_bias=True: biases on q, k, v and out.
  sliding_window: Optional[int] = None  # Mistral: longer inputs are refused, not windowed.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, mask=None, positions=None):
    """ids: [B, T] int32.

    mask: None (causal); [B, T] with 1 for real tokens (causal and padding); or a custom
      boolean [B, 1 or heads, T, T] mask (True = may attend) used as given, e.g. FLAME's
      facet-decoupled attention.
    positions: [B, T] rotary positions (default 0..T-1).
    Returns (final-normed last hidden state [B, T, W], hidden states: the embeddings, then
    each layer's output before the final norm).
    """
    b, t = ids.shape
    if self.sliding_window is not None and t > self.sliding_window:
      raise ValueError(f'length {t} exceeds sliding_window {self.sliding_window}')
    if mask is None or mask.ndim == 2:
      causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
      mask = causal if mask is None else causal & mask.astype(bool)[:, None, None, :]
    elif mask.ndim != 4:
      raise ValueError(f'mask must be [B, T] or [B, H, T, T], got shape {mask.shape}')
    positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
    embed = self.param('token_embed', logical_param(nn.initializers.normal(0.02), ('vocab', 'embed')),
                       (self.vocab_size, self.width), self.param_dtype)
    x = jnp.take(embed, ids, axis=0).astype(self.dtype)
    hidden = [x]
    for i in range(self.layers):
      x = LlamaBlock(self.heads, self.kv_heads, self.head_dim or self.width // self.heads,
                     self.mlp_dim, self.rope_theta, self.norm_eps, self.qkv_bias or self.out_bias,
                     self.out_bias, self.dtype, self.param_dtype, name=f'layer_{i}')(
                         x, mask, positions)
      hidden.append(x)
    return RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name='ln_final')(x), hidden
