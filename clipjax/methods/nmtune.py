"""NMTune (Chen et al., "Understanding and Mitigating the Label Noise in Pre-training on
Downstream Tasks", ICLR 2024; Hhhhhhao/Noisy-Model-Learning): tune a small MLP and a
classifier on a frozen encoder's features so that the noise its pretraining data carried
hurts the downstream task less. The encoder is a black box: only its features are used,
never its gradients.

    f = F(x)                                  frozen, any CLIP checkpoint `clipjax.convert` reads
    z = alpha * (W2 relu(BN(W1 f + b1)) + b2) + f     W1: D -> 4D; alpha [D] learned, init 1
    y^ = Wc z + bc

Each step takes B labelled images in two views (weak, strong; the `data.augment` crop,
no RandAugment, as the official `--use-weak-strong=False`) and forwards all 2B rows:

    L = CE(y^, [y; y]) + 1.0 * mse(z_s/|z_s|, sg(f_w)/|f_w|)     (mean over B*D elements)
        + 0.04 * (1/D) sum_{a!=b} C_ab^2,  C = cov(z) over 2B rows (N-1)
        - 0.001 * mean(top-5 of s/sum(s)),  s = svdvals(z) (uncentred)

The baselines are the same module: `mlp=False` with every weight 0 is the linear probe
(LP) and `mlp=True` with weights 0 the MLP probe (configs/nmtune_quickstart.py:lp, :mlp).
The MLP's BatchNorm trains on the 2B rows and evaluates on its running statistics (Flax
keeps the biased batch variance in them, torch the unbiased one: a factor 2B/(2B-1)).

Without augmentation (`data.augment=None`, the linear probe's protocol) the two views
are the same image, so each is encoded once: one view of B rows. A black box (an API, a
model that cannot run here) is tuned on its outputs the same way: `data.format='features'`
reads an .npz of one feature vector per image and its label
(`clipjax.data.sources.FeatureSource`). With one view, the consistency term holds z to
its own f and the spectral terms span the B rows.

Config (`config.nmtune`):
  backbone: the frozen encoder, a checkpoint of any `clipjax.convert` format (a run's
    `--config.mode=export` folder, an HF/OpenAI/open_clip CLIP); its projected image
    embedding, unnormalised, is f. Empty with `data.format='features'`.
  feature_dim: D of a features file (black box only).
  num_classes: classes of the training set, checked against it.
  mlp, mlp_ratio, res_scale_init: the module above.
  mse_weight, cov_weight, svd_weight, svd_top_k: the loss.

Evaluation uses the tuned head itself (`type='classifier'` evaluators, on images or on a
features file: the eval view returns class scores).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax import sharding
from clipjax.data import transforms
from clipjax.evaluate import ClassifierEvaluator, EvalView
from clipjax.methods.base import Method
from clipjax.methods.teacher import load_teacher, teacher_model
from clipjax.models.vit import VisionTransformer


def _torch_uniform(fan_in: int):
  """PyTorch's default nn.Linear init for weights and biases: U(-1/sqrt(fan_in), ...)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class NMTuneHead(nn.Module):
  """f [N, D] -> (z [N, D], logits [N, C]); `mlp=False` is a linear classifier on f."""
  num_classes: int
  mlp: bool = True
  mlp_ratio: int = 4
  res_scale_init: float = 1.0

  @nn.compact
  def __call__(self, f, train: bool):
    dim = f.shape[-1]
    z = f
    if self.mlp:
      hidden = dim * self.mlp_ratio
      h = nn.Dense(hidden, kernel_init=_torch_uniform(dim), bias_init=_torch_uniform(dim),
                   name='fc1')(f)
      h = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name='bn')(h, use_running_average=not train)
      g = nn.Dense(dim, kernel_init=_torch_uniform(hidden), bias_init=_torch_uniform(hidden),
                   name='fc2')(nn.relu(h))
      alpha = self.param('res_scale', nn.initializers.constant(self.res_scale_init), (dim,))
      z = alpha * g + f
    logits = nn.Dense(self.num_classes, name='head',  # kaiming_uniform: U(+-sqrt(6/fan_in))
                      kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform'),
                      bias_init=nn.initializers.zeros)(z)
    return z, logits


# ------------------------------------------------------------------ equations

def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def consistency_loss(z_strong, f_weak):
  """Mean over elements of (z_s/|z_s| - sg(f_w)/|f_w|)^2 (nn.MSELoss on unit rows)."""
  return jnp.mean((_unit(z_strong) - jax.lax.stop_gradient(_unit(f_weak))) ** 2)


def covariance_loss(z):
  """(1/D) sum of squared off-diagonal covariances of z's columns, over N-1."""
  n, d = z.shape
  centred = z - z.mean(axis=0)
  cov = centred.T @ centred / (n - 1)
  return (jnp.sum(cov ** 2) - jnp.sum(jnp.diagonal(cov) ** 2)) / d


def dominant_singular_loss(z, k: int = 5):
  """-mean of the top-k normalised singular values of the uncentred z (minimised, it
  raises them: the official `loss -= mean(s[:5] / s.sum())`)."""
  s = jnp.linalg.svd(z, compute_uv=False)
  return -jnp.mean((s / jnp.sum(s))[:k])


