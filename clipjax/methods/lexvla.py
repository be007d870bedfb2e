"""LexVLA (Li et al., NeurIPS 2024, arXiv 2407.17827): image and text as non-negative,
vocabulary-sized lexical vectors, aligned by InfoNCE with an overuse penalty.

No official code is released; `../shared/methods/flame-lexvla-nmtune.md` §2 lists what the
paper fixes and what it leaves open. What is fixed, and followed here:
- vocabulary = the LLM tokenizer's with "meaningless" tokens removed (Llama 2: 17,149 of
  32,000); one vocabulary, two codebooks: the text codebook (the LLM's LM-head rows of the
  kept words, frozen) and the visual codebook (a trainable copy of it);
- image: frozen backbone patch features -> adapter (one self-attention block and a
  2-layer MLP into the LLM's width) -> codebook logits -> elu+1 -> max over patches -> L2;
  a patch's own vector (PatchDis) is its row before the max, L2-normalised;
- text: the caption in a one-word lexical-prediction prompt, the LLM's final hidden state
  at the last prompt token -> text codebook logits -> elu+1 -> L2; the LLM frozen with LoRA
  adapters (`clipjax.models.lora`);
- loss: symmetric InfoNCE on the lexical vectors plus lambda * the overuse penalty;
  sparsification at inference only: entries >= 1/sqrt(V), optionally the top k.

Open in the paper, chosen here (each a config key under `lexvla`):
- the word filter: SentencePiece / byte-level pieces that start a word and are alphabetic
  with >= `min_letters` letters (`stopwords` drops a short English list too);
- the prompt: FLAME's released one-word PromptEOL prompt (`clipjax.models.facets`,
  template 'single') stands in for the paper's, which is shown only as an image;
- the overuse penalty: with a_j the batch mean of word j's activation and
  p_j = a_j / sum_k a_k, L_op = sum_j p_j a_j, on the sides in `penalty_sides`. With p
  held constant (`overuse_stop_gradient`, the default) it is an L1 penalty weighted by each
  word's share of the batch's activation: the more samples use a word, the harder it is
  pushed down. Differentiated through p as well it equals sum_j a_j^2 / sum_k a_k, which
  favours spreading activation over more words (measured: more words active, not fewer;
  README). `penalty='flops'` is the FLOPs baseline sum_j a_j^2;
- the temperature: learnable, CLIP's initial 1/0.07, clamped at 100;
- the adapter: a pre-norm transformer block, LayerNorm, Linear-GELU-Linear; patch tokens
  only (no class token) enter the max-pool.

Ours, off the paper (`train_top_k`, default 0: off): the loss adds InfoNCE on the vectors
as inference reads them, each cut to its top k words and renormalised, with k annealed
geometrically from the whole vocabulary to `train_top_k` over the first
`train_top_k_anneal` of `total_steps` (every word gets gradient early: with k = 4 from
the first step every item kept the same few words and nothing was learnt). The dense
term stays, so the words below the cut still learn; while k is near V the two terms are
equal, so early on InfoNCE weighs twice against the penalty. The current k is in the
train state's `aux`: a run resumes with its k, and turning the term on or off changes
the state (a checkpoint of the other kind does not restore).

With `pool_chunk` > 0 the [batch, patches, vocab] logits of training are never whole in
memory: the max-pool runs over vocabulary chunks of that many words, each recomputed in
the backward pass (PatchDis's `encode_patches` does hold them, per evaluation batch).
The backbone (DINOv2 in the paper) comes from `init_from` and is frozen by `optim.rules`;
the quickstart trains a small ViT from scratch instead (no DINOv2 here).
Config: `llm` (path: a Hugging Face Llama-family folder; max_length, max_caption_tokens,
dtype; param_dtype: the frozen LLM's storage, bfloat16 halves a 7B model), `lexvla`
(above, plus lora_rank, lora_alpha, lora_rules, pool_chunk, adapter_mlp_dim,
train_top_k, train_top_k_anneal, eval_threshold, eval_top_k, eval_batch_size).
`configs/lexvla.py` (the paper's recipe), `configs/lexvla_quickstart.py`.
"""
import functools
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses, sharding
from clipjax.data import transforms
from clipjax.evaluate import EvalView
from clipjax.methods.base import Method
from clipjax.models import facets, lora
from clipjax.models.layers import Block, layer_norm, logical_param
from clipjax.models.llama import LlamaEncoder
from clipjax.models.registry import model_spec
from clipjax.models.vit import VisionTransformer

