"""A-CLIP, Attentive Mask CLIP (Yang et al., ICCV 2023): CLIP on two masked crops of each
image, where an EMA copy of the image tower chooses which patches to keep.

Official code: microsoft/A-CLIP (`models.py`, `losses.py`, `datasets.py`, `main.py`);
spec: `shared/methods/protoclip-aclip-tinyclip.md` section 2. Each sample gives two online
crops and a larger "zoom-out" EMA view containing both (`AttentiveViews`). Per step:

1. The EMA image tower runs on the EMA view, unmasked. Its class-token attention to the
   patches, averaged over all layers and heads, scores the EMA view's grid; the scores are
   resampled (bilinear) into each online crop's box, averaged over `mask_block` x
   `mask_block` blocks, and the top floor(blocks * keep_ratio) + 1 blocks are kept.
2. The online towers run on the kept tokens of both crops (`keep_path` 'gather': the
   sequence shrinks, so the cost falls with it; 'mask': full length, dropped keys masked).
3. L = w_clip (L_clip(view 1) + L_clip(view 2)) / 2 + w_simclr L_simclr + w_byol L_byol:
   InfoNCE of each view against the captions, SLIP's NT-Xent between the views' SimCLR
   head outputs (temperature 0.1), and BYOL's 2 - 2 cos between the online predictor's
   output for each view and the EMA projector's for the EMA view.
4. After the optimizer step the EMA (image tower, text transformer and projection, BYOL
   projector) moves towards the params with a momentum rising on a cosine from
   `ema_momentum` to 1 over the run; the temperature is clamped to [0, ln 100].

`mask` 'random' keeps the same number of blocks at random (FLIP's masking, the paper's
baseline; drawn from per-sample noise the pipeline makes, so micro-batches and resumes
draw the same); 'none' trains on the unmasked crops.

Released-code traps, resolved (spec 2.9): masking is on (the release defaults to
`mask_ratio=0`, i.e. unmasked); the SimCLR term contrasts view 1 with view 2
(`simclr.released=True` restores the release, which contrasts view 1 with itself); the
EMA view is the union of the crops plus a random margin, so it contains both (the release
mixes up a height and a left edge). As released: the patch embedding stays at its random
init (`freeze_patch_embed`), the class token is weight-decayed, the EMA text tower shares
the token and position embeddings and final norm with the online one and serves
evaluation only (`eval_ema`), and the EMA target head's BatchNorm uses batch statistics.
The resampling of scores into the crops is one bilinear sample per patch centre (the
release upsamples to the crop's pixels, crops, and downsamples); crops are resized
bicubic, as clipjax's CLIP crops (torchvision's default in the release is bilinear).
Under gradient accumulation the EMA branch runs twice per micro-batch (embedding and
back-propagation passes), and BatchNorm statistics are per micro-batch. A-CLIP-eff is
not implemented: its recipe is in neither the release nor the spec.

Config (`config.aclip`): mask, keep_path, keep_ratio, mask_block, ema_momentum, eval_ema,
freeze_patch_embed, crop_scale, colour (null: none; else `colour_augment`'s keywords),
simclr (hidden, dim, temperature, released), byol (hidden, dim), weights (clip, simclr,
byol).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clipjax import losses, sharding
from clipjax.data import transforms
from clipjax.evaluate import EvalView
from clipjax.methods.clip import CLIP
from clipjax.models.clip import MAX_LOGIT_SCALE, l2_normalize

# The EMA copy's part of the params: the image tower, the text transformer and its
# projection (token and position embeddings and the final norm stay shared), the BYOL
# projector.
EMA_PARTS = {'clip': {'visual': None, 'textual': {'transformer': None, 'proj': None}},
             'byol_projector': None}
VIEWS = ('image_1', 'image_2', 'image_ema')


# ------------------------------------------------------------------ model

class MLPHead(nn.Module):
  """(Linear - BatchNorm - ReLU) x (layers - 1), then Linear: SimCLR's `image_mlp`
  (biases), BYOL's projector and predictor (no biases)."""
  hidden: int
  dim: int
  layers: int
  bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.layers - 1):
      x = nn.Dense(self.hidden, use_bias=self.bias, name=f'fc{i}')(x)
      x = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=f'bn{i}')(
          x, use_running_average=not train)
      x = nn.relu(x)
    return nn.Dense(self.dim, use_bias=self.bias, name=f'fc{self.layers - 1}')(x)


