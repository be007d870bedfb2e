"""The small interface every method implements; the train step only ever calls these.

A method owns its model and its equations. State it carries besides trainable params
(EMA copies, frozen teachers, prototypes, masks) lives in `aux`, which gets no optimizer
state and no gradient. Contrastive methods split their loss into `embed` (per-example,
expensive) and `loss_from_embeddings` (over the whole global batch), which lets gradient
accumulation keep the full batch of negatives (GradCache, as open_clip's `--accum-freq`).
"""
from typing import Any

import jax.numpy as jnp
import numpy as np

from clipjax import convert, models


class Method:
  """Base: a two-tower image-text model trained on `{'image', 'text'}` batches."""

  batch_keys = ('image', 'text')
  init_logit_scale = 1 / 0.07
  init_logit_bias = None

  def __init__(self, config, mesh=None):
    self.config = config
    self.mesh = mesh  # losses shard their work over its batch axes (clipjax/kernels)
    m = config.model
    self.model = models.build_clip(
        m.name, dtype=jnp.dtype(m.get('dtype', 'float32')),
        init_logit_scale=self.init_logit_scale, init_logit_bias=self.init_logit_bias,
        **{k: v for k, v in m.items() if k not in ('name', 'dtype')})

  def example_batch(self, batch_size: int = 1) -> dict:
    """Zero arrays with the shapes of one batch, for shape inference at init."""
    v, t = self.model.vision, self.model.text
    return {'image': np.zeros((batch_size, v['image_size'], v['image_size'], 3), np.float32),
            'text': np.zeros((batch_size, t['context_length']), np.int32)}

  def init_variables(self, rng) -> dict:
    """Boxed (logically partitioned) variables; the train state unboxes them."""
    batch = self.example_batch()
    return self.model.init(rng, batch['image'], batch['text'])

  def init_aux(self, params, rng) -> Any:
    del params, rng
    return {}

  restructure_step = None  # the step after which `restructure` changes the model, if any

  def prepare(self, state):
    """Outside jit, on a fresh state after `init_from`: a method loads large state here
    (TinyCLIP's teacher into aux, inherited weights into params) instead of baking it
    into the jitted init as constants. Not called when resuming from a checkpoint.

    In a chain of `config.stages`, `config.previous_stage` is the previous stage's final
    model (a native folder); by default a stage continues from its params."""
    if self.config.get('previous_stage'):
      state = state.replace(params=convert.init_params(
          state.params, [dict(src=self.config.previous_stage)]))
    return state

  def eval_view(self, params) -> tuple:
    """(model, params) that evaluators embed with (`model.apply(..., method='encode_image')`).
    A method whose trained forward is not plain `self.model` (TinyCLIP's masks) returns
    its own view; the model object must stay the same between calls (compiled once)."""
    return self.model, params

  def restructure(self, params, aux) -> tuple:
    """After `restructure_step` steps, outside jit: host params and the device aux in,
    (params, aux, config updates) out (aux entries kept as they are stay on device). The
    loop rebuilds model, optimizer (fresh state) and step from the updated config and goes
    on; TinyCLIP prunes its student here."""
    raise NotImplementedError(f'{type(self).__name__} sets restructure_step but no restructure')

  def embed(self, params, batch, rng) -> dict:
    del rng
    return self.model.apply({'params': params}, batch['image'], batch['text'])

  def loss_kwargs(self) -> dict:
    """`implementation=` (config.loss_implementation) and `mesh=` for clipjax.losses."""
    return dict(implementation=self.config.get('loss_implementation') or 'auto', mesh=self.mesh)

  def loss_from_embeddings(self, params, emb, batch) -> tuple:
    raise NotImplementedError

  def loss(self, params, aux, batch, rng) -> tuple:
    del aux
    return self.loss_from_embeddings(params, self.embed(params, batch, rng), batch)

  def after_step(self, state):
    """Inside jit, after the optimizer update (A-CLIP's EMA goes here)."""
    return state

  def scale_and_bias(self, params) -> dict:
    return self.model.apply({'params': params}, method=lambda m: dict(
        logit_scale=m.logit_scale(),
        **({'logit_bias': m.logit_bias} if m.init_logit_bias is not None else {})))