MAX_LOG_SCALE = math.log(100.0)
STOPWORDS = frozenset(
    'a an the and or but of in on at to for with by from as is are was were be been being it '
    'its this that these those there here has have had do does did not no so than then too '
    'very can will just into over under about up down out off which who whom what when where '
    'why how all any both each few more most other some such only own same'.split())


def lexical_vocabulary(tokenizer, min_letters: int = 2, stopwords: bool = False) -> tuple:
  """(token ids int32 [V], words [V]) kept as the lexical vocabulary: pieces that start a
  word (SentencePiece '▁' or byte-level 'Ġ') followed by letters only, at least
  `min_letters` of them; special tokens never."""
  special = set(tokenizer.all_special_ids)
  ids, words = [], []
  for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
    if i in special or token[:1] not in ('▁', 'Ġ'):
      continue
    word = token[1:]
    if (word.isascii() and word.isalpha() and len(word) >= min_letters
        and not (stopwords and word.lower() in STOPWORDS)):
      ids.append(i)
      words.append(word)
  if not ids:
    raise ValueError('the lexical vocabulary is empty: the tokenizer has no word-initial '
                     'alphabetic pieces (SentencePiece or byte-level BPE expected)')
  return np.asarray(ids, np.int32), words


def elu1p(x):
  return jax.nn.elu(x) + 1.0


def unit(x):
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def max_over_patches(patches, codebook, chunk: int):
  """max_n patches[b, n] . codebook[v] -> float32 [B, V], over vocabulary chunks of
  `chunk` words (0: all at once), each chunk's [B, N, chunk] logits recomputed in the
  backward pass rather than kept."""
  pool = lambda z: jnp.max(jnp.einsum('bnd,vd->bnv', patches, z,
                                      preferred_element_type=jnp.float32), axis=1)
  vocab = codebook.shape[0]
  if chunk <= 0 or chunk >= vocab:
    return pool(codebook)
  pad = -vocab % chunk
  blocks = jnp.pad(codebook, ((0, pad), (0, 0))).reshape(-1, chunk, codebook.shape[-1])
  pooled = jax.lax.map(jax.checkpoint(pool), blocks)  # [C, B, chunk]
  return jnp.moveaxis(pooled, 0, 1).reshape(patches.shape[0], -1)[:, :vocab]


def overuse_penalty(s, stop_gradient: bool = False):
  """sum_j p_j a_j with a_j = mean_i s_ij and p_j = a_j / sum_k a_k: words active across
  many samples cost most (our reading of the paper's 'normalised average activation')."""
  a = jnp.mean(s, axis=0)
  p = a / jnp.sum(a)
  if stop_gradient:
    p = jax.lax.stop_gradient(p)
  return jnp.sum(p * a)


def flops_penalty(s):
  """Paria et al. (2020): sum_j (mean_i s_ij)^2."""
  return jnp.sum(jnp.mean(s, axis=0) ** 2)


def keep_top_k(s, k):
  """[B, V]: each row's entries at or above its k-th largest (k traced, rounded, at least
  1), the rest 0; the gradient flows through the kept entries."""
  k = jnp.clip(jnp.round(k).astype(jnp.int32), 1, s.shape[-1])
  kth = jnp.take(jnp.sort(s, axis=-1), s.shape[-1] - k, axis=-1)
  return jnp.where(s >= kth[..., None], s, 0.0)


