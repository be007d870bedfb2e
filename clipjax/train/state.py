"""The train state: one pytree that is jitted, sharded, donated and checkpointed whole."""
from typing import Any

import flax.struct
import jax
import numpy as np

from clipjax import sharding


class TrainState(flax.struct.PyTreeNode):
  """`params` are what the optimizer trains; `frozen` the model's other parameters (no
  gradient, no optimizer state: the optimizer rules' `frozen`); `mutables` the model's
  non-parameter collections that its forward updates (BatchNorm `batch_stats`); `aux`
  the method's own state besides the model (EMA copies, teachers, prototypes)."""
  step: jax.Array
  params: Any
  frozen: Any
  mutables: Any
  aux: Any
  opt_state: Any
  rng: jax.Array

  def variables(self, params=None) -> dict:
    """Flax variables of the model: trainable and frozen params merged, plus mutables."""
    params = self.params if params is None else params
    return {'params': merge(params, self.frozen), **self.mutables}

  def with_params(self, params) -> 'TrainState':
    """`params` (the whole model's, host or device arrays) put into `params` and `frozen`
    as this state splits them, on their dtypes and shardings."""
    return self.replace(params=sharding.place_like(take(params, self.params), self.params),
                        frozen=sharding.place_like(take(params, self.frozen), self.frozen))


def split(tree: dict, is_frozen) -> tuple:
  """Nested dict -> (kept, frozen) nested dicts by `is_frozen(path_name, leaf)`; subtrees
  left empty are dropped, so either side holds only its own leaves."""
  kept, frozen = {}, {}
  for key, value in tree.items():
    if isinstance(value, dict):
      a, b = split(value, lambda name, leaf, k=key: is_frozen(f'{k}/{name}', leaf))
      if a:
        kept[key] = a
      if b:
        frozen[key] = b
    elif is_frozen(str(key), value):
      frozen[key] = value
    else:
      kept[key] = value
  return kept, frozen


def merge(a: dict, b: dict) -> dict:
  """The union of two nested dicts with disjoint leaves (inverse of `split`)."""
  out = dict(a)
  for key, value in b.items():
    if key in out:
      if not (isinstance(out[key], dict) and isinstance(value, dict)):
        raise ValueError(f'merge: {key!r} is a leaf on both sides')
      out[key] = merge(out[key], value)
    else:
      out[key] = value
  return out


def take(tree: dict, like: dict, path: str = '') -> dict:
  """The leaves of `tree` at the paths of `like`, checking that their shapes agree."""
  out = {}
  for key, want in like.items():
    name = f'{path}/{key}' if path else str(key)
    if key not in tree:
      raise KeyError(f'no parameter {name!r} (have {sorted(tree)} under {path or "the root"!r})')
    if isinstance(want, dict):
      out[key] = take(tree[key], want, name)
    else:
      if np.shape(tree[key]) != tuple(want.shape):
        raise ValueError(f'parameter {name!r} has shape {np.shape(tree[key])}, the model '
                         f'wants {tuple(want.shape)}')
      out[key] = tree[key]
  return out
