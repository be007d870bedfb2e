"""Contrastive losses: the readable references every kernel is tested against.

Embeddings arrive L2-normalised; `logit_scale` is the multiplier itself (exp of the
learned log-scale, as open_clip passes it). Under `jit` with batch-sharded inputs,
GSPMD gathers the columns, so each loss equals the single-device loss on the global batch.
"""
import jax
import jax.numpy as jnp


def clip_loss(image_emb, text_emb, logit_scale):
  """Symmetric InfoNCE: mean of image->text and text->image cross-entropy."""
  logits = logit_scale * jnp.einsum(
      'id,jd->ij', image_emb, text_emb, preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  diag = logits[labels, labels]
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias):
  """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023), summed over pairs / batch size."""
  logits = logit_scale * jnp.einsum(
      'id,jd->ij', image_emb, text_emb, preferred_element_type=jnp.float32)
  logits = logits + logit_bias
  n = logits.shape[0]
  signs = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
