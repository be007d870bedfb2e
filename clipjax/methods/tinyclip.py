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
    native folder, e.g. one of our runs exported with `--config.mode=export`).
  teacher_format: '' to detect.
  inherit: '' (random init) or 'manual' (`inheritance.inherit`: interval-front layers,
    leading width slices, per-head q/k/v/out).
  inherit_from: checkpoint to inherit from ('' = the teacher, or the previous stage's
    student in `config.stages`, or `config.previous_stage`); progressive
    stage 2 inherits from stage 1's student while the teacher stays the same.
  logit_scale: fixed multiplier for both student and teacher (official: 50); 0 uses the
    student's learned scale and the teacher's own.
  distill_weight, infonce_weight: official alpha, w map to alpha*w and (1-alpha)*w.
  auto: {} (off) or automatic inheritance (see `l0`): dict(start_sparsity,
    target_sparsity, sparsity_warmup, prune_step, lr=0.02). Mask logits and the Lagrange
    multipliers are parameters under `l0/`, trained as the official L0 optimizer does
    (`optim_rules`: Adam at the constant `lr`, no weight decay, no clipping; the
    multipliers by gradient ascent); logits are clamped after every step. The student
    runs the real towers under the sampled masks (`CLIPModel(..., masks=...)`). After
    `prune_step` steps of the stage, a hook folds the deterministic masks into a dense
    student with per-layer head and neuron counts, and the run goes on with it and a
    fresh optimizer (official `train.py`; set `optim.warmup_steps = prune_step` for the
    official schedule: warm-up until the prune, cosine after it). In
    `config.stages`, an auto stage starts from the full-size masked model holding the
    previous stage's pruned student (`l0.expand`, official `load_pruned_model`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax import losses, sharding
from clipjax.evaluate import EvalView
from clipjax.methods import inheritance, l0
from clipjax.methods.base import Hook, Method
from clipjax.methods.teacher import load_teacher, teacher_model

TOWERS = ('visual', 'textual')
L0_LR = 0.02  # official mask and multiplier learning rate