# ------------------------------------------------------------------ data

def labelled_features(record, rng) -> dict:
  """{'feature': f32 [D], 'label': i32}: a black box's output for one image."""
  del rng
  return {'feature': np.asarray(record['feature'], np.float32), 'label': np.int32(record['label'])}


class LabelledViews:
  """{'images': f32 [V, S, S, 3] normalised, 'label': i32}: two random resized crops of a
  labelled image (weak, strong), or the resized image alone when `augment` is None."""

  def __init__(self, image_size: int, augment=None, mean=transforms.CLIP_MEAN,
               std=transforms.CLIP_STD):
    self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
    self.augment = None if augment is None else {**transforms.DEFAULT_AUGMENT, **augment}
    self.views = 1 if augment is None else 2

  def _view(self, image, rng):
    if self.augment is None:
      image = transforms.to_size(image, self.image_size)
    else:
      image = transforms.random_resized_crop(image, self.image_size, rng,
                                             self.augment['scale'], self.augment['ratio'])
    return transforms.normalize(image, self.mean, self.std).astype(np.float32)

  def __call__(self, record, rng) -> dict:
    if 'label' not in record:
      raise ValueError(f'nmtune reads labelled images (data.format="image_set"); a record '
                       f'has only {sorted(record)}')
    views = [self._view(record['image'], rng) for _ in range(self.views)]
    return {'images': np.stack(views), 'label': np.int32(record['label'])}


# ------------------------------------------------------------------ the method

def _no_text(variables, ids):
  raise ValueError('nmtune has no text tower: evaluate it with type="classifier" evaluators')


