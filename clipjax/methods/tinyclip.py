"""TinyCLIP (Wu et al., ICCV 2023): affinity-mimicking distillation with weight inheritance.

The student mimics a frozen teacher's image->text and text->image affinity distributions
over the global batch (`losses.affinity_mimicking_loss`), optionally plus the ground-truth
InfoNCE. Official recipe (microsoft/Cream TinyCLIP): both temperatures fixed at 1/50, no
InfoNCE (`distillation_alpha=1`), teacher ViT-B/32 laion2b_e16.

The teacher lives in `aux['teacher']`: no gradient, no optimizer state, checkpointed with the
run so a resume needs no teacher path; its features are computed in the same jitted step.
It is loaded in `prepare` (outside jit), never baked into the compiled init.

Config (`config.tinyclip`):
  teacher: checkpoint of any `clipjax.convert` format (an HF/OpenAI/open_clip CLIP, or a
    native folder, e.g. from `teacher.export_run` of one of our training runs).
  teacher_format: '' to detect.
  inherit: '' (random init) or 'manual' (`inheritance.inherit`: interval-front layers,
    leading width slices, per-head q/k/v/out).
  inherit_from: checkpoint to inherit from ('' = the teacher, or `config.previous_stage`
    in a chain of `config.stages`); progressive stage 2 inherits from stage 1's student
    while the teacher stays the same.
  logit_scale: fixed multiplier for both student and teacher (official: 50); 0 uses the
    student's learned scale and the teacher's own.
  distill_weight, infonce_weight: official alpha, w map to alpha*w and (1-alpha)*w.
  auto: {} (off) or automatic inheritance (see `l0`): dict(start_sparsity,
    target_sparsity, sparsity_warmup, prune_step). Mask logits and the Lagrange
    multipliers are parameters under `l0/` (give them `optim.constant_lr=[['l0/.*', 0.02]]`
    and `optim.no_decay='l0/.*'`, as the official L0 optimizer); the multipliers ascend
    through `l0.ascent`; logits are clamped after every step. After `prune_step` steps,
    `restructure` folds the deterministic masks into a dense student with per-layer head
    and neuron counts, and the run goes on with it and a fresh optimizer (official
    `train.py`; set `optim.warmup_steps = prune_step` for the official schedule: warm-up
    until the prune, cosine after it). In a chain of `config.stages`, an auto stage starts
    from the full-size masked model holding the previous stage's pruned student
    (`l0.expand`, official `load_pruned_model`).
"""
import jax
import jax.numpy as jnp

import flax.linen as nn

from clipjax import losses, sharding
from clipjax.convert import load
from clipjax.methods import inheritance, l0
from clipjax.methods.base import Method
from clipjax.methods.teacher import load_teacher, teacher_model
from clipjax.models.clip import l2_normalize
from clipjax.train import distributed

TOWERS = ('visual', 'textual')


