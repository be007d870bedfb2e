"""CLIP causal text transformer, pooled at the end-of-text token."""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from clipjax.models.layers import Transformer, constrain, layer_norm, logical_param


def eot_positions(ids, eot_token_id: Optional[int]):
  """Index of the first end-of-text token; OpenAI's argmax(ids) when no id is given."""
  if eot_token_id is None:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == eot_token_id, axis=-1)


class TextTransformer(nn.Module):
  width: int
  layers: int
  heads: int
  vocab_size: int
  context_length: int
  output_dim: int
  eot_token_id: Optional[int] = None
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  remat: bool = False
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32
  head_dim: Optional[int] = None  # per-layer sizes: see clipjax.models.layers
  layer_heads: Optional[tuple] = None
  layer_mlp: Optional[tuple] = None

  @nn.compact
  def __call__(self, ids, masks=None):
    """ids: [B, L] int32; masks: structured masks (clipjax.models.layers).
    Returns (pooled projected embedding [B, output_dim], tokens). Keys past the
    end-of-text token (padding) are masked out of attention."""
    if ids.shape[-1] > self.context_length:
      raise ValueError(f'text length {ids.shape[-1]} exceeds context_length {self.context_length}')
    embed = self.param('token_embed', logical_param(nn.initializers.normal(0.02), ('vocab', 'embed')),
                       (self.vocab_size, self.width))
    pos = self.param('pos_embed', logical_param(nn.initializers.normal(0.01), (None, 'embed')),
                     (self.context_length, self.width))
    length = ids.shape[-1]
    # The lookup reads whole rows: gather the table (as FSDP gathers every weight) so the
    # rows land batch-sharded, not split the way the table is.
    x = (jnp.take(constrain(embed, (None, None)), ids, axis=0) + pos[:length]).astype(self.dtype)
    hidden = None if masks is None else masks['hidden']
    if hidden is not None:
      x = x * hidden
    eot = eot_positions(ids, self.eot_token_id)
    keep = jnp.arange(length)[None, :] <= eot[:, None]
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.act, self.remat, self.dtype,
                    causal=True, attention_impl=self.attention_impl, head_dim=self.head_dim,
                    layer_heads=self.layer_heads, layer_mlp=self.layer_mlp, name='transformer')(
                        x, keep, masks=masks)
    x = layer_norm('ln_final', dtype=self.dtype)(x, hidden)
    pooled = x[jnp.arange(x.shape[0]), eot]
    proj = self.param('proj', logical_param(nn.initializers.normal(self.width ** -0.5), ('embed', None)),
                      (self.width, self.output_dim))
    return constrain(pooled @ proj.astype(self.dtype), ('batch', 'act_embed')), x