class NMTune(Method):
  """A tuned head on a frozen encoder, trained on labelled images."""

  text_tower = False

  def __init__(self, config, mesh=None, tokenizer=None):  # pylint: disable=super-init-not-called
    self.config, self.mesh, self.tokenizer = config, mesh, tokenizer
    t = config.nmtune
    if int(t.get('num_classes', 0)) < 2:
      raise ValueError(f'nmtune: config.nmtune.num_classes={t.get("num_classes")} must be >= 2')
    self.blackbox = config.data.get('format') == 'features'
    if config.data.get('canvas_size'):
      raise ValueError(f'nmtune: config.data.canvas_size={config.data.canvas_size}: its views '
                       'are cropped on the host (set 0)')
    if self.blackbox:
      if t.get('backbone'):
        raise ValueError(f'nmtune: data.format="features" tunes on precomputed features; '
                         f'config.nmtune.backbone must be empty, got {t.backbone!r}')
      self.backbone, self.feature_dim = None, int(t.get('feature_dim', 0))
      if self.feature_dim < 1:
        raise ValueError('nmtune: data.format="features" needs config.nmtune.feature_dim, '
                         'the width of the features file')
    else:
      if not t.get('backbone'):
        raise ValueError('nmtune: config.nmtune.backbone is empty; give a checkpoint of the '
                         'frozen encoder (e.g. a run exported with --config.mode=export), or '
                         'features with data.format="features"')
      self.backbone = teacher_model(t.backbone, t.get('backbone_format') or None)
      self.feature_dim = self.backbone.embed_dim
      # Its image tower alone: aux and every checkpoint hold no text tower.
      self.image_tower = VisionTransformer(output_dim=self.feature_dim,
                                           dtype=self.backbone.dtype, **self.backbone.vision)
      size = self.backbone.vision['image_size']
      if config.model.image_size != size:
        raise ValueError(f'nmtune: config.model.image_size={config.model.image_size} but the '
                         f'backbone {t.backbone} reads {size} px images')
    self.model = NMTuneHead(int(t.num_classes), mlp=bool(t.get('mlp', True)),
                            mlp_ratio=int(t.get('mlp_ratio', 4)),
                            res_scale_init=float(t.get('res_scale_init', 1.0)))
    self.weights = {k: float(t.get(f'{k}_weight', 0.0)) for k in ('mse', 'cov', 'svd')}
    self.top_k = int(t.get('svd_top_k', 5))
    self._check_evals()

  def _check_evals(self):
    """At start: every evaluator scores this head (`classifier`) on the input kind it
    reads, and one on the training set's test part holds out what training leaves out."""
    plain = lambda v: v.to_dict() if hasattr(v, 'to_dict') else dict(v or {})
    train = plain(self.config.data.get('image_set'))
    for name, spec in plain(self.config.get('evals')).items():
      spec, where = plain(spec), f'config.evals.{name}'
      if spec.pop('type', None) != 'classifier':
        raise ValueError(f'{where}: nmtune scores its own head (no text tower, class scores '
                         'for features): use type="classifier"')
      if self.blackbox != (spec.get('features') is not None):
        raise ValueError(f'{where}: an nmtune run on ' + (
            'features is scored on features=<.npz>' if self.blackbox else
            'images is scored on dataset= or image_folder='))
      same_set = all(spec.get(k) == train.get(k) for k in ('dataset', 'image_folder'))
      if self.blackbox or not same_set or spec.get('part', 'test') != 'test':
        continue
      held, trained = (ClassifierEvaluator(**s).spec for s in (spec, dict(train, part='test')))
      for key in ('num_samples', 'seed', 'test_fraction'):
        if held[key] != trained[key]:
          raise ValueError(f'{where}.{key}={held[key]} but data.image_set.{key}='
                           f'{trained[key]}: its test part would overlap the training images')

  # ------------------------------------------------------------------ data

  def transform(self):
    if self.blackbox:
      return labelled_features
    d = self.config.data
    plain = lambda v: v.to_dict() if hasattr(v, 'to_dict') else v
    norm = {k: tuple(d[k]) for k in ('mean', 'std') if d.get(k) is not None}
    return LabelledViews(self.config.model.image_size, plain(d.get('augment')), **norm)

  def source(self, source):
    classes = len(getattr(source, 'classnames', ()))
    if classes != self.config.nmtune.num_classes:
      raise ValueError(f'nmtune: config.nmtune.num_classes={self.config.nmtune.num_classes} '
                       f'but the training set has {classes} classes: {source} '
                       '(data.format="image_set" names a labelled set)')
    if self.blackbox and source.features.shape[1] != self.feature_dim:
      raise ValueError(f'nmtune: config.nmtune.feature_dim={self.feature_dim} but {source} '
                       'holds features of another width')
    return source

  def example_batch(self, batch_size: int = 1) -> dict:
    label = np.zeros((batch_size,), np.int32)
    if self.blackbox:
      return {'feature': np.zeros((batch_size, self.feature_dim), np.float32), 'label': label}
    s, views = self.config.model.image_size, self.transform().views
    return {'images': np.zeros((batch_size, views, s, s, 3), np.float32), 'label': label}

  # ------------------------------------------------------------------ state

  def init(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.feature_dim)), train=False)

  def init_aux(self, variables, rng):
    """Zeros shaped like the backbone's image tower: `prepare` loads it."""
    del variables, rng
    if self.blackbox:
      return {}
    s = self.backbone.vision['image_size']
    shapes = jax.eval_shape(lambda: self.image_tower.init(jax.random.PRNGKey(0),
                                                          jnp.zeros((1, s, s, 3))))
    return {'backbone': jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                               shapes['params'])}

  def optim_rules(self):
    return [dict(match='.*', decay_mult=1.0)]  # torch AdamW decays every tuned parameter

  def prepare(self, state, previous=None):
    if previous is not None:
      raise ValueError('nmtune: stages and previous_stage are not supported; the frozen '
                       'encoder is config.nmtune.backbone')
    if self.blackbox:
      return state
    t = self.config.nmtune
    params = load_teacher(t.backbone, t.get('backbone_format') or None)
    backbone = sharding.place_like(params['visual'], state.aux['backbone'])
    return state.replace(aux=dict(state.aux, backbone=backbone))

  # ------------------------------------------------------------------ the step

  def features(self, visual_params, images):
    """f: the frozen image tower's projected embedding, unnormalised."""
    f = self.image_tower.apply({'params': visual_params}, images)[0]
    return jax.lax.stop_gradient(f.astype(jnp.float32))

  def inputs(self, aux, batch):
    """(f [V*B, D], view-major: all weak rows, then all strong ones; labels [V*B])."""
    if self.blackbox:
      return batch['feature'], batch['label']
    images = jnp.swapaxes(batch['images'], 0, 1)
    views = images.shape[0]
    f = self.features(aux['backbone'], images.reshape((-1,) + images.shape[2:]))
    return f, jnp.tile(batch['label'], views)

  def loss(self, variables, aux, batch, rng):
    del rng
    f, labels = self.inputs(aux, batch)
    (z, logits), mutables = self.apply(variables, f, train=True)
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    b = len(batch['label'])
    f_weak, z_strong = f[:b], z[-b:]  # one view: both are the only one
    terms = dict(ce=ce, mse=consistency_loss(z_strong, f_weak), cov=covariance_loss(z),
                 svd=dominant_singular_loss(z, self.top_k))
    loss = ce + sum(w * terms[k] for k, w in self.weights.items() if w)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, dict(terms, train_accuracy=accuracy), mutables

  # ------------------------------------------------------------------ host side

  def eval_view(self, state):
    """Class scores of the tuned head on the frozen features (classifier evaluators);
    a black box's view reads features (`Encoder.encode_features`), not images."""
    if self.blackbox:
      return EvalView(lambda v, f: self.model.apply(v, f, train=False)[1], _no_text,
                      state.variables())
    variables = dict(state.variables(), backbone=state.aux['backbone'])

    def encode_image(v, images):
      head_vars = {k: x for k, x in v.items() if k != 'backbone'}
      return self.model.apply(head_vars, self.features(v['backbone'], images), train=False)[1]

    return EvalView(encode_image, _no_text, variables)

  def export(self, state):
    raise ValueError('nmtune exports no CLIP model: its tuned head lives in the checkpoints '
                     '(the frozen encoder is config.nmtune.backbone)')


METHOD = NMTune
