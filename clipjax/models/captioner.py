"""Codebook captioner (TL;DR's stage 1): ViT tokens -> vector quantiser -> a causal text
decoder cross-attending to the quantised tokens; and beam search over any decoder.

The quantiser is taming-transformers' `VectorQuantizer2` (the official code's copy):
every token is replaced by its nearest codeword (squared L2), gradients pass straight
through, and the loss is
    legacy=True  (the release): mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)
    legacy=False (the VQ-VAE paper): beta * mean((sg[z_q] - z)^2) + mean((z_q - sg[z])^2)
(in the legacy form beta weights the codebook term, a quirk taming-transformers notes).
With `normalize` (ViT-VQGAN's l2-normalised codes, Yu et al. 2022) tokens and codewords
are compared, and replaced, as unit vectors (the release does not normalise).
The decoder is BERT's LM head in BLIP's layout, pre-norm here: causal self-attention,
cross-attention to the quantised tokens, MLP; its output layer is the token embedding
(tied, as BERT's).
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.models.layers import MLP, MultiHeadAttention, layer_norm, logical_param
from clipjax.models.vit import VisionTransformer


class VectorQuantizer(nn.Module):
  num_codes: int
  code_dim: int
  beta: float = 0.25
  legacy: bool = True
  normalize: bool = False

  @nn.compact
  def __call__(self, z):
    """z [B, T, D] -> (z_q [B, T, D] with straight-through gradients, code ids [B, T]
    int32, per-example loss [B])."""
    bound = 1.0 / self.num_codes
    codebook = self.param('codebook', logical_param(
        lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
        ('vocab', 'embed')), (self.num_codes, self.code_dim))
    z = z.astype(jnp.float32)
    if self.normalize:
      unit = lambda x: x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))
      z, codebook = unit(z), unit(codebook)
    dist = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(codebook * codebook, -1)
            - 2.0 * jnp.einsum('btd,kd->btk', z, codebook, precision=jax.lax.Precision.HIGHEST))
    ids = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    quantised = jnp.take(codebook, ids, axis=0)
    to_code = jnp.mean((jax.lax.stop_gradient(quantised) - z) ** 2, axis=(1, 2))
    to_input = jnp.mean((quantised - jax.lax.stop_gradient(z)) ** 2, axis=(1, 2))
    loss = (to_code + self.beta * to_input) if self.legacy else (self.beta * to_code + to_input)
    return z + jax.lax.stop_gradient(quantised - z), ids, loss


class DecoderBlock(nn.Module):
  heads: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  dtype: Any = jnp.float32
  attention_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, context):
    x = x + MultiHeadAttention(self.heads, self.dtype, self.attention_impl, name='attn')(
        layer_norm('ln_1', dtype=self.dtype)(x), causal=True)
    x = x + MultiHeadAttention(self.heads, self.dtype, name='cross_attn')(
        layer_norm('ln_cross', dtype=self.dtype)(x), context=context)
    return x + MLP(int(x.shape[-1] * self.mlp_ratio), self.act, self.dtype, name='mlp')(
        layer_norm('ln_2', dtype=self.dtype)(x))


class CaptionDecoder(nn.Module):
  width: int
  layers: int
  heads: int
  vocab_size: int
  context_length: int
  mlp_ratio: float = 4.0
  act: str = 'gelu'
  remat: bool = False
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, context):
    """ids [B, L] int32 (sot first), context [B, S, C] -> next-token logits [B, L, V] f32."""
    if ids.shape[-1] > self.context_length:
      raise ValueError(f'caption length {ids.shape[-1]} exceeds context_length '
                       f'{self.context_length}')
    embed = self.param('token_embed', logical_param(nn.initializers.normal(0.02), ('vocab', 'embed')),
                       (self.vocab_size, self.width))
    pos = self.param('pos_embed', logical_param(nn.initializers.normal(0.01), (None, 'embed')),
                     (self.context_length, self.width))
    x = (jnp.take(embed, ids, axis=0) + pos[:ids.shape[-1]]).astype(self.dtype)
    block = nn.remat(DecoderBlock) if self.remat else DecoderBlock
    context = context.astype(self.dtype)
    for i in range(self.layers):
      x = block(self.heads, self.mlp_ratio, self.act, self.dtype, self.attention_impl,
                name=f'block_{i}')(x, context)
    x = layer_norm('ln_final', dtype=self.dtype)(x)
    return jnp.einsum('bld,vd->blv', x, embed.astype(self.dtype),
                      preferred_element_type=jnp.float32)


class CodebookCaptioner(nn.Module):
  """vision: `VisionTransformer` keywords (its head is replaced by a LayerNorm over all
  tokens, class token included, as BLIP's ViT ends); decoder: `CaptionDecoder` keywords.
  A projection maps the ViT width to `code_dim` when they differ."""
  vision: dict
  decoder: dict
  num_codes: int
  code_dim: int
  vq_beta: float = 0.25
  vq_legacy: bool = True
  vq_normalize: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.visual = VisionTransformer(output_dim=0, head=False, dtype=self.dtype, **self.vision)
    self.ln_post = layer_norm('ln_post', dtype=self.dtype)
    self.quant_proj = (nn.Dense(self.code_dim, dtype=self.dtype, name='quant_proj',
                                kernel_init=logical_param(nn.initializers.xavier_uniform(),
                                                          ('embed', None)))
                       if self.code_dim != self.vision['width'] else None)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.vq_beta, self.vq_legacy,
                                     self.vq_normalize)
    self.text_decoder = CaptionDecoder(dtype=self.dtype, **self.decoder)

  def encode(self, images):
    """-> (quantised tokens [B, T, code_dim], code ids [B, T], per-example VQ loss [B])."""
    z = self.ln_post(self.visual(images)[2])
    if self.quant_proj is not None:
      z = self.quant_proj(z)
    return self.quantizer(z)

  def decode(self, ids, quantised):
    return self.text_decoder(ids, quantised)

  def __call__(self, images, ids):
    quantised, codes, vq_loss = self.encode(images)
    return dict(logits=self.decode(ids, quantised), codes=codes, vq_loss=vq_loss)


def beam_search(logits_fn: Callable, batch_size: int, length: int, *, sot: int, eot: int,
                pad: int, num_beams: int = 3, min_length: int = 0,
                length_penalty: float = 1.0, vocab_size: int | None = None):
  """Beam search over a causal decoder -> token ids [batch_size, length] (sot, tokens,
  eot, pad...), the best hypothesis of each example.

  logits_fn(ids [batch_size * num_beams, length]) -> logits [.., length, V], example-major
  (rows b * num_beams + k); position t's logits predict token t + 1. `sot`, `pad` and ids
  >= `vocab_size` (a padded embedding table's spare rows) are never generated; `eot` not
  before `min_length` tokens. As Hugging Face's beam search: each step extends the live
  beams by their 2k best continuations; those ending in `eot` among the first k join the
  finished hypotheses, the best k others live on; hypotheses are ranked by summed
  log-probability / (tokens generated, eot included) ** length_penalty, and the live ones
  compete at the end (cut at `length`). It runs every step (no early stop) and the decoder
  on the whole sequence at each (no key-value cache): cheap for captions of tens of tokens,
  quadratic in their length.
  """
  k, neg = num_beams, jnp.float32(-1e30)
  seqs = jnp.full((batch_size, k, length), pad, jnp.int32).at[:, :, 0].set(sot)
  alive_logp = jnp.tile(jnp.asarray([0.0] + [neg] * (k - 1), jnp.float32), (batch_size, 1))
  finished = seqs
  finished_score = jnp.full((batch_size, k), neg)
  rows = jnp.arange(batch_size)[:, None]

  def step(t, carry):
    seqs, alive_logp, finished, finished_score = carry
    logits = logits_fn(seqs.reshape(batch_size * k, length))
    logp = jax.nn.log_softmax(jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False))
    logp = logp.reshape(batch_size, k, -1)
    logp = logp.at[:, :, eot].set(jnp.where(t + 1 <= min_length, neg, logp[:, :, eot]))
    logp = logp.at[:, :, jnp.asarray([sot, pad])].set(neg)
    if vocab_size is not None and vocab_size < logp.shape[-1]:
      logp = logp.at[:, :, vocab_size:].set(neg)
    vocab = logp.shape[-1]
    total = (alive_logp[:, :, None] + logp).reshape(batch_size, k * vocab)
    top, flat = jax.lax.top_k(total, 2 * k)  # at least k of them do not end
    beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    grown = seqs[rows, beam].at[:, :, t + 1].set(token)
    ends = token == eot
    ranked = jnp.arange(2 * k)[None] < k  # HF: an eot below the k best does not finish
    score = jnp.where(ends & ranked & (top > neg / 2), top / (t + 1.0) ** length_penalty, neg)
    pool = jnp.concatenate([finished_score, score], axis=1)
    best, pick = jax.lax.top_k(pool, k)
    finished = jnp.concatenate([finished, grown], axis=1)[rows, pick]
    alive, pick = jax.lax.top_k(jnp.where(ends, neg, top), k)
    return grown[rows, pick], alive, finished, best

  seqs, alive_logp, finished, finished_score = jax.lax.fori_loop(
      0, length - 1, step, (seqs, alive_logp, finished, finished_score))
  alive_score = jnp.where(alive_logp > neg / 2,
                          alive_logp / (length - 1.0) ** length_penalty, neg)
  pool = jnp.concatenate([finished_score, alive_score], axis=1)
  return jnp.concatenate([finished, seqs], axis=1)[jnp.arange(batch_size), jnp.argmax(pool, 1)]