class ACLIPModel(nn.Module):
  """A CLIP model plus the heads that read the image tower's pooled class token."""
  clip: nn.Module
  simclr_hidden: int = 4096
  simclr_dim: int = 256
  byol_hidden: int = 4096
  byol_dim: int = 256

  def setup(self):
    self.simclr_head = MLPHead(self.simclr_hidden, self.simclr_dim, 3)
    self.byol_projector = MLPHead(self.byol_hidden, self.byol_dim, 2, bias=False)
    self.byol_predictor = MLPHead(self.byol_hidden, self.byol_dim, 2, bias=False)

  def __call__(self, images, ids, keep_indices=None, token_keep=None, train: bool = True):
    image, pooled = self.clip.encode_image_pooled(images, keep_indices, token_keep)
    return dict(image_emb=l2_normalize(image), text_emb=l2_normalize(self.clip.encode_text(ids)),
                simclr=l2_normalize(self.simclr_head(pooled, train)),
                byol=self.byol_predictor(self.byol_projector(pooled, train), train))

  def target(self, images):
    """The EMA branch (applied to the EMA params): BYOL target, BatchNorm on batch stats."""
    return self.byol_projector(self.clip.encode_image_pooled(images)[1], train=True)

  def encode_image(self, images):
    return self.clip.encode_image(images)

  def encode_text(self, ids):
    return self.clip.encode_text(ids)


def select(tree: dict, parts: dict) -> dict:
  """The subtrees of `tree` that `parts` names (None: the whole subtree)."""
  return {k: tree[k] if sub is None else select(tree[k], sub) for k, sub in parts.items()}


def overlay(tree: dict, sub: dict) -> dict:
  """`tree` with the subtrees of `sub` put in place of its own."""
  return {k: (overlay(v, sub[k]) if isinstance(sub.get(k), dict) and isinstance(v, dict)
              else sub.get(k, v)) for k, v in tree.items()}


# ------------------------------------------------------------------ the attentive mask

def kept_blocks(blocks: int, ratio: float) -> int:
  """The release's count: floor(blocks * ratio) + 1 (25 of 49 at 0.5), at most all."""
  return min(blocks, int(blocks * ratio) + 1)


def reproject(scores, ema_box, view_box):
  """Scores over the EMA view's patch grid [B, g, g] -> over a crop's grid [B, g, g]: a
  bilinear sample at each crop patch's centre (edges clamped). Boxes are (top, left,
  height, width) in source pixels [B, 4]."""
  g = scores.shape[-1]
  centre = (jnp.arange(g, dtype=jnp.float32) + 0.5) / g

  def grid(axis):  # crop patch centres in the EMA view's grid coordinates
    pixel = view_box[:, axis, None] + centre[None] * view_box[:, axis + 2, None]
    return (pixel - ema_box[:, axis, None]) / ema_box[:, axis + 2, None] * g - 0.5

  def sample(s, rows, cols):
    r, c = jnp.meshgrid(rows, cols, indexing='ij')
    return jax.scipy.ndimage.map_coordinates(s, [r, c], order=1, mode='nearest')
  return jax.vmap(sample)(scores, grid(0), grid(1))


