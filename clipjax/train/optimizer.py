"""One optimizer from ordered parameter-name rules (big_vision style).

Names are '/'-joined parameter paths, e.g. `visual/transformer/block_0/attn/query/kernel`.
A rule is a dict with `match` (a regex that must match the whole name) and any of:

  frozen      True: no gradient and no optimizer state (the train state keeps the
              parameter in `frozen`, so its backward pass leaves the compiled step)
  lr          peak learning rate of this rule's schedule (default `optim.lr`)
  lr_mult     multiplies that rate
  schedule    'cosine' (linear warm-up, then cosine decay; the default) or 'constant'
  warmup_steps, decay_steps, end_lr_factor
              this rule's own schedule shape; a cosine that ends before the run does
              (`decay_steps`) holds its end value afterwards, e.g. 0 for a LiT phase
  decay_mult  multiplies `optim.weight_decay` (default: 1 for tensors of two or more
              dimensions, 0 for biases, norms, temperatures, as open_clip)
  ascent      True: gradient ascent (Lagrange multipliers)
  clip        False: left out of global-norm clipping

Each property comes from the first rule that matches the name and sets it; config rules
(`optim.rules`) come before the method's own (`Method.optim_rules`), so a config can
override what a method asks for.
"""
import re

import jax
import optax

SCHEDULE_FIELDS = ('lr', 'lr_mult', 'schedule', 'warmup_steps', 'decay_steps', 'end_lr_factor')
FIELDS = ('frozen', 'decay_mult', 'ascent', 'clip') + SCHEDULE_FIELDS


def param_names(params) -> object:
  """Tree of '/'-joined path strings with the structure of `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path), params)


def _plain(rule) -> dict:
  return rule.to_dict() if hasattr(rule, 'to_dict') else dict(rule)


def compile_rules(rules) -> list:
  """[(compiled regex, {field: value})], checking every rule names known fields."""
  out = []
  for i, rule in enumerate(rules):
    rule = _plain(rule)
    if 'match' not in rule:
      raise ValueError(f'optim rule {i} {rule} has no "match" regex')
    unknown = set(rule) - set(FIELDS) - {'match'}
    if unknown:
      raise ValueError(f'optim rule {i} {rule}: unknown fields {sorted(unknown)}; known: '
                       f'{list(FIELDS)}')
    if rule.get('schedule', 'cosine') not in ('cosine', 'constant'):
      raise ValueError(f'optim rule {i} {rule}: schedule must be "cosine" or "constant"')
    try:
      pattern = re.compile(rule.pop('match'))
    except re.error as e:
      raise ValueError(f'optim rule {i}: bad regex: {e}') from None
    out.append((pattern, rule))
  return out


def resolve(name: str, rules: list) -> dict:
  """Every field set by some rule matching `name`, from the first that sets it."""
  out = {}
  for pattern, fields in rules:
    if pattern.fullmatch(name):
      for key, value in fields.items():
        out.setdefault(key, value)
  return out


def is_frozen(cfg, method_rules=()):
  """`(name, leaf) -> bool`: the parameters the rules freeze (for `state.split`)."""
  rules = compile_rules(list(cfg.get('rules') or []) + list(method_rules))
  return lambda name, leaf: bool(resolve(name, rules).get('frozen', False))


def schedule(cfg, total_steps: int, **override):
  """Position -> learning rate: linear warm-up to `lr`, cosine decay to `lr * end_lr_factor`
  at `decay_steps` (default `total_steps`), or `lr` throughout for 'constant'."""
  get = lambda key, default=None: override.get(key, cfg.get(key, default))
  lr = float(get('lr')) * float(override.get('lr_mult', 1.0))
  if override.get('schedule', 'cosine') == 'constant':
    return optax.constant_schedule(lr)
  warmup = int(get('warmup_steps', 0))
  decay = int(get('decay_steps', 0) or total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(decay, warmup + 1),
      end_value=lr * float(get('end_lr_factor', 0.0)))


def _decayed_weights(rates):
  """Decoupled weight decay with a rate per parameter (0: none); inside
  `optax.multi_transform` other groups' leaves arrive as `MaskedNode`s."""
  def update(updates, state, params):
    skip = lambda x: isinstance(x, optax.MaskedNode)
    return jax.tree_util.tree_map(lambda u, p, r: u if skip(u) or not r else u + r * p,
                                  updates, params, rates, is_leaf=skip), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, params, total_steps: int, *, method_rules=(), offset: int = 0):
  """AdamW over the trainable `params` (frozen ones are not in the tree) with the rules'
  per-parameter schedules, decay, ascent and global-norm clipping.

  `offset`: the schedule position of this optimizer's first update (a fresh optimizer
  after a mid-run restructure goes on where the schedule was).
  Returns (optax transformation, the default schedule of the position).
  """
  rules = compile_rules(list(cfg.get('rules') or []) + list(method_rules))
  names = param_names(params)
  setting = lambda name: resolve(name, rules)
  if any(setting(n).get('frozen') for n in jax.tree_util.tree_leaves(names)):
    raise ValueError('make_optimizer got frozen parameters; split them off first')
  base = schedule(cfg, total_steps)
  groups = {}  # schedule fields -> label: one Adam per distinct schedule

  def label(name):
    fields = tuple(sorted((k, v) for k, v in setting(name).items() if k in SCHEDULE_FIELDS))
    return groups.setdefault(fields, f'group_{len(groups)}')

  def rate(name, leaf):
    mult = setting(name).get('decay_mult', 1.0 if leaf.ndim >= 2 else 0.0)
    return float(cfg.weight_decay) * float(mult)

  labels = jax.tree_util.tree_map(label, names)
  rates = jax.tree_util.tree_map(rate, names, params)

  def transform(fields):
    sched = schedule(cfg, total_steps, **dict(fields)) if fields else base
    local = (lambda count: sched(count + offset)) if offset else sched
    return optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                       _decayed_weights(rates), optax.scale_by_learning_rate(local))

  if len(groups) == 1:
    tx = transform(next(iter(groups)))
  else:
    tx = optax.multi_transform({name: transform(f) for f, name in groups.items()}, labels)
  clip_mask = jax.tree_util.tree_map(lambda n: bool(setting(n).get('clip', True)), names)
  ascent_mask = jax.tree_util.tree_map(lambda n: bool(setting(n).get('ascent', False)), names)
  steps = []
  if any(jax.tree_util.tree_leaves(ascent_mask)):
    steps.append(optax.masked(optax.scale(-1.0), ascent_mask))
  if not cfg.get('grad_clip'):
    # Plain clipping's state is empty too: a run resumes with clipping switched on or off.
    steps.append(optax.identity())
  elif all(jax.tree_util.tree_leaves(clip_mask)):
    steps.append(optax.clip_by_global_norm(cfg.grad_clip))
  else:
    steps.append(optax.masked(optax.clip_by_global_norm(cfg.grad_clip), clip_mask))
  return optax.chain(*steps, tx), base
