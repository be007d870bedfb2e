"""FLAME (Cao et al., CVPR 2025; MIV-XJTU/FLAME): a ViT trained against the facet vectors
of a frozen decoder LLM, precomputed offline (`clipjax.embed`).

Image side (`FlameModel`): the ViT's tokens (no ln_post, no projection), a per-token
projector Linear-GELU-Linear-LayerNorm into the LLM's width, the mean over patch tokens
(class token excluded), L2-normalised. Text side: `positives` of a sample's K stored unit
vectors, drawn without replacement at every read (the release: 6 of 11). Loss: the
multi-positive sigmoid over the global batch, -1/(kB) sum log sigmoid(y (s x.t + b)) with
y = +1 for an image's own k texts; grouping texts by draw j (column i of block j is image
i's j-th text) makes each block a SigLIP matrix with positives on its diagonal, so the
loss is the mean over j of `losses.siglip_loss` (any of its kernels, sharded over the
mesh). Scale s = exp(t), t initialised at ln 10 and clamped to [0, ln 100] after every
step; bias b initialised at -10. Nothing of the LLM is trained.

Evaluation embeds texts through the frozen LLM: retrieval captions with the 7-facet
prompt, facets averaged (not normalised first, as released), zero-shot prompts with the
single prompt. Each distinct list of texts is embedded once per run and kept (float16);
the LLM is loaded for a list not seen yet and freed after it, so it holds no device
memory while training.

Config: `data.text_features` (the embedding job's workdir), `llm` (path: a Hugging Face
Llama-family folder; layer: the decoder layer read, 1-based, None for the penultimate;
max_length, max_caption_tokens, dtype), `flame.positives` (vectors drawn per read),
`flame.eval_templates` ({'captions': 'long', 'classes': 'single'}),
`flame.eval_batch_size`, `model.projector_dim` (0: the LLM's width). `configs/flame.py`
(the CC3M recipe), `configs/flame_quickstart.py`.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from clipjax import losses
from clipjax.data import sources, text_features, transforms
from clipjax.evaluate import EvalView
from clipjax.methods.base import Method
from clipjax.models.layers import layer_norm, logical_param
from clipjax.models.registry import model_spec
from clipjax.models.vit import VisionTransformer

MAX_LOG_SCALE = math.log(100.0)


class FlameModel(nn.Module):
  vision: dict
  embed_dim: int      # the LLM's width
  projector_dim: int  # the projector's hidden width (release: max(embed_dim, 4096))
  dtype: Any = jnp.float32

  def setup(self):
    self.visual = VisionTransformer(output_dim=self.embed_dim, head=False, dtype=self.dtype,
                                    **self.vision)
    dense = lambda n, axes, name: nn.Dense(
        n, dtype=self.dtype, name=name, kernel_init=logical_param(nn.initializers.lecun_normal(), axes),
        bias_init=logical_param(nn.initializers.zeros, axes[-1:]))
    self.proj_in = dense(self.projector_dim, ('embed', 'mlp'), 'proj_in')
    self.proj_out = dense(self.embed_dim, ('mlp', 'embed'), 'proj_out')
    self.proj_norm = layer_norm('proj_norm', dtype=self.dtype)
    self.log_logit_scale = self.param('log_logit_scale', nn.with_logical_partitioning(
        nn.initializers.constant(math.log(10.0)), ()), ())
    self.logit_bias = self.param('logit_bias', nn.with_logical_partitioning(
        nn.initializers.constant(-10.0), ()), ())

  def encode_image(self, images):
    """[B, embed_dim], not normalised: projector per token, then the mean over patches."""
    _, _, tokens = self.visual(images)
    projected = self.proj_norm(self.proj_out(nn.gelu(self.proj_in(tokens), approximate=False)))
    patches = projected[:, 1:] if self.vision.get('pool', 'cls') == 'cls' else projected
    return patches.mean(axis=1)

  def scale_and_bias(self):
    return {'logit_scale': jnp.exp(self.log_logit_scale), 'logit_bias': self.logit_bias}

  def __call__(self, images):
    return self.encode_image(images)


def multi_positive_sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias, **kwargs):
  """image_emb [B, D], text_emb [B, k, D] (image i's k texts), both unit rows: the
  release's MultiPositiveSigmoidLoss over the global batch, as the mean of k SigLIP
  losses (block j: every image against every image's j-th text)."""
  k = text_emb.shape[1]
  return sum(losses.siglip_loss(image_emb, text_emb[:, j], logit_scale, logit_bias, **kwargs)
             for j in range(k)) / k


class FacetTargets:
  """Record -> {'image', 'text_emb' f32 [k, D]}: k of the record's stored vectors drawn
  without replacement (a record without vectors is skipped and counted)."""

  def __init__(self, images: transforms.ImageText, features, positives: int):
    self.images, self.features, self.positives = images, features, positives

  def __call__(self, record, rng) -> dict:
    key = text_features.sample_key(record)
    if key not in self.features:
      raise sources.BadSample('missing_text_features')
    vectors = self.features[key]
    pick = rng.permutation(len(vectors))[:self.positives]
    return {**self.images.image(record, rng),
            'text_emb': vectors[pick].astype(np.float32)}


class FLAME(Method):
  text_tower = False

  def __init__(self, config, mesh=None, tokenizer=None):  # pylint: disable=super-init-not-called
    self.config, self.mesh, self.tokenizer = config, mesh, tokenizer
    path = config.data.get('text_features')
    if not path:
      raise ValueError('config.data.text_features is empty: FLAME trains against vectors '
                       'written by `python -m clipjax.embed` (its workdir)')
    self.features = text_features.TextFeatures(path)
    job, llm = self.features.job, config.llm
    if (job['llm'], job['layer']) != (str(llm.path), llm.get('layer')):
      raise ValueError(f'config.llm (path {llm.path!r}, layer {llm.get("layer")}) differs from '
                       f'the LLM that wrote {path} ({job["llm"]!r}, layer {job["layer"]}): '
                       'evaluation must embed texts as training targets were')
    from clipjax.embed import data_identity  # pylint: disable=g-import-not-at-top
    if data_identity(config.data) != job['data']:
      mine, theirs = data_identity(config.data), job['data']
      changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
      raise ValueError(f'{path} was embedded from other data (config.data differs in '
                       f'{changed}): its keys would join other samples\' vectors')
    count, width = self.features.shape
    self.positives = int(config.flame.positives)
    if not 1 <= self.positives <= count:
      raise ValueError(f'config.flame.positives={self.positives}: the store holds {count} '
                       f'vectors per sample')
    m = config.model
    vision = model_spec(m.name, **{k: v for k, v in m.items() if k in (
        'image_size', 'patch_size', 'pool', 'remat', 'attention_impl', 'act', 'mlp_ratio')})['vision']
    self.model = FlameModel(vision=vision, embed_dim=width,
                            projector_dim=int(m.get('projector_dim') or width),
                            dtype=jnp.dtype(m.get('dtype', 'float32')))
    self._texts = None

  def transform(self):
    c = self.config
    images = transforms.ImageText.from_config(c.data, tokenizer=None, context_length=0,
                                              image_size=c.model.image_size)
    return FacetTargets(images, self.features, self.positives)

  def example_batch(self, batch_size: int = 1) -> dict:
    return {**self.image_example(batch_size),
            'text_emb': np.zeros((batch_size, self.positives, self.features.shape[1]), np.float32)}

  def init(self, rng) -> dict:
    return self.model.init(rng, self.example_inputs()['image'])

  def embed(self, variables, aux, batch, rng):
    del aux, rng
    image = self.model.apply(variables, batch['image'], method='encode_image')
    image = image.astype(jnp.float32)
    image = image / jnp.sqrt(jnp.sum(image * image, axis=-1, keepdims=True) + 1e-12)
    return {'image_emb': image, 'text_emb': batch['text_emb']}, {}

  def scale_and_bias(self, params) -> dict:
    return self.model.apply({'params': params}, method='scale_and_bias')

  def loss_from_embeddings(self, variables, aux, emb, batch):
    del aux, batch
    sb = self.scale_and_bias(variables['params'])
    loss = multi_positive_sigmoid_loss(emb['image_emb'], emb['text_emb'], sb['logit_scale'],
                                       sb['logit_bias'], **self.loss_kwargs())
    return loss, sb

  def after_step(self, state):
    scale = jnp.clip(state.params['log_logit_scale'], 0.0, MAX_LOG_SCALE)
    return state.replace(params=dict(state.params, log_logit_scale=scale))

  def eval_view(self, state) -> EvalView:
    if self._texts is None:
      self._texts = FrozenLLMTexts(self.config)
    return EvalView(lambda v, x: self.model.apply(v, x, method='encode_image'), _no_ids,
                    {'params': state.variables()['params']}, embed_texts=self._texts)

  def export(self, state):
    raise ValueError('flame exports no CLIP model: its text side is a frozen LLM '
                     '(config.llm) read through clipjax.embed.FacetEncoder')


def _no_ids(variables, ids):
  raise TypeError('FLAME embeds strings through its frozen LLM (EvalView.embed_texts), not ids')


class FrozenLLMTexts:
  """(variables, texts, purpose) -> float32 [N, D] through the frozen LLM, each distinct list once."""

  def __init__(self, config):
    self.config = config
    self.templates = dict(config.flame.eval_templates)
    self._cache = {}

  def __call__(self, variables, texts, purpose: str) -> np.ndarray:
    del variables  # the LLM is frozen: the vectors depend on the texts alone
    if purpose not in self.templates:
      raise ValueError(f'no FLAME template for {purpose!r} texts; config.flame.eval_templates '
                       f'has {sorted(self.templates)}')
    key = (purpose, tuple(texts))
    if key not in self._cache:
      from clipjax.embed import FacetEncoder  # pylint: disable=g-import-not-at-top
      llm = self.config.llm
      encoder = FacetEncoder(llm.path, llm.get('layer'), llm.max_length, llm.max_caption_tokens,
                             self.config.flame.get('eval_batch_size', 32), llm.dtype)
      vectors = encoder(texts, self.templates[purpose]).mean(axis=1)
      self._cache[key] = vectors.astype(np.float16)
      del encoder  # its parameters leave the devices
    return self._cache[key].astype(np.float32)


METHOD = FLAME