class TinyCLIP(Method):

  def __init__(self, config, mesh=None, tokenizer=None):
    super().__init__(config, mesh, tokenizer)
    t = config.tinyclip
    if t.get('inherit', '') not in ('', 'manual'):
      raise ValueError(f'tinyclip.inherit={t.inherit!r}; use "" or "manual"')
    self.teacher_src, self.teacher_format = t.teacher, t.get('teacher_format') or None
    self.teacher_model = teacher_model(self.teacher_src, self.teacher_format)
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

  def init(self, rng):
    variables = super().init(rng)
    if not self.auto:
      return variables
    params = dict(variables['params'])
    box = lambda a: nn.Partitioned(a, (None,) * a.ndim)
    masks = {t: l0.init_logas(l0.tower_dims(nn.unbox(params), t)) for t in TOWERS}
    params['l0'] = jax.tree_util.tree_map(box, {
        'masks': masks, 'lambdas': {k: jnp.float32(l0.INIT_LAMBDA) for k in ('lambda_1', 'lambda_2')}})
    return dict(variables, params=params)

  def init_aux(self, variables, rng):
    """Zeros shaped (and logically sharded) like the teacher: `prepare` fills them."""
    del variables, rng
    batch = self.example_teacher_inputs()
    shapes = jax.eval_shape(lambda: self.teacher_model.init(jax.random.PRNGKey(0), *batch))
    aux = {'teacher': jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                             shapes['params'])}
    if self.auto:  # steps taken in this stage, for the sparsity ramp
      aux['step'] = jnp.zeros([], jnp.int32)
    return aux

  def example_teacher_inputs(self):
    v, t = self.teacher_model.vision, self.teacher_model.text
    return (jnp.zeros((1, v['image_size'], v['image_size'], 3)),
            jnp.zeros((1, t['context_length']), jnp.int32))

  def optim_rules(self):
    if not self.auto:
      return []
    return [dict(match='l0/lambdas/.*', ascent=True),
            dict(match='l0/.*', schedule='constant', lr=self.auto.get('lr', L0_LR),
                 decay_mult=0.0, clip=False)]

  def prepare(self, state, previous=None):
    teacher = sharding.place_like(load_teacher(self.teacher_src, self.teacher_format),
                                  state.aux['teacher'])
    params = state.variables()['params']
    model_params = {k: v for k, v in params.items() if k != 'l0'}
    t = self.config.tinyclip
    if self.auto and previous is not None:
      full, logas = l0.expand(previous, jax.device_get(model_params))
      params = dict(params, **full)
      params['l0'] = dict(params['l0'], masks=logas)
    elif t.get('inherit') == 'manual':
      source = (load_teacher(t.inherit_from) if t.get('inherit_from') else
                previous if previous is not None else teacher)
      params = dict(params, **inheritance.inherit(jax.device_get(source),
                                                  jax.device_get(model_params)))
    elif previous is not None:
      raise ValueError('tinyclip: a previous stage or config.previous_stage needs '
                       'inherit="manual" or auto')
    return state.with_params(params).replace(aux=dict(state.aux, teacher=teacher))

  def embed(self, variables, aux, batch, rng):
    """The student's embeddings (under one mask sample for the whole batch in the mask
    phase) and the frozen teacher's."""
    params = variables['params']
    masks = l0.sample(params['l0']['masks'], rng) if self.auto else None
    student = {k: v for k, v in params.items() if k != 'l0'}
    out, mutables = self.apply({**variables, 'params': student}, batch['image'], batch['text'],
                               masks=masks)
    teacher = jax.lax.stop_gradient(self.teacher_model.apply(
        {'params': aux['teacher']}, batch['image'], batch['text']))
    return dict(image_emb=out['image_emb'], text_emb=out['text_emb'],
                teacher_image_emb=teacher['image_emb'],
                teacher_text_emb=teacher['text_emb']), mutables

  def loss_from_embeddings(self, variables, aux, emb, batch):
    del batch
    t = self.config.tinyclip
    fixed = t.get('logit_scale', 50.0)
    if fixed:
      student_scale = teacher_scale = fixed
    else:
      student_scale = self.scale_and_bias(variables['params'])['logit_scale']
      teacher_scale = jax.lax.stop_gradient(self.teacher_model.apply(
          {'params': aux['teacher']}, method=lambda m: m.logit_scale()))
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
    if not self.auto:
      return loss, metrics
    a, l0_params = self.auto, variables['params']['l0']
    expected = l0.expected_sparsity(l0_params['masks'], self.dims)
    target = l0.target_sparsity(aux['step'], a['start_sparsity'], a['target_sparsity'],
                                a['sparsity_warmup'])
    lagrangian = l0.lagrangian(expected, target, l0_params['lambdas'])
    metrics.update(expected_sparsity=expected, target_sparsity=target, lagrangian=lagrangian,
                   **l0_params['lambdas'])
    return loss + lagrangian, metrics

  def after_step(self, state):
    if not self.auto:
      return state
    l0_params = dict(state.params['l0'], masks=l0.clamp(state.params['l0']['masks']))
    return state.replace(params=dict(state.params, l0=l0_params),
                         aux=dict(state.aux, step=state.aux['step'] + 1))

  def hooks(self):
    return [Hook(self.prune, at=(int(self.auto['prune_step']),))] if self.auto else []

  def prune(self, ctx, state):
    """At `prune_step`: the run goes on with the dense student (and the teacher)."""
    pruned, sizes = self.pruned(state)
    return ctx.restructure(state, {'model': sizes, 'tinyclip': {'auto': {}}}, params=pruned,
                           aux={'teacher': state.aux['teacher']})

  def eval_view(self, state):
    """During the mask phase: the masked model under its deterministic masks (what a prune
    now would keep; the official eval-mode L0Module), not the unmasked weights."""
    if not self.auto:
      return super().eval_view(state)
    params = dict(state.variables()['params'])
    masks = l0.deterministic_masks(sharding.fetch(params.pop('l0')['masks']))
    model = self.model
    return EvalView(
        lambda v, x: model.apply({'params': v['params']}, x, masks=v['masks']['visual'],
                                 method='encode_image'),
        lambda v, ids: model.apply({'params': v['params']}, ids, masks=v['masks']['textual'],
                                   method='encode_text'),
        {'params': params, 'masks': masks})

  def pruned(self, state) -> tuple:
    """The dense student of the mask phase, deterministic masks folded in (host arrays),
    and its towers' sizes {'vision': ..., 'text': ...} (`l0.pruned_sizes`)."""
    params = sharding.fetch(state.variables()['params'])
    masks = l0.deterministic_masks(params['l0']['masks'])
    pruned = l0.prune({k: v for k, v in params.items() if k != 'l0'}, masks)
    return pruned, {tower: l0.pruned_sizes(pruned, t) for tower, t in (('vision', 'visual'),
                                                                      ('text', 'textual'))}

  def export(self, state):
    """In the mask phase, the student a prune now would leave."""
    if not self.auto:
      return super().export(state)
    pruned, sizes = self.pruned(state)
    return self.model.clone(**{tower: dict(getattr(self.model, tower), **size)
                               for tower, size in sizes.items()}), pruned


METHOD = TinyCLIP
