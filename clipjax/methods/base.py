"""The interface every method implements; the loop, the step and the evaluators only
ever call these (`clipjax/methods/README.md` walks through it).

A method owns its model, its data (a record transform and the batch keys it declares),
its equations and its host-side hooks. The train state splits what the model holds into
trainable `params`, `frozen` params (optimizer rules) and `mutables` (BatchNorm
statistics); what a method carries besides its model (EMA copies, teachers, prototypes)
is `aux`: no gradient, no optimizer state, sharded by the same logical rules as params
wherever its leaves carry logical names (boxed, as `init` returns them).

Contrastive methods split their loss into `embed` (per example, expensive) and
`loss_from_embeddings` (over the whole global batch), which lets gradient accumulation
keep the full batch of negatives (GradCache, as open_clip's `--accum-freq`).
"""
import dataclasses
from typing import Any, Callable, Protocol

import jax.numpy as jnp
import numpy as np

from clipjax import models, sharding
from clipjax.data import device_resize, transforms
from clipjax.evaluate import EvalView
from clipjax.kernels import fused


@dataclasses.dataclass(frozen=True)
class Hook:
  """`fn(ctx, state) -> state`, run on every process outside jit before the next step
  whenever the steps taken in this stage (the whole run, without `config.stages`) are a
  multiple of `every` (every > 0) or in `at`. What it computes goes into the state
  (checkpointed with it); it must be a function of the state and config, since a
  resumed run re-runs the hooks due at the restored step."""
  fn: Callable
  every: int = 0
  at: tuple = ()

  def due(self, step: int) -> bool:
    return bool(self.every and step % self.every == 0) or step in self.at


class HookContext(Protocol):
  """What the loop hands to hooks."""
  config: Any
  mesh: Any
  workdir: Any

  def features(self, state, fn: Callable, indices, *, transform=None, example=None,
               seed: int = 0) -> dict:
    """`fn(state, batch) -> {name: [B, ...]}` over the training source's samples at
    `indices` (the method's transform and `example_batch` row unless others are given),
    jitted and sharded over the mesh and every process -> {name: np.ndarray [N, ...],
    'valid': bool [N]} on every process (clipjax.features.feature_pass)."""

  def restructure(self, state, updates: dict, *, params, aux=None, mutables=None):
    """A new model from the config with `updates` merged in, holding `params` (the whole
    model's) and `aux`/`mutables` (None: the new model's initial values, not prepared),
    with a fresh optimizer whose schedule goes on; recorded, so a resume rebuilds the
    same model. A hook that restructures is the last of its step."""


