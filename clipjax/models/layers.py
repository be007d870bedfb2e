"""Transformer pieces shared by every tower: pre-norm blocks with logical axis names.

Kernels carry logical names (`embed`, `mlp`, `heads`, `kv`, `vocab`) that config rules map
to mesh axes, so one model definition serves data, FSDP and tensor parallelism.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.kernels.attention import masked_attention

Dtype = Any


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'gelu': lambda x: nn.gelu(x, approximate=False),
               'gelu_tanh': nn.gelu, 'quick_gelu': quick_gelu}


def logical_param(init: Callable, axes):
  return nn.with_logical_partitioning(init, axes)


class MLP(nn.Module):
  hidden: int
  act: str = 'gelu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name='fc1',
                 kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'mlp')),
                 bias_init=logical_param(nn.initializers.zeros, ('mlp',)))(x)
    x = ACTIVATIONS[self.act](x)
    return nn.Dense(width, dtype=self.dtype, name='fc2',
                    kernel_init=logical_param(nn.initializers.xavier_uniform(), ('mlp', 'embed')),
                    bias_init=logical_param(nn.initializers.zeros, ('embed',)))(x)


def attention(q, k, v, mask=None):
  """Reference attention; q,k,v are [B, T, H, D], mask broadcasts to [B, H, Tq, Tk]."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class MultiHeadAttention(nn.Module):
  """`implementation`: 'xla' (reference, any mask) or a `clipjax.kernels.attention` kernel
  ('chunked', 'pallas', 'auto'), which takes a per-key keep mask and causality only."""
  heads: int
  dtype: Dtype = jnp.float32
  implementation: str = 'xla'

  @nn.compact
  def __call__(self, x, mask=None, *, keep=None, causal: bool = False):
    """mask: broadcasts to [B, H, Tq, Tk]; keep: [B, T] bool keys to attend to."""
    width = x.shape[-1]
    head_dim = width // self.heads
    proj = lambda name: nn.DenseGeneral(
        (self.heads, head_dim), dtype=self.dtype, name=name,
        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'heads', 'kv')),
        bias_init=logical_param(nn.initializers.zeros, ('heads', 'kv')))
    q, k, v = proj('query')(x), proj('key')(x), proj('value')(x)
    if self.implementation == 'xla':
      length = x.shape[1]
      for extra in (keep[:, None, None, :] if keep is not None else None,
                    jnp.tril(jnp.ones((length, length), bool))[None, None] if causal else None):
        if extra is not None:
          mask = extra if mask is None else mask & extra
      out = attention(q, k, v, mask)
    elif mask is not None:
      raise ValueError(f'An arbitrary attention mask needs implementation="xla", '
                       f'got {self.implementation!r}; kernels take keep= and causal=')
    else:
      out = masked_attention(q, k, v, keep, causal=causal, implementation=self.implementation)
    return nn.DenseGeneral(
        width, axis=(-2, -1), dtype=self.dtype, name='out',
        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('heads', 'kv', 'embed')),
        bias_init=logical_param(nn.initializers.zeros, ('embed',)))(out)


def layer_norm(name, eps=1e-5, dtype=jnp.float32):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=logical_param(nn.initializers.ones, ('embed',)),
                      bias_init=logical_param(nn.initializers.zeros, ('embed',)))


class Block(nn.Module):
  """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""
  heads: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  dtype: Dtype = jnp.float32
  causal: bool = False
  attention_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, keep=None):
    width = x.shape[-1]
    x = x + MultiHeadAttention(self.heads, self.dtype, self.attention_impl, name='attn')(
        layer_norm('ln_1', dtype=self.dtype)(x), keep=keep, causal=self.causal)
    x = x + MLP(int(width * self.mlp_ratio), self.act, self.dtype, name='mlp')(
        layer_norm('ln_2', dtype=self.dtype)(x))
    return x


class Transformer(nn.Module):
  layers: int
  heads: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  remat: bool = False
  dtype: Dtype = jnp.float32
  causal: bool = False
  attention_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, keep=None, return_hidden: bool = False):
    block_cls = nn.remat(Block) if self.remat else Block
    hidden = []
    for i in range(self.layers):
      x = block_cls(self.heads, self.mlp_ratio, self.act, self.dtype, self.causal,
                    self.attention_impl, name=f'block_{i}')(x, keep)
      hidden.append(x)
    return (x, hidden) if return_hidden else x