class TinyCLIP(Method):

  def __init__(self, config, mesh=None):
    super().__init__(config, mesh)
    t = config.tinyclip
    if config.get('grad_accum_steps', 1) > 1:
      raise ValueError('tinyclip: grad_accum_steps > 1 is not supported (the teacher lives in '
                       'aux, which the accumulated step does not pass to embed)')
    if t.get('inherit', '') not in ('', 'manual'):
      raise ValueError(f'tinyclip.inherit={t.inherit!r}; use "" or "manual"')
    self.teacher_src, self.teacher_format = t.teacher, t.get('teacher_format') or None
    self.teacher_model, self._teacher_params = teacher_model(self.teacher_src, self.teacher_format)
    self._check_compatible()
    self.auto = dict(t.get('auto') or {})
    if self.auto:
      for key in ('start_sparsity', 'target_sparsity', 'sparsity_warmup', 'prune_step'):
        if key not in self.auto:
          raise ValueError(f'tinyclip.auto needs {key} (have {sorted(self.auto)})')
      if not 0 <= self.auto['prune_step'] < config.total_steps:
        raise ValueError(f'tinyclip.auto.prune_step={self.auto["prune_step"]} must be in '
                         f'[0, total_steps={config.total_steps}): the run ends on the pruned model')
      self.dims = {tower: dict(width=spec['width'], layers=spec['layers'], heads=spec['heads'],
                               mlp=int(spec['width'] * spec.get('mlp_ratio', 4.0)))
                   for tower, spec in zip(TOWERS, (self.model.vision, self.model.text))}
      self._masked_view = MaskedTowers(self.model)

  @property
  def restructure_step(self):
    return int(self.auto['prune_step']) if self.auto else None

  def _check_compatible(self):
    s, te = self.model, self.teacher_model
    if s.vision['image_size'] != te.vision['image_size']:
      raise ValueError(f'tinyclip: student image_size {s.vision["image_size"]} != teacher '
                       f'{self.teacher_src} image_size {te.vision["image_size"]}')
    for key in ('vocab_size', 'eot_token_id'):
      if s.text.get(key) != te.text.get(key):
        raise ValueError(
            f'tinyclip: student text {key}={s.text.get(key)} but teacher {self.teacher_src} has '
            f'{te.text.get(key)}; use the teacher\'s tokenizer (config.tokenizer.path)')

  def init_variables(self, rng):
    variables = super().init_variables(rng)
    if not self.auto:
      return variables
    params = dict(variables['params'])
    box = lambda a: nn.Partitioned(a, (None,) * a.ndim)
    masks = {t: l0.init_logas(l0.tower_dims(nn.unbox(params), t)) for t in TOWERS}
    params['l0'] = jax.tree_util.tree_map(box, {
        'masks': masks, 'lambdas': {k: jnp.float32(l0.INIT_LAMBDA) for k in ('lambda_1', 'lambda_2')}})
    return dict(variables, params=params)

  def init_aux(self, params, rng):
    """Zeros shaped like the teacher: `prepare` fills them on their shardings."""
    del params, rng
    shapes = load.unbox(load.abstract_params(self.teacher_model, *self.example_teacher_inputs()))
    aux = {'teacher': jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)}
    if self.auto:  # the step, for the sparsity ramp
      aux['step'] = jnp.zeros([], jnp.int32)
    return aux

  def example_teacher_inputs(self):
    v, t = self.teacher_model.vision, self.teacher_model.text
    return (jnp.zeros((1, v['image_size'], v['image_size'], 3)),
            jnp.zeros((1, t['context_length']), jnp.int32))

  def prepare(self, state):
    teacher = self._teacher_params
    if teacher is None:
      teacher = load_teacher(self.teacher_src, self.teacher_format)[1]
    self._teacher_params = None
    teacher = sharding.place_like(teacher, state.aux['teacher'])
    params = state.params
    model_params = {k: v for k, v in params.items() if k != 'l0'}
    t = self.config.tinyclip
    previous = self.config.get('previous_stage')
    if self.auto and previous:
      full, logas = l0.expand(load_teacher(previous)[1], model_params)
      params = dict(params, **sharding.place_like(full, model_params))
      params['l0'] = dict(params['l0'], masks=sharding.place_like(logas, params['l0']['masks']))
    elif t.get('inherit') == 'manual':
      src = t.get('inherit_from') or previous
      source = load_teacher(src)[1] if src else teacher
      params = dict(params, **sharding.place_like(
          inheritance.inherit(jax.device_get(source), model_params), model_params))
    elif previous:
      raise ValueError(f'tinyclip: previous_stage={previous!r} needs inherit="manual" or auto')
    return state.replace(params=params, aux=dict(state.aux, teacher=teacher))

  def teacher_embed(self, aux, batch) -> dict:
    out = self.teacher_model.apply({'params': aux['teacher']}, batch['image'], batch['text'])
    return jax.lax.stop_gradient(out)

  def embed(self, params, batch, rng):
    if not self.auto:
      return super().embed(params, batch, rng)
    masks = l0.sample(params['l0']['masks'], rng)
    spec = {'visual': self.model.vision, 'textual': self.model.text}
    emb = {name: l2_normalize(l0.encode(params, spec[t], t, batch[key], masks[t]))
           for name, t, key in (('image_emb', 'visual', 'image'), ('text_emb', 'textual', 'text'))}
    return dict(emb, logit_scale=self.scale_and_bias(params)['logit_scale'])

  def loss(self, params, aux, batch, rng):
    emb = self.embed(params, batch, rng)
    teacher = self.teacher_embed(aux, batch)
    emb = dict(emb, teacher_image_emb=teacher['image_emb'], teacher_text_emb=teacher['text_emb'],
               teacher_logit_scale=teacher['logit_scale'])
    loss, metrics = self.loss_from_embeddings(params, emb, batch)
    if not self.auto:
      return loss, metrics
    a = self.auto
    expected = l0.expected_sparsity(params['l0']['masks'], self.dims)
    target = l0.target_sparsity(aux['step'], a['start_sparsity'], a['target_sparsity'],
                                a['sparsity_warmup'])
    lagrangian = l0.lagrangian(expected, target,
                               jax.tree_util.tree_map(l0.ascent, params['l0']['lambdas']))
    metrics.update(expected_sparsity=expected, target_sparsity=target, lagrangian=lagrangian,
                   **params['l0']['lambdas'])
    return loss + lagrangian, metrics

  def after_step(self, state):
    if not self.auto:
      return state
    l0_params = dict(state.params['l0'], masks=l0.clamp(state.params['l0']['masks']))
    return state.replace(params=dict(state.params, l0=l0_params),
                         aux=dict(state.aux, step=state.step))

  def eval_view(self, params):
    """During the mask phase: the masked model under its deterministic masks (what a prune
    now would keep; the official eval-mode L0Module), not the unmasked weights."""
    if not self.auto:
      return super().eval_view(params)
    masks = l0.deterministic_masks(distributed.fetch(params['l0']['masks']))
    return self._masked_view, dict(params, l0=masks)

  def pruned_params(self, params):
    """The dense student at the end of the mask phase: deterministic masks folded in."""
    params = jax.device_get(params)
    masks = l0.deterministic_masks(params['l0']['masks'])
    return l0.prune({k: v for k, v in params.items() if k != 'l0'}, masks)

  def restructure(self, params, aux):
    """At `prune_step`: the pruned dense student (host arrays), the aux it keeps (the
    teacher, on device), and the config changes that describe it."""
    pruned = self.pruned_params(params)
    sizes = {tower: l0.pruned_sizes(pruned, t) for tower, t in (('vision', 'visual'),
                                                               ('text', 'textual'))}
    return pruned, {'teacher': aux['teacher']}, {'model': sizes, 'tinyclip': {'auto': {}}}

  def loss_from_embeddings(self, params, emb, batch):
    del batch
    t = self.config.tinyclip
    fixed = t.get('logit_scale', 50.0)
    student_scale = fixed if fixed else self.scale_and_bias(params)['logit_scale']
    teacher_scale = fixed if fixed else emb['teacher_logit_scale']
    kw = self.loss_kwargs()
    distill = losses.affinity_mimicking_loss(
        emb['image_emb'], emb['text_emb'], emb['teacher_image_emb'], emb['teacher_text_emb'],
        student_scale, teacher_scale, **kw)
    loss = t.get('distill_weight', 1.0) * distill
    metrics = {'distill_loss': distill, 'logit_scale': jnp.asarray(student_scale, jnp.float32)}
    if t.get('infonce_weight', 0.0):
      hard = losses.clip_loss(emb['image_emb'], emb['text_emb'], student_scale, **kw)
      loss = loss + t.infonce_weight * hard
      metrics['infonce_loss'] = hard
    return loss, metrics


class MaskedTowers:
  """`model.apply`-compatible view of the masked towers for `evaluate.Encoder`: the masks
  travel in params['l0'] as {tower: {hidden, heads, intermediate}}."""

  def __init__(self, model):
    self.specs = {'visual': model.vision, 'textual': model.text}

  def apply(self, variables, inputs, method: str):
    tower = {'encode_image': 'visual', 'encode_text': 'textual'}[method]
    params = variables['params']
    return l0.encode(params, self.specs[tower], tower, inputs, params['l0'][tower])


METHOD = TinyCLIP