def top_blocks(scores, block: int, ratio: float):
  """Scores [B, g, g] -> sorted indices [B, K] of the patches in the best-scoring
  `block` x `block` blocks (block means; K = kept_blocks * block^2)."""
  b, g = scores.shape[0], scores.shape[-1]
  n = g // block
  means = scores.reshape(b, n, block, n, block).mean(axis=(2, 4)).reshape(b, n * n)
  _, top = jax.lax.top_k(means, kept_blocks(n * n, ratio))
  i, j = np.meshgrid(np.arange(block), np.arange(block), indexing='ij')
  rows = (top // n)[..., None] * block + i.ravel()
  cols = (top % n)[..., None] * block + j.ravel()
  return jnp.sort((rows * g + cols).reshape(b, -1), axis=1)


def class_attention(intermediates) -> jnp.ndarray:
  """Sown class-token attention rows [B, H, T] of every block -> mean over heads, then
  over blocks (blocks may differ in heads), class token dropped [B, T - 1]."""
  rows = [r.mean(axis=1) for r in jax.tree_util.tree_leaves(intermediates)]
  return jnp.mean(jnp.stack(rows), axis=0)[:, 1:]


def ema_weight(step, total_steps: int, start: float):
  """1 - m_t for the momentum m_t = 1 - (1 - start) (1 + cos(pi t / T)) / 2 (`start` at
  0, 1 at the end), as (1 - start) sin^2(pi (T - t) / 2T): in float32, 1 - m or 1 + cos
  would lose the small weight near the end."""
  left = (total_steps - jnp.minimum(step, total_steps)) / max(total_steps, 1)
  return (1.0 - start) * jnp.sin(jnp.pi * left / 2.0) ** 2


# ------------------------------------------------------------------ data

def zoom_out_box(a, b, height: int, width: int, rng):
  """The EMA view: the union of boxes `a` and `b` (x0, y0, x1, y1), each side moved out by a
  uniform random amount up to the image's edge."""
  x0, y0 = min(a[0], b[0]), min(a[1], b[1])
  x1, y1 = max(a[2], b[2]), max(a[3], b[3])
  return (int(rng.integers(0, x0 + 1)), int(rng.integers(0, y0 + 1)),
          int(rng.integers(x1, width + 1)), int(rng.integers(y1, height + 1)))


class AttentiveViews:
  """Record -> {'image_1', 'image_2', 'image_ema' (normalised), 'boxes' f32 [3, 4] (top,
  left, height, width in source pixels), 'noise' f32 [2, g * g] (each view's random
  mask), 'text'}:
  two random resized crops (with `colour` augmentation when given; no flip, which would
  break the boxes) and the zoom-out EMA view, unaugmented. Picklable."""

  def __init__(self, base: transforms.ImageText, scale, ratio, colour, grid: int):
    self.base, self.scale, self.ratio = base, tuple(scale), tuple(ratio)
    self.colour, self.grid = colour, grid

  def __call__(self, record, rng) -> dict:
    image = record['image']
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert('RGB')
    h, w = image.height, image.width
    crops = [transforms.random_resized_crop_box(h, w, rng, self.scale, self.ratio)
             for _ in range(2)]
    boxes = crops + [zoom_out_box(*crops, h, w, rng)]
    size = self.base.image_size
    out = {}
    for name, box in zip(VIEWS, boxes):
      view = image.resize((size, size), Image.BICUBIC, box=box)
      if self.colour and name != 'image_ema':
        view = transforms.colour_augment(view, rng, **self.colour)
      out[name] = np.multiply(np.asarray(view, np.uint8), self.base.scale, dtype=np.float32)
      out[name] += self.base.offset
    out['boxes'] = np.array([[y0, x0, y1 - y0, x1 - x0] for x0, y0, x1, y1 in boxes], np.float32)
    out['noise'] = rng.random((2, self.grid * self.grid), dtype=np.float32)
    out['text'] = self.base._tokens(record['caption'])  # pylint: disable=protected-access
    return out


# ------------------------------------------------------------------ the method

class ACLIP(CLIP):

  def __init__(self, config, mesh=None, tokenizer=None):
    super().__init__(config, mesh, tokenizer)
    a = self.a = config.aclip
    self.clip_model = self.model
    self.model = ACLIPModel(self.clip_model, a.simclr.hidden, a.simclr.dim, a.byol.hidden,
                            a.byol.dim)
    vision = self.clip_model.vision
    self.grid = vision['image_size'] // vision['patch_size']
    checks = [(a.mask in ('attentive', 'random', 'none'), 'mask',
               "'attentive', 'random' or 'none'"),
              (a.keep_path in ('gather', 'mask'), 'keep_path', "'gather' or 'mask'"),
              (0 < a.keep_ratio <= 1, 'keep_ratio', 'in (0, 1]'),
              (a.mask_block > 0 and self.grid % a.mask_block == 0, 'mask_block',
               f'a divisor of the {self.grid}x{self.grid} patch grid'),
              (vision.get('pool', 'cls') == 'cls', 'model.pool',
               "'cls' (the heads read the class token)"),
              (not config.data.get('canvas_size'), 'data.canvas_size',
               '0 (colour augmentation follows the crops, on the host)')]
    for ok, key, want in checks:
      if not ok:
        outside = {'model.pool': vision.get('pool'),
                   'data.canvas_size': config.data.get('canvas_size')}
        value = outside[key] if key in outside else a[key]
        name = key if '.' in key else f'aclip.{key}'
        raise ValueError(f'config.{name}={value!r}: must be {want}')

  # ---------------------------------------------------------------- data

  def transform(self):
    a = self.a
    colour = a.colour.to_dict() if hasattr(a.colour, 'to_dict') else a.colour
    return AttentiveViews(super().transform(), a.crop_scale, transforms.DEFAULT_AUGMENT['ratio'],
                          colour, self.grid)

  def example_batch(self, batch_size: int = 1) -> dict:
    m = self.config.model
    image = np.zeros((batch_size, m.image_size, m.image_size, 3), np.float32)
    return dict({name: image for name in VIEWS},
                text=np.zeros((batch_size, m.context_length), np.int32),
                boxes=np.zeros((batch_size, 3, 4), np.float32),
                noise=np.zeros((batch_size, 2, self.grid ** 2), np.float32))

  # ---------------------------------------------------------------- state

  def init(self, rng):
    batch = self.example_inputs()
    return self.model.init(rng, batch['image_1'], batch['text'])

  def init_aux(self, variables, rng):
    del rng
    return {'ema': select(variables['params'], EMA_PARTS)}  # boxed: sharded like the params

  def prepare(self, state, previous=None):
    """`previous`: CLIP params (an export) the towers start from; the EMA starts as a copy
    of the params the run starts from."""
    if previous is not None:
      state = state.with_params(overlay(state.variables()['params'], {'clip': previous}))
    ema = jax.tree_util.tree_map(jnp.copy, select(state.variables()['params'], EMA_PARTS))
    return state.replace(aux=dict(state.aux, ema=ema))

  def optim_rules(self):
    """As released: the class token decays like the weights; the patch embedding frozen."""
    rules = [dict(match='clip/visual/cls_token', decay_mult=1.0)]
    if self.a.freeze_patch_embed:
      rules.append(dict(match='clip/visual/patch_embed/.*', frozen=True))
    return rules

  # ---------------------------------------------------------------- the step

  def scale_and_bias(self, params):
    return {'logit_scale': self.clip_model.apply({'params': params['clip']},
                                                 method=lambda m: m.logit_scale())}

  def keep(self, variables, aux, batch):
    """Each view's kept patch indices [B, K] (None: unmasked) and the EMA branch's BYOL
    target, all without gradient."""
    a = self.a
    teacher = {**variables, 'params': overlay(variables['params'], aux['ema'])}
    target, inter = self.model.apply(teacher, batch['image_ema'], method=ACLIPModel.target,
                                     mutable=['batch_stats', 'intermediates'])
    target = jax.lax.stop_gradient(target)
    g = self.grid
    if a.mask == 'none':
      return (None, None), target
    if a.mask == 'random':
      noise = batch['noise'].reshape(-1, 2, g, g)
      return tuple(top_blocks(noise[:, v], a.mask_block, a.keep_ratio) for v in (0, 1)), target
    scores = jax.lax.stop_gradient(class_attention(inter['intermediates'])).reshape(-1, g, g)
    boxes = batch['boxes']
    return tuple(top_blocks(reproject(scores, boxes[:, 2], boxes[:, v]), a.mask_block,
                            a.keep_ratio) for v in (0, 1)), target

  def embed(self, variables, aux, batch, rng):
    del rng
    (keep_1, keep_2), target = self.keep(variables, aux, batch)
    images = jnp.concatenate([batch['image_1'], batch['image_2']])
    kwargs = {}
    if keep_1 is not None:
      indices = jnp.concatenate([keep_1, keep_2])
      if self.a.keep_path == 'gather':
        kwargs['keep_indices'] = indices
      else:
        mask = jnp.zeros((indices.shape[0], self.grid ** 2), bool)
        kwargs['token_keep'] = mask.at[jnp.arange(indices.shape[0])[:, None], indices].set(True)
    out, mutables = self.apply(variables, images, batch['text'], **kwargs)
    b = batch['text'].shape[0]
    emb = {'text_emb': out['text_emb'], 'byol_target': target}
    for name in ('image_emb', 'simclr', 'byol'):
      emb[f'{name}_1'], emb[f'{name}_2'] = out[name][:b], out[name][b:]
    return emb, mutables

  def loss_from_embeddings(self, variables, aux, emb, batch):
    a, w = self.a, self.a.weights
    scale = self.scale_and_bias(variables['params'])['logit_scale']
    kw = self.loss_kwargs()
    clip_1 = losses.clip_loss(emb['image_emb_1'], emb['text_emb'], scale, **kw)
    clip_2 = losses.clip_loss(emb['image_emb_2'], emb['text_emb'], scale, **kw)
    other = emb['simclr_1'] if a.simclr.released else emb['simclr_2']
    simclr = losses.simclr_loss(emb['simclr_1'], other, a.simclr.temperature)
    byol = losses.byol_loss(jnp.concatenate([emb['byol_1'], emb['byol_2']]),
                            jnp.concatenate([emb['byol_target']] * 2))
    clip = 0.5 * (clip_1 + clip_2)
    loss = w.clip * clip + w.simclr * simclr + w.byol * byol
    return loss, dict(clip_loss=clip, simclr_loss=simclr, byol_loss=byol, logit_scale=scale)

  def after_step(self, state):
    """EMA towards the updated params (the release's update at the next step's start),
    then the temperature clamped to [0, ln 100]."""
    w = ema_weight(state.step, self.config.total_steps, self.a.ema_momentum)
    params = select(state.variables()['params'], EMA_PARTS)
    ema = jax.tree_util.tree_map(lambda e, p: e + w * (p - e), state.aux['ema'], params)
    clip = dict(state.params['clip'])
    clip['log_logit_scale'] = jnp.clip(clip['log_logit_scale'], 0.0, math.log(MAX_LOGIT_SCALE))
    return state.replace(params=dict(state.params, clip=clip), aux=dict(state.aux, ema=ema))

  # ---------------------------------------------------------------- outputs

  def evaluated_params(self, state) -> dict:
    """The whole model's params, the EMA's in place of its parts when `eval_ema`."""
    params = state.variables()['params']
    return overlay(params, state.aux['ema']) if self.a.eval_ema else params

  def eval_view(self, state):
    mutables = {k: v for k, v in state.variables().items() if k != 'params'}
    return EvalView.of(self.model, self.evaluated_params(state), **mutables)

  def export(self, state):
    """The CLIP model alone (online, or the EMA when `eval_ema`)."""
    return self.clip_model, sharding.fetch(self.evaluated_params(state)['clip'])


METHOD = ACLIP
