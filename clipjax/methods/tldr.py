"""TL;DR's codebook captioner (Wang et al., "Too Large; Data Reduction for Vision-Language
Pre-Training", ICCV 2023; showlab/datacentric.vlp, `vq_compress_model/`), trained by the
same loop as every method: a ViT, a vector quantiser over all its tokens, and a text
decoder cross-attending to the quantised tokens (`clipjax.models.captioner`).

    loss = caption cross-entropy (mean over the batch's caption tokens, sot excluded;
           label smoothing 0.1, as BLIP's BertLMHeadModel the release builds on)
           + VQ loss (legacy form by default, `model.vq_legacy`)

It is the release's `forward` (the ITC/ITM heads, momentum encoders and queues it builds
are unused there and left out). The reduction (`clipjax.analysis.tldr`) then reads, per
image, its code ids (`codes`, in the deterministic evaluation transform; the release ran
its extractor in train mode on random crops) and beam-searched captions (`captions`).
One captioner does both: the release fine-tuned a separate quantiser-free BLIP on COCO
for recaptioning, which has no counterpart on unlabelled data.

Config (`config.model`): vision (a `clipjax.models.registry.VISION` name, 'B/16' in the
paper), image_size, context_length (30 in the release), decoder_width, decoder_layers,
decoder_heads (BERT-base: 768/12/12), num_codes (1024), code_dim (768 = the ViT width:
no projection), label_smoothing (0.1), vq_beta (0.25), vq_legacy, vq_normalize (l2-normalised codes; not in the
release), dtype, remat, attention_impl. Generation
(`config.captioner`): num_beams (3), max_length (20), min_length (5), length_penalty (1).
Metrics: `lm_loss`, `vq_loss`, `token_accuracy`, `codebook_usage` (the share of codes
used in the batch) and `codebook_perplexity` (exp of the entropy of their frequencies).
"""
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.methods.base import Method
from clipjax.models import registry
from clipjax.models.captioner import CodebookCaptioner, beam_search


class TLDRCaptioner(Method):

  def __init__(self, config, mesh=None, tokenizer=None):  # pylint: disable=super-init-not-called
    self.config, self.mesh, self.tokenizer = config, mesh, tokenizer
    m = config.model
    if m.get('vision') not in registry.VISION:
      raise KeyError(f'config.model.vision={m.get("vision")!r}; one of {sorted(registry.VISION)}')
    vision = dict(registry.VISION[m.vision], image_size=m.image_size,
                  remat=m.get('remat', False), attention_impl=m.get('attention_impl', 'xla'))
    decoder = dict(width=m.decoder_width, layers=m.decoder_layers, heads=m.decoder_heads,
                   vocab_size=m.vocab_size, context_length=m.context_length,
                   remat=m.get('remat', False), attention_impl=m.get('attention_impl', 'xla'))
    self.model = CodebookCaptioner(vision, decoder, num_codes=m.num_codes,
                                   code_dim=m.get('code_dim') or vision['width'],
                                   vq_beta=m.get('vq_beta', 0.25),
                                   vq_legacy=m.get('vq_legacy', True),
                                   vq_normalize=m.get('vq_normalize', False),
                                   dtype=jnp.dtype(m.get('dtype', 'float32')))

  def init(self, rng):
    batch = self.example_inputs()
    return self.model.init(rng, batch['image'], batch['text'])

  # ------------------------------------------------------------------ the step

  def embed(self, variables, aux, batch, rng):
    """Per example: summed next-token NLL and correct predictions over its caption
    tokens, their count, its VQ loss and how often it uses each code (float: gradient
    accumulation differentiates every output)."""
    del aux, rng
    ids = batch['text']
    out, mutables = self.apply(variables, batch['image'], ids[:, :-1])
    targets = ids[:, 1:]
    eot = self.config.model.eot_token_id
    # Tokens up to and including the first eot are targets; padding after it is not.
    weights = (jnp.cumsum(targets == eot, axis=1) - (targets == eot) == 0).astype(jnp.float32)
    smoothing = float(self.config.model.get('label_smoothing', 0.1))
    logp = jax.nn.log_softmax(out['logits'])
    nll = -((1.0 - smoothing) * jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
            + smoothing * jnp.mean(logp, axis=-1))
    correct = (jnp.argmax(out['logits'], -1) == targets).astype(jnp.float32)
    return dict(nll=jnp.sum(nll * weights, 1), correct=jnp.sum(correct * weights, 1),
                tokens=jnp.sum(weights, 1), vq_loss=out['vq_loss'],
                code_counts=jax.nn.one_hot(out['codes'], self.config.model.num_codes).sum(1)), mutables

  def loss_from_embeddings(self, variables, aux, emb, batch):
    tokens = jnp.maximum(jnp.sum(emb['tokens']), 1.0)
    lm = jnp.sum(emb['nll']) / tokens
    vq = jnp.mean(emb['vq_loss'])
    counts = jnp.sum(emb['code_counts'], axis=0)
    freq = counts / jnp.sum(counts)
    entropy = -jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.maximum(freq, 1e-30)), 0.0))
    return lm + vq, dict(lm_loss=lm, vq_loss=vq, token_accuracy=jnp.sum(emb['correct']) / tokens,
                         codebook_usage=jnp.mean(counts > 0),
                         codebook_perplexity=jnp.exp(entropy))

  # ------------------------------------------------------------------ what the reduction reads

  def codes(self, state, batch) -> dict:
    """{'codes': int32 [B, T]}: each image token's codeword (jit, feature passes)."""
    variables = state.variables()
    return {'codes': self.model.apply(variables, batch['image'], method='encode')[1]}

  def captions(self, state, batch) -> dict:
    """{'caption_ids': int32 [B, max_length]}: beam-searched captions of the images."""
    c, tok = self.config.get('captioner', {}), self.tokenizer
    beams, length = int(c.get('num_beams', 3)), int(c.get('max_length', 20))
    if length > self.config.model.context_length:
      raise ValueError(f'config.captioner.max_length={length} exceeds the decoder\'s '
                       f'context_length={self.config.model.context_length}')
    variables = state.variables()
    quantised = self.model.apply(variables, batch['image'], method='encode')[0]
    quantised = jnp.repeat(quantised, beams, axis=0)
    logits_fn = lambda ids: self.model.apply(variables, ids, quantised, method='decode')
    ids = beam_search(logits_fn, quantised.shape[0] // beams, length, sot=tok.sot_id,
                      eot=tok.eot_id, pad=tok.pad_id, num_beams=beams,
                      min_length=int(c.get('min_length', 5)),
                      length_penalty=float(c.get('length_penalty', 1.0)),
                      vocab_size=tok.vocab_size)
    return {'caption_ids': ids}

  def decode_captions(self, ids) -> list:
    """Token ids from `captions` -> strings."""
    return [self.tokenizer.decode(row) for row in np.asarray(ids)]

  # ------------------------------------------------------------------ host side

  def eval_view(self, state):
    raise ValueError('tldr_captioner has no image and text embeddings for contrastive '
                     'evaluators (config.evals must be empty); its captions and codes are read '
                     'by `python -m clipjax.analysis.tldr`')

  def export(self, state):
    raise ValueError('tldr_captioner exports no CLIP model: the captioner lives in its '
                     'checkpoints, which `clipjax.analysis.tldr` restores')


METHOD = TLDRCaptioner
