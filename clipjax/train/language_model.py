"""A small decoder trained as a language model, for frozen-LLM methods (FLAME) where no
published LLM can be downloaded (the CPU quickstart, tests).

The tokenizer is a BPE with Llama's conventions (ids 0/1/2 = <unk>/<s>/</s>, BOS added,
SentencePiece-style spaces) trained on the texts; the model is a `LlamaEncoder` whose LM
head is its embedding matrix, trained by next-token cross-entropy. Both are saved as a
Hugging Face folder, so the frozen-LLM path reads it exactly as it reads Mistral:
`AutoTokenizer.from_pretrained` and `clipjax.convert.llama.load_llama`.
"""
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipjax.convert import llama as convert_llama
from clipjax.models import facets
from clipjax.models.llama import LlamaEncoder

log = logging.getLogger(__name__)
SPECIAL = ('<unk>', '<s>', '</s>')


def train_tokenizer(texts, vocab_size: int):
  """A `transformers.PreTrainedTokenizerFast` trained on `texts` (Llama's special tokens;
  '<s>' inside a text is parsed as BOS)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size,
                                                     special_tokens=list(SPECIAL)))
  tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 1)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', bos_token='<s>',
                                 eos_token='</s>', pad_token='<unk>', padding_side='left')


def _batches(ids: list, batch_size: int, length: int, rng: np.random.Generator):
  while True:
    pick = rng.integers(len(ids), size=batch_size)
    tokens = np.zeros((batch_size, length + 1), np.int32)
    weights = np.zeros((batch_size, length), np.float32)
    for row, i in enumerate(pick):
      seq = ids[i][:length + 1]
      tokens[row, :len(seq)] = seq
      weights[row, :len(seq) - 1] = 1.0
    yield tokens, weights


def _answer_ids(tokenizer, answers) -> np.ndarray:
  """The first token of each answer word as it follows a closing quote."""
  words = sorted({w for row in answers for w in row})
  first = {w: tokenizer([w], add_special_tokens=False)['input_ids'][0][0] for w in words}
  return np.asarray([[first[w] for w in row] for row in answers], np.int32)


def train_language_model(texts, folder: str, *, facet_data=(), vocab_size: int = 1024,
                         width: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                         mlp_dim: int = 352, length: int = 128, steps: int = 1500,
                         batch_size: int = 32, facet_batch_size: int = 16, lr: float = 3e-3,
                         seed: int = 0) -> dict:
  """Trains tokenizer and model on `texts` (next-token prediction), saves both to
  `folder` (HF layout), returns the mean losses of the first and last 50 steps.

  facet_data: (template, captions, answers [N][K] words) triples: instruction data in the
  exact form the frozen-LLM path reads (`clipjax.models.facets`: the prompt, its facet
  mask and positions), where each facet's closing token is taught to predict its one-word
  answer; every step then adds the mean of those losses over a batch of each triple."""
  prompts = [facets.TEMPLATES[t].replace(facets.CAPTION, facets.clean_caption(c))
             for t, captions, _ in facet_data for c in captions[:200]]
  tokenizer = train_tokenizer(list(texts) + prompts, vocab_size)
  ids = [list(x) + [2] for x in tokenizer(list(texts))['input_ids']]  # </s> ends each text
  model = LlamaEncoder(vocab_size=len(tokenizer), width=width, layers=layers, heads=heads,
                       kv_heads=kv_heads, mlp_dim=mlp_dim)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2), jnp.int32))['params'])
  tasks = []
  for template, captions, answers in facet_data:
    builder = facets.FacetPrompts(tokenizer, template, max_length=4 * length)
    prompt_ids, real = builder(captions)
    tasks.append((builder.layout, prompt_ids, real, _answer_ids(tokenizer, answers)))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps)
  optimizer = optax.adamw(schedule, b2=0.95, weight_decay=0.1)
  opt_state = optimizer.init(params)
  logits_of = lambda params, hidden: hidden @ params['token_embed'].T

  def loss_fn(params, tokens, weights, facet_batches):
    hidden, _ = model.apply({'params': params}, tokens[:, :-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_of(params, hidden), tokens[:, 1:])
    loss = jnp.sum(nll * weights) / jnp.sum(weights)
    for (layout, _, _, _), (prompt_ids, real, answers) in zip(tasks, facet_batches):
      hidden, _ = model.apply({'params': params}, prompt_ids, *facets.facet_inputs(layout, real))
      ends = np.asarray(layout.ends) + prompt_ids.shape[-1]
      loss += jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits_of(params, hidden[:, ends]), answers)) / len(tasks)
    return loss

  @jax.jit
  def step(params, opt_state, tokens, weights, facet_batches):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, weights, facet_batches)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  batches = _batches(ids, batch_size, length, rng)
  losses = []
  for n in range(steps):
    facet_batches = []
    for _, prompt_ids, real, answers in tasks:
      pick = rng.integers(len(prompt_ids), size=facet_batch_size)
      facet_batches.append((prompt_ids[pick], real[pick], answers[pick]))
    params, opt_state, loss = step(params, opt_state, *next(batches), facet_batches)
    losses.append(float(loss))
    if n % 250 == 0 or n == steps - 1:
      log.info('language model step %d: loss %.3f', n, losses[-1])
  os.makedirs(folder, exist_ok=True)
  convert_llama.save_llama(folder, model, params)
  tokenizer.save_pretrained(folder)
  k = min(50, steps)
  return {'loss_first': float(np.mean(losses[:k])), 'loss_last': float(np.mean(losses[-k:]))}