class Method:
  """Base: a two-tower image-text model trained on `{'image', 'text'}` batches."""

  text_tower = True  # the loop gives it a tokenizer (loaded, or trained on the captions)
  init_logit_scale = 1 / 0.07
  init_logit_bias = None

  def __init__(self, config, mesh=None, tokenizer=None):
    self.config = config
    self.mesh = mesh  # losses shard their work over its batch axes (clipjax/kernels)
    self.tokenizer = tokenizer
    loss = self.loss_kwargs()  # a bad loss option stops the run at its start, not at its trace
    fused.resolve(loss['implementation'], loss['collective'])
    m = config.model
    self.model = models.build_clip(
        m.name, dtype=jnp.dtype(m.get('dtype', 'float32')),
        init_logit_scale=self.init_logit_scale, init_logit_bias=self.init_logit_bias,
        **{k: v for k, v in m.items() if k not in ('name', 'dtype')})

  # ------------------------------------------------------------------ data

  def transform(self):
    """The picklable per-record transform grain runs (clipjax.data.transforms)."""
    c = self.config
    extra = c.data.get('extra_columns') or {}
    if extra:
      raise ValueError(f'config.data.extra_columns {sorted(extra)}: method {c.method!r} '
                       'reads only images and captions')
    return transforms.ImageText.from_config(c.data, tokenizer=self.tokenizer,
                                            context_length=c.model.context_length,
                                            image_size=c.model.image_size)

  def source(self, source):
    """The training source as this method reads it (e.g. in episodes; a source with
    `ordered = True` keeps its order in the pipeline)."""
    return source

  def example_batch(self, batch_size: int = 1) -> dict:
    """Zero arrays with the keys, shapes and dtypes of the batches `transform` makes."""
    return dict(self.image_example(batch_size),
                text=np.zeros((batch_size, self.config.model.context_length), np.int32))

  def example_inputs(self, batch_size: int = 1) -> dict:
    """`example_batch` as `embed` and `loss` see it: deferred images finished."""
    return device_resize.finish(self.example_batch(batch_size))

  def image_example(self, batch_size: int) -> dict:
    """The entries `transforms.ImageText` makes of an image under `config.data` (deferred to
    the step with `data.canvas_size`), batched."""
    return transforms.ImageText.from_config(
        self.config.data, tokenizer=None, context_length=0,
        image_size=self.config.model.image_size).image_example(batch_size)

  # ------------------------------------------------------------------ state

  def init(self, rng) -> dict:
    """Boxed (logically partitioned) model variables: 'params' and any collections."""
    batch = self.example_inputs()
    return self.model.init(rng, batch['image'], batch['text'])

  def init_aux(self, variables, rng) -> Any:
    """Method state besides the model, from the boxed `variables` (the random init:
    `prepare` refreshes what must follow loaded weights, e.g. an EMA); boxed leaves are
    sharded by the logical rules, others replicated."""
    del variables, rng
    return {}

  def optim_rules(self) -> list:
    """Optimizer rules this method's parameters need (see the train optimizer's docs);
    the config's `optim.rules` come first and can override them."""
    return []

  def prepare(self, state, previous=None):
    """Outside jit, on a fresh state: large state is loaded here (a teacher into aux,
    inherited weights into params) instead of being baked into the jitted init. Not
    called when resuming. `previous`: the params of the model this run continues
    (`config.previous_stage`, or the previous one of `config.stages`); by default the run
    continues from them. The step donates the state: copy what one part takes from
    another (an EMA from the params) rather than share its buffers."""
    if previous is not None:
      state = state.with_params(previous)
    return state

  # ------------------------------------------------------------------ the step (jitted)

  def apply(self, variables, *args, **kwargs) -> tuple:
    """`self.model.apply` -> (output, updated non-parameter collections, or {})."""
    mutable = [k for k in variables if k != 'params']
    if not mutable:
      return self.model.apply(variables, *args, **kwargs), {}
    out, updated = self.model.apply(variables, *args, mutable=mutable, **kwargs)
    return out, dict(updated)

  def embed(self, variables, aux, batch, rng) -> tuple:
    """(per-example outputs {name: [B, ...]}, updated mutables or {}). `rng` is the
    step's, the same for every micro-batch of an accumulated step: a draw shared by the
    whole batch (TinyCLIP's masks) then matches the unsplit step; per-example draws
    (dropout, random token masks) must be keyed by something of the example, e.g. its
    index, or micro-batches would repeat them."""
    del aux, rng
    out, mutables = self.apply(variables, batch['image'], batch['text'])
    return {k: out[k] for k in ('image_emb', 'text_emb')}, mutables

  def loss_kwargs(self) -> dict:
    """`implementation=` (config.loss_implementation), `collective=` (config.loss_collective)
    and `mesh=` for clipjax.losses."""
    return dict(implementation=self.config.get('loss_implementation') or 'auto', mesh=self.mesh,
                collective=self.config.get('loss_collective') or 'gather')

  def loss_from_embeddings(self, variables, aux, emb, batch) -> tuple:
    """(loss, metrics) over the whole global batch."""
    raise NotImplementedError

  def loss(self, variables, aux, batch, rng) -> tuple:
    """(loss, metrics, updated mutables or {}). A method that overrides this computes
    its loss in one piece and cannot accumulate gradients (grad_accum_steps=1)."""
    emb, mutables = self.embed(variables, aux, batch, rng)
    loss, metrics = self.loss_from_embeddings(variables, aux, emb, batch)
    return loss, metrics, mutables

  def after_step(self, state):
    """Inside jit, after the optimizer update (EMA updates, clamps)."""
    return state

  # ------------------------------------------------------------------ host side

  def hooks(self) -> list:
    """`Hook`s the loop runs between steps (episodes, prunes)."""
    return []

  def eval_view(self, state) -> EvalView:
    """What evaluators embed with; the functions must not change between calls."""
    variables = state.variables()
    return EvalView.of(self.model, variables.pop('params'), **variables)

  def export(self, state) -> tuple:
    """(CLIP model, host params) written by `--config.mode=export` and at stage ends."""
    return self.model, sharding.fetch(state.variables()['params'])

  def scale_and_bias(self, params) -> dict:
    return self.model.apply({'params': params}, method=lambda m: dict(
        logit_scale=m.logit_scale(),
        **({'logit_bias': m.logit_bias} if m.init_logit_bias is not None else {})))