def top_k_schedule(step, total_steps: int, vocab: int, k: int, anneal: float):
  """Words kept per item in the loss after `step` steps: geometric from `vocab` to `k` over
  the first `anneal` of `total_steps`, then `k`."""
  span = anneal * total_steps
  t = jnp.minimum(step / span, 1.0) if span > 0 else 1.0
  return jnp.exp((1.0 - t) * math.log(vocab) + t * math.log(k)).astype(jnp.float32)


def sparsify(s, threshold: float, top_k: int = 0):
  """[B, V]: entries >= threshold, and of those at most the top_k largest (0: no cap; ties
  to the lower word, as lax.top_k); the rest 0."""
  keep = s >= threshold
  if top_k and top_k < s.shape[-1]:
    words = jax.lax.top_k(s, top_k)[1]
    keep &= jnp.zeros(s.shape, bool).at[jnp.arange(s.shape[0])[:, None], words].set(True)
  return jnp.where(keep, s, 0.0)


class LexVLAModel(nn.Module):
  """Image side: backbone, adapter, visual codebook; and the learnable temperature."""
  vision: dict
  vocab_size: int     # kept words
  code_dim: int       # the LLM's width
  adapter_mlp_dim: int
  adapter_heads: int
  pool_chunk: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    self.visual = VisionTransformer(output_dim=self.code_dim, head=False, dtype=self.dtype,
                                    **self.vision)
    self.adapter = Block(self.adapter_heads, dtype=self.dtype,
                         attention_impl=self.vision.get('attention_impl', 'xla'))
    self.adapter_norm = layer_norm('adapter_norm', dtype=self.dtype)
    dense = lambda n, axes, name: nn.Dense(
        n, dtype=self.dtype, name=name, kernel_init=logical_param(nn.initializers.lecun_normal(), axes),
        bias_init=logical_param(nn.initializers.zeros, axes[-1:]))
    self.proj_in = dense(self.adapter_mlp_dim, ('embed', 'mlp'), 'proj_in')
    self.proj_out = dense(self.code_dim, ('mlp', 'embed'), 'proj_out')
    self.image_codebook = self.param(  # `prepare` copies the text codebook in
        'image_codebook', logical_param(nn.initializers.normal(0.02), ('vocab', 'embed')),
        (self.vocab_size, self.code_dim))
    self.log_logit_scale = self.param('log_logit_scale', nn.with_logical_partitioning(
        nn.initializers.constant(math.log(1 / 0.07)), ()), ())

  def patch_features(self, images):
    """[B, N, code_dim]: the adapter's output for each patch token."""
    _, _, tokens = self.visual(images)
    x = self.adapter(tokens)
    x = self.proj_out(nn.gelu(self.proj_in(self.adapter_norm(x)), approximate=False))
    return x[:, 1:] if self.vision.get('pool', 'cls') == 'cls' else x

  def encode_image(self, images):
    """[B, V] unit, non-negative: the image's lexical vector."""
    pooled = max_over_patches(self.patch_features(images),
                              self.image_codebook.astype(self.dtype), self.pool_chunk)
    return unit(elu1p(pooled))

  def encode_patches(self, images):
    """[B, N, V] unit: each patch's lexical vector (PatchDis)."""
    logits = jnp.einsum('bnd,vd->bnv', self.patch_features(images),
                        self.image_codebook.astype(self.dtype), preferred_element_type=jnp.float32)
    return unit(elu1p(logits))

  def __call__(self, images):
    return self.encode_image(images)


