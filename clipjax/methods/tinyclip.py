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
  inherit_from: checkpoint to inherit from ('' = the teacher); progressive stage 2
    inherits from stage 1's student while the teacher stays the same.
  logit_scale: fixed multiplier for both student and teacher (official: 50); 0 uses the
    student's learned scale and the teacher's own.
  distill_weight, infonce_weight: official alpha, w map to alpha*w and (1-alpha)*w.
"""
import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses
from clipjax.convert import load
from clipjax.methods import inheritance
from clipjax.methods.base import Method
from clipjax.methods.clip import losses_kwargs
from clipjax.methods.teacher import load_teacher, teacher_model


class TinyCLIP(Method):

  def __init__(self, config):
    super().__init__(config)
    t = config.tinyclip
    if config.get('grad_accum_steps', 1) > 1:
      raise ValueError('tinyclip: grad_accum_steps > 1 is not supported (the teacher lives in '
                       'aux, which the accumulated step does not pass to embed)')
    if t.get('inherit', '') not in ('', 'manual'):
      raise ValueError(f'tinyclip.inherit={t.inherit!r}; use "" or "manual"')
    self.teacher_src, self.teacher_format = t.teacher, t.get('teacher_format') or None
    self.teacher_model, self._teacher_params = teacher_model(self.teacher_src, self.teacher_format)
    self._check_compatible()

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

  def init_aux(self, params, rng):
    """Zeros shaped like the teacher: `prepare` fills them on their shardings."""
    del params, rng
    shapes = load.unbox(load.abstract_params(self.teacher_model, *self.example_teacher_inputs()))
    return {'teacher': jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)}

  def example_teacher_inputs(self):
    v, t = self.teacher_model.vision, self.teacher_model.text
    return (jnp.zeros((1, v['image_size'], v['image_size'], 3)),
            jnp.zeros((1, t['context_length']), jnp.int32))

  def prepare(self, state):
    teacher = self._teacher_params
    if teacher is None:
      teacher = load_teacher(self.teacher_src, self.teacher_format)[1]
    self._teacher_params = None
    teacher = place_like(teacher, state.aux['teacher'])
    params = state.params
    t = self.config.tinyclip
    if t.get('inherit') == 'manual':
      source = load_teacher(t.inherit_from)[1] if t.get('inherit_from') else teacher
      params = place_like(inheritance.inherit(jax.device_get(source), params), params)
    return state.replace(params=params, aux=dict(state.aux, teacher=teacher))

  def teacher_embed(self, aux, batch) -> dict:
    out = self.teacher_model.apply({'params': aux['teacher']}, batch['image'], batch['text'])
    return jax.lax.stop_gradient(out)

  def loss(self, params, aux, batch, rng):
    emb = self.embed(params, batch, rng)
    teacher = self.teacher_embed(aux, batch)
    emb = dict(emb, teacher_image_emb=teacher['image_emb'], teacher_text_emb=teacher['text_emb'],
               teacher_logit_scale=teacher['logit_scale'])
    return self.loss_from_embeddings(params, emb, batch)

  def loss_from_embeddings(self, params, emb, batch):
    del batch
    t = self.config.tinyclip
    fixed = t.get('logit_scale', 50.0)
    student_scale = fixed if fixed else self.scale_and_bias(params)['logit_scale']
    teacher_scale = fixed if fixed else emb['teacher_logit_scale']
    kw = losses_kwargs(self.config)
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


def place_like(values, like):
  """`values` (host or device arrays) with the dtypes and shardings of the tree `like`."""
  return jax.tree_util.tree_map(
      lambda v, l: jax.device_put(np.asarray(v).astype(l.dtype), getattr(l, 'sharding', None)),
      load.unbox(values), like)


METHOD = TinyCLIP
