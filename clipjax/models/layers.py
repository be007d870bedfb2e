"""Transformer pieces shared by every tower: pre-norm blocks with logical axis names.

Kernels carry logical names (`embed`, `mlp`, `heads`, `kv`, `vocab`) that config rules map
to mesh axes, so one model definition serves data, FSDP and tensor parallelism.

Blocks may differ in head count and MLP width (`layer_heads`, `layer_mlp`, with a fixed
`head_dim`): structured pruning (TinyCLIP's automatic inheritance) leaves such towers,
and they stay ordinary models that train, checkpoint and export like any other.

Structured masks (`masks=` of `Transformer` and the towers) scale what pruning would
remove, on the real modules: `hidden` [D] the residual width (LayerNorms then normalise
over the kept dims only, as CoFi's), `heads` [L, H] the attention heads' outputs,
`intermediate` [L, I] the MLP neurons. Masks of ones give the unmasked model.

The residual stream is constrained to ('batch', 'length', 'act_embed'): the batch stays
split over `data` x `fsdp` under any parameter sharding (see clipjax.sharding).
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax import sharding
from clipjax.kernels.attention import masked_attention

Dtype = Any


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'gelu': lambda x: nn.gelu(x, approximate=False),
               'gelu_tanh': nn.gelu, 'quick_gelu': quick_gelu}


def logical_param(init: Callable, axes):
  """`init` with logical axis names; empty shapes (fully pruned heads or neurons) get
  zeros, which fan-based initialisers cannot compute."""
  def safe_init(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype) if 0 in tuple(shape) else init(key, shape, dtype)
  return nn.with_logical_partitioning(safe_init, axes)


RESIDUAL = ('batch', 'length', 'act_embed')


def constrain(x, names=RESIDUAL):
  """Logical sharding of an activation (a no-op outside `sharding.with_rules`)."""
  return sharding.constrain(x, names)


class MLP(nn.Module):
  hidden: int
  act: str = 'gelu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """mask: [hidden] multiplies the neurons after the activation."""
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name='fc1',
                 kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'mlp')),
                 bias_init=logical_param(nn.initializers.zeros, ('mlp',)))(x)
    x = ACTIVATIONS[self.act](x)
    if mask is not None:
      x = x * mask
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


def first_query_weights(q, k, mask=None, keep=None, causal=False):
  """Softmax attention weights of the first query (the class token) [B, H, T] in float32,
  under the same masks as the attention itself."""
  logits = jnp.einsum('bhd,bkhd->bhk', q[:, 0], k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  allowed = jnp.ones(logits.shape, bool)
  if mask is not None:
    rows = jnp.broadcast_to(mask, (*logits.shape[:2], mask.shape[-2], logits.shape[-1]))
    allowed = allowed & rows[:, :, 0]
  if keep is not None:
    allowed = allowed & keep[:, None, :]
  if causal:
    allowed = allowed & (jnp.arange(logits.shape[-1]) == 0)
  return jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(jnp.float32).min), axis=-1)


class MultiHeadAttention(nn.Module):
  """`implementation`: 'xla' (reference, any mask) or a `clipjax.kernels.attention` kernel
  ('chunked', 'pallas', 'auto'), which takes a per-key keep mask and causality only.
  `head_dim` defaults to width // heads; zero heads (all pruned) leave only the output bias.

  When the 'intermediates' collection is mutable, the first query's attention weights
  [B, H, T] are sown as `cls_attention` (A-CLIP's relevance score): one row, computed
  beside the kernel, so no implementation materialises the [T, T] map for it.
  With `context` [B, S, C] it is cross-attention: keys and values come from the context
  (a captioner's decoder reading image tokens)."""
  heads: int
  dtype: Dtype = jnp.float32
  implementation: str = 'xla'
  head_dim: Optional[int] = None

  @nn.compact
  def __call__(self, x, mask=None, *, keep=None, causal: bool = False, head_mask=None,
               context=None):
    """mask: broadcasts to [B, H, Tq, Tk]; keep: [B, Tk] bool keys to attend to;
    head_mask: [H] multiplies each head's output before the output projection."""
    width = x.shape[-1]
    head_dim = self.head_dim or width // self.heads
    proj = lambda name: nn.DenseGeneral(
        (self.heads, head_dim), dtype=self.dtype, name=name,
        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('embed', 'heads', 'kv')),
        bias_init=logical_param(nn.initializers.zeros, ('heads', 'kv')))
    if context is not None and causal:
      raise ValueError('MultiHeadAttention: cross-attention (context=) is not causal')
    source = x if context is None else context
    q, k, v = proj('query')(x), proj('key')(source), proj('value')(source)
    if self.heads and self.is_mutable_collection('intermediates'):
      self.sow('intermediates', 'cls_attention', first_query_weights(q, k, mask, keep, causal))
    if self.heads == 0:
      out = q
    elif self.implementation == 'xla' or context is not None:
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
    if head_mask is not None:
      out = out * head_mask[:, None]
    return nn.DenseGeneral(
        width, axis=(-2, -1), dtype=self.dtype, name='out',
        kernel_init=logical_param(nn.initializers.xavier_uniform(), ('heads', 'kv', 'embed')),
        bias_init=logical_param(nn.initializers.zeros, ('embed',)))(out)


class LayerNorm(nn.LayerNorm):
  """LayerNorm whose `keep` [D] (a hidden mask) restricts the statistics to the kept
  dims and zeroes the others (CoFi's masked LayerNorm)."""

  def __call__(self, x, keep=None):
    if keep is None:
      return super().__call__(x)
    kept = (keep != 0).astype(jnp.float32)
    return super().__call__(x, mask=jnp.broadcast_to(kept != 0, x.shape)) * kept


def layer_norm(name, eps=1e-5, dtype=jnp.float32):
  return LayerNorm(epsilon=eps, dtype=dtype, name=name,
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
  head_dim: Optional[int] = None
  mlp_dim: Optional[int] = None  # overrides mlp_ratio

  @nn.compact
  def __call__(self, x, keep=None, masks=None):
    """masks: this block's {'hidden' [D], 'heads' [H], 'intermediate' [I]} or None."""
    width = x.shape[-1]
    mlp_dim = int(width * self.mlp_ratio) if self.mlp_dim is None else self.mlp_dim
    m = masks or {}
    hidden = m.get('hidden')
    scaled = (lambda y: y) if hidden is None else (lambda y: y * hidden)
    x = x + scaled(MultiHeadAttention(self.heads, self.dtype, self.attention_impl,
                                      self.head_dim, name='attn')(
        layer_norm('ln_1', dtype=self.dtype)(x, hidden), keep=keep, causal=self.causal,
        head_mask=m.get('heads')))
    x = x + scaled(MLP(mlp_dim, self.act, self.dtype, name='mlp')(
        layer_norm('ln_2', dtype=self.dtype)(x, hidden), m.get('intermediate')))
    return x


def check_layer_sizes(layers: int, layer_heads, layer_mlp, head_dim) -> None:
  """Per-layer sizes need one entry per layer, and per-layer heads an explicit head_dim."""
  for name, sizes in (('layer_heads', layer_heads), ('layer_mlp', layer_mlp)):
    if sizes is not None and len(sizes) != layers:
      raise ValueError(f'{name} has {len(sizes)} entries for {layers} layers: {list(sizes)}')
  if layer_heads is not None and not head_dim:
    raise ValueError('layer_heads needs head_dim (width // heads is ambiguous once heads vary)')


class Transformer(nn.Module):
  layers: int
  heads: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  remat: bool = False
  dtype: Dtype = jnp.float32
  causal: bool = False
  attention_impl: str = 'xla'
  head_dim: Optional[int] = None
  layer_heads: Optional[Sequence[int]] = None  # per block, overriding `heads`
  layer_mlp: Optional[Sequence[int]] = None    # per block, overriding `mlp_ratio`

  @nn.compact
  def __call__(self, x, keep=None, return_hidden: bool = False, masks=None):
    """masks: {'hidden' [D], 'heads' [L, H], 'intermediate' [L, I]} or None."""
    check_layer_sizes(self.layers, self.layer_heads, self.layer_mlp, self.head_dim)
    block_cls = nn.remat(Block) if self.remat else Block
    hidden = []
    x = constrain(x)
    for i in range(self.layers):
      heads = self.heads if self.layer_heads is None else int(self.layer_heads[i])
      mlp_dim = None if self.layer_mlp is None else int(self.layer_mlp[i])
      block_masks = None if masks is None else {
          'hidden': masks['hidden'], 'heads': masks['heads'][i],
          'intermediate': masks['intermediate'][i]}
      x = block_cls(heads, self.mlp_ratio, self.act, self.dtype, self.causal,
                    self.attention_impl, self.head_dim, mlp_dim, name=f'block_{i}')(
                        x, keep, block_masks)
      x = constrain(x)
      hidden.append(x)
    return (x, hidden) if return_hidden else x