class LexicalPrompts:
  """Record -> {'image', 'prompt_ids' int32 [L], 'prompt_real' bool [L]}: the caption in
  the lexical-prediction prompt, left-padded to L (the last token is the read one)."""

  def __init__(self, images: transforms.ImageText, prompts: facets.FacetPrompts, length: int):
    self.images, self.prompts, self.length = images, prompts, length

  def tokens(self, captions) -> tuple:
    ids, real = self.prompts(captions)  # at most `length` long (FacetPrompts.max_length)
    pad = self.length - ids.shape[1]
    return (np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.prompts.pad_id),
            np.pad(real, ((0, 0), (pad, 0))))

  def __call__(self, record, rng) -> dict:
    ids, real = self.tokens([record['caption']])
    return {**self.images.image(record, rng), 'prompt_ids': ids[0], 'prompt_real': real[0]}


class LexVLA(Method):
  text_tower = False

  def __init__(self, config, mesh=None, tokenizer=None):  # pylint: disable=super-init-not-called
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    from clipjax.convert.llama import llama_spec  # pylint: disable=g-import-not-at-top
    self.config, self.mesh, self.tokenizer = config, mesh, tokenizer
    llm, lex = config.llm, config.lexvla
    if config.get('stages') or config.get('previous_stage'):
      raise ValueError('lexvla: stages and previous_stage are not supported (its model is not '
                       'exported: the text side is the LLM with its adapters)')
    if not llm.get('path'):
      raise ValueError('config.llm.path is empty: LexVLA reads captions through a Hugging '
                       'Face Llama-family folder')
    where = os.path.join(llm.path, 'config.json')
    if not os.path.exists(where):
      raise FileNotFoundError(f'config.llm.path={llm.path!r}: no {where}')
    with open(where) as f:
      self.llm = LlamaEncoder(dtype=jnp.dtype(llm.dtype),
                              param_dtype=jnp.dtype(llm.get('param_dtype', 'float32')),
                              **llama_spec(json.load(f), where))
    self.llm_tokenizer = AutoTokenizer.from_pretrained(llm.path)
    self.word_ids, self.words = lexical_vocabulary(self.llm_tokenizer, lex.min_letters,
                                                   lex.stopwords)
    self.prompts = facets.FacetPrompts(self.llm_tokenizer, 'single', llm.max_length,
                                       llm.max_caption_tokens)
    penalties = {'overuse': functools.partial(overuse_penalty,
                                              stop_gradient=lex.overuse_stop_gradient),
                 'flops': flops_penalty, 'none': None}
    if lex.penalty not in penalties:
      raise ValueError(f'config.lexvla.penalty={lex.penalty!r}: want one of {sorted(penalties)}')
    self.penalty = penalties[lex.penalty]
    self.threshold = (1.0 / math.sqrt(len(self.words)) if lex.get('eval_threshold') is None
                      else float(lex.eval_threshold))
    m = config.model
    vision = model_spec(m.name, **{k: v for k, v in m.items() if k in (
        'image_size', 'patch_size', 'pool', 'remat', 'attention_impl', 'act', 'mlp_ratio')})['vision']
    self.model = LexVLAModel(vision=vision, vocab_size=len(self.words), code_dim=self.llm.width,
                             adapter_mlp_dim=int(lex.adapter_mlp_dim or self.llm.width),
                             adapter_heads=vision['heads'], pool_chunk=int(lex.pool_chunk),
                             dtype=jnp.dtype(m.get('dtype', 'float32')))
    self.lora_rules = [tuple(r) for r in lex.lora_rules] if lex.lora_rank else []
    self.lora_scale = float(lex.lora_alpha) / max(int(lex.lora_rank), 1)
    self.train_top_k = int(lex.train_top_k)
    if not 0 <= self.train_top_k <= len(self.words):
      raise ValueError(f'config.lexvla.train_top_k={self.train_top_k}: want 0 (off) or at most '
                       f'the vocabulary, {len(self.words)} words')
    if self.train_top_k and not 0 <= lex.train_top_k_anneal <= 1:
      raise ValueError(f'config.lexvla.train_top_k_anneal={lex.train_top_k_anneal}: want a '
                       'share of total_steps, in [0, 1]')
    self._text_fn = None

  # ------------------------------------------------------------------ data

  def transform(self):
    c = self.config
    images = transforms.ImageText.from_config(c.data, tokenizer=None, context_length=0,
                                              image_size=c.model.image_size)
    return LexicalPrompts(images, self.prompts, int(c.llm.max_length))

  def example_batch(self, batch_size: int = 1) -> dict:
    length = int(self.config.llm.max_length)
    return {**self.image_example(batch_size),
            'prompt_ids': np.zeros((batch_size, length), np.int32),
            'prompt_real': np.ones((batch_size, length), bool)}

  # ------------------------------------------------------------------ state

  def _llm_shapes(self):
    return jax.eval_shape(lambda: self.llm.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 2), jnp.int32)))['params']

  def init(self, rng) -> dict:
    variables = self.model.init(rng, self.example_inputs()['image'])
    params = dict(variables['params'])
    if self.lora_rules:
      params['lora'] = lora.init(nn.unbox(self._llm_shapes()), self.lora_rules,
                                 int(self.config.lexvla.lora_rank), jax.random.fold_in(rng, 1))
    return dict(variables, params=params)

  def init_aux(self, variables, rng):
    """Zeros shaped (and logically sharded) like the LLM and the text codebook: `prepare`
    loads them."""
    del variables, rng
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    aux = {'llm': jax.tree_util.tree_map(zeros, self._llm_shapes()),
           'text_codebook': nn.LogicallyPartitioned(
               jnp.zeros((len(self.words), self.llm.width), jnp.float32), ('vocab', 'embed'))}
    if self.train_top_k:
      aux['train_top_k'] = self._top_k_at(0)
    return aux

  def _top_k_at(self, step):
    lex = self.config.lexvla
    return top_k_schedule(step, int(self.config.total_steps), len(self.words), self.train_top_k,
                          float(lex.train_top_k_anneal))

  def prepare(self, state, previous=None):
    from clipjax.convert import llama as convert_llama  # pylint: disable=g-import-not-at-top
    path = self.config.llm.path
    _, llm = convert_llama.load_llama(path)
    codebook = np.asarray(convert_llama.load_lm_head(path), np.float32)[self.word_ids]
    aux = dict(state.aux, llm=sharding.place_like(llm, state.aux['llm']),
               text_codebook=sharding.place_like(codebook, state.aux['text_codebook']))
    del previous  # refused in __init__
    params = state.variables()['params']
    state = state.with_params(dict(params, image_codebook=sharding.place_like(
        codebook, params['image_codebook'])))
    return state.replace(aux=aux)

  # ------------------------------------------------------------------ the step

  def encode_text(self, params, aux, ids, real):
    """[B, V] unit, non-negative: the LoRA-adapted LLM's final hidden state at the last
    prompt token through the frozen text codebook."""
    llm = aux['llm']
    if self.lora_rules:
      llm = lora.merge(llm, params['lora'], self.lora_scale)
    hidden, _ = self.llm.apply({'params': llm}, ids,
                               *facets.facet_inputs(self.prompts.layout, real))
    logits = jnp.einsum('bd,vd->bv', hidden[:, -1], aux['text_codebook'].astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    return unit(elu1p(logits))

  def embed(self, variables, aux, batch, rng):
    del rng
    image = self.model.apply(variables, batch['image'], method='encode_image')
    text = self.encode_text(variables['params'], aux, batch['prompt_ids'], batch['prompt_real'])
    return {'image_emb': image, 'text_emb': text}, {}

  def loss_from_embeddings(self, variables, aux, emb, batch):
    del batch
    lex = self.config.lexvla
    scale = jnp.exp(variables['params']['log_logit_scale'])
    contrastive = losses.clip_loss(emb['image_emb'], emb['text_emb'], scale, **self.loss_kwargs())
    metrics = {'logit_scale': scale, 'contrastive': contrastive}
    loss = contrastive
    if self.train_top_k:
      cut = [unit(keep_top_k(emb[f'{side}_emb'], aux['train_top_k'])) for side in ('image', 'text')]
      metrics['contrastive_top_k'] = losses.clip_loss(*cut, scale, **self.loss_kwargs())
      metrics['train_top_k'] = aux['train_top_k']
      loss = loss + metrics['contrastive_top_k']
    if self.penalty is not None:
      for side in lex.penalty_sides:
        value = self.penalty(emb[f'{side}_emb'])
        metrics[f'{lex.penalty}_{side}'] = value
        loss = loss + lex.penalty_weight * value
    for side in ('image', 'text'):
      active = emb[f'{side}_emb'] >= self.threshold
      metrics[f'{side}_active_words'] = jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32))
      metrics[f'{side}_batch_active_words'] = jnp.sum(jnp.any(active, axis=0)).astype(jnp.float32)
      metrics[f'{side}_top_word_share'] = jnp.max(jnp.mean(active.astype(jnp.float32), axis=0))
    return loss, metrics

  def after_step(self, state):
    scale = jnp.clip(state.params['log_logit_scale'], 0.0, MAX_LOG_SCALE)
    state = state.replace(params=dict(state.params, log_logit_scale=scale))
    if self.train_top_k:
      state = state.replace(aux=dict(state.aux, train_top_k=self._top_k_at(state.step)))
    return state

  # ------------------------------------------------------------------ host side

  def eval_view(self, state) -> EvalView:
    lex = self.config.lexvla
    threshold, top_k = self.threshold, int(lex.eval_top_k)
    if self._text_fn is None:  # outputs replicated, so every process can read them
      out = None if self.mesh is None else jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec())
      self._text_fn = jax.jit(lambda p, a, ids, real: sparsify(
          self.encode_text(p, a, ids, real), threshold, top_k), out_shardings=out)
    image = lambda v, x: self.model.apply({'params': v['params']}, x, method='encode_image')
    patches = lambda v, x: self.model.apply({'params': v['params']}, x, method='encode_patches')
    return EvalView(lambda v, x: sparsify(image(v, x), threshold, top_k), _no_ids,
                    {'params': state.variables()['params'], 'aux': state.aux},
                    embed_texts=LexicalTexts(self), encode_patches=patches)

  def top_words(self, vectors: np.ndarray, k: int = 5) -> list:
    """The k highest-scoring words of each lexical vector."""
    order = np.argsort(-np.asarray(vectors), axis=-1)[:, :k]
    return [[self.words[j] for j in row] for row in order]

  def export(self, state):
    raise ValueError('lexvla exports no CLIP model: its text side is a LoRA-adapted LLM '
                     '(config.llm) with a lexical codebook')


def _no_ids(variables, ids):
  raise TypeError('LexVLA embeds strings through its LLM prompt (EvalView.embed_texts), not ids')


class LexicalTexts:
  """(variables, texts, purpose) -> float32 [N, V]: sparsified text lexical vectors
  (retrieval captions and zero-shot class prompts are prompted alike)."""

  def __init__(self, method: LexVLA):
    self.method, self.prompts = method, method.transform()

  def __call__(self, variables, texts, purpose: str) -> np.ndarray:
    del purpose
    method, prompts, out = self.method, self.prompts, []
    size = int(method.config.lexvla.eval_batch_size)
    for start in range(0, len(texts), size):
      chunk = list(texts[start:start + size])
      ids, real = prompts.tokens(chunk + [''] * (size - len(chunk)))
      vectors = method._text_fn(variables['params'], variables['aux'], ids, real)  # pylint: disable=protected-access
      out.append(np.asarray(vectors)[:len(chunk)])
    return np.concatenate(out).astype(np.float32)


METHOD = LexVLA
