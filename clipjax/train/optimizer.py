"""Optimizer from parameter-name rules (big_vision style): frozen, decay and lr multipliers.

Names are '/'-joined parameter paths, e.g. `visual/transformer/block_0/attn/query/kernel`.
"""
import re

import jax
import optax

# open_clip's rule: no weight decay on anything with fewer than two dimensions
# (biases, norm scales, temperature, bias, class token).
def _default_decay(name, leaf):
  del name
  return leaf.ndim >= 2


def param_names(params) -> object:
  """Tree of '/'-joined path strings with the structure of `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path), params)


def schedule(cfg, total_steps: int):
  """Linear warm-up to `lr`, then cosine decay to `lr * end_lr_factor` at `total_steps`."""
  warmup = int(cfg.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.get('end_lr_factor', 0.0))


def make_optimizer(cfg, params, total_steps: int, start_step: int = 0):
  """AdamW with global-norm clipping; `cfg.frozen` (regex) parameters get no update and no state.

  `start_step`: the global step at which this optimizer's state is created (a fresh
  optimizer after a mid-run restructure); its schedule goes on from there.
  Returns (optax transformation, learning-rate schedule of the global step).
  """
  lr = schedule(cfg, total_steps)
  local_lr = (lambda count: lr(count + start_step)) if start_step else lr
  names = param_names(params)
  frozen = re.compile(cfg.frozen) if cfg.get('frozen') else None
  no_decay = re.compile(cfg.no_decay) if cfg.get('no_decay') else None

  def decays(name, leaf):
    if no_decay is not None and no_decay.fullmatch(name):
      return False
    return _default_decay(name, leaf)

  decay_mask = jax.tree_util.tree_map(decays, names, params)
  adamw = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.get('grad_clip') else optax.identity(),
      optax.adamw(local_lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  mask=decay_mask))
  # `cfg.constant_lr`: [[regex, lr], ...]: matching parameters get their own Adam at a fixed
  # rate, no decay, no clipping (e.g. TinyCLIP's mask logits and Lagrange multipliers).
  constant = [(re.compile(p), float(r)) for p, r in (cfg.get('constant_lr') or [])]
  if frozen is None and not constant:
    return adamw, lr

  def label(n):
    if frozen is not None and frozen.fullmatch(n):
      return 'frozen'
    return next((f'constant_{i}' for i, (p, _) in enumerate(constant) if p.fullmatch(n)), 'train')

  labels = jax.tree_util.tree_map(label, names)
  if not any(l == 'train' for l in jax.tree_util.tree_leaves(labels)):
    raise ValueError(f'optim.frozen={cfg.get("frozen")!r} / optim.constant_lr leave no parameter '
                     'for the main optimizer')
  transforms = {'train': adamw, 'frozen': optax.set_to_zero()}
  transforms.update({f'constant_{i}': optax.adam(r, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
                     for i, (_, r) in enumerate(constant)})
  return optax.multi_transform(transforms, labels), lr
