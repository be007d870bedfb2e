"""Place checkpoint tensors into a Flax parameter tree, one tensor at a time.

A conversion is a table `{target path: Rule}`: which source tensors feed a target parameter
and how they are rearranged (transposes, head splits, q/k/v unpacking). `place` checks the
whole table against the checkpoint before reading anything (every target covered, every
source present, no source left unused), then reads, rearranges, checks and places each tensor
straight onto its sharding, so the host never holds more than one source tensor at a time.
"""
import dataclasses
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from clipjax.convert.io import CheckpointError, Reader


@dataclasses.dataclass(frozen=True)
class Rule:
  sources: Tuple[str, ...]
  fn: Callable = lambda x: x


def rule(*sources: str, fn: Callable = lambda x: x) -> Rule:
  return Rule(tuple(sources), fn)


def flat(tree) -> Dict[str, object]:
  return traverse_util.flatten_dict(tree, sep='/')


def unflat(flat_tree: Dict[str, object]) -> dict:
  return traverse_util.unflatten_dict(flat_tree, sep='/')


unbox = nn.meta.unbox


def abstract_params(model: nn.Module, *args, method=None) -> dict:
  """Boxed (logical axes) `ShapeDtypeStruct` tree of `model`'s params, allocating nothing."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, method=method))['params']


def mesh_shardings(target: dict, mesh, axis_rules=None) -> dict:
  """NamedSharding per parameter from its logical axes (`clipjax.sharding` rules)."""
  from clipjax import sharding  # pylint: disable=g-import-not-at-top
  return sharding.logical_to_sharding(target, mesh, axis_rules or sharding.DEFAULT_RULES)


def check_plan(reader: Reader, rules: Dict[str, Rule], target: dict,
               ignore: Sequence[str] = ()):
  """Raises naming every target without a rule, missing source and unused source tensor."""
  target = flat(target)
  problems = []
  uncovered = sorted(set(target) - set(rules))
  if uncovered:
    problems.append(f'no source for target parameters {uncovered}')
  used = {s for path in target if path in rules for s in rules[path].sources}
  missing = sorted(s for s in used if s not in reader)
  if missing:
    problems.append(f'missing tensors {missing}')
  unused = sorted(n for n in reader.keys()
                  if n not in used and not any(re.search(p, n) for p in ignore))
  if unused:
    problems.append(f'unexpected tensors (not part of the target model) {unused}')
  if problems:
    raise CheckpointError(f'{reader.path}: ' + '; '.join(problems))


def place(reader: Reader, rules: Dict[str, Rule], target: dict, shardings: Optional[dict] = None,
          ignore: Sequence[str] = (), mesh=None, axis_rules=None) -> dict:
  """Reads every target parameter through its rule; returns the (unboxed) param tree.

  target: tree (boxed or not) of arrays or `ShapeDtypeStruct`: each parameter's shape, dtype.
  shardings: optional tree (same structure) of `jax.sharding.Sharding`; or give `mesh` (and
    `axis_rules`, default `clipjax.sharding.DEFAULT_RULES`) to derive them from the boxed
    target's logical axes. Each tensor goes straight to its sharding with `jax.device_put`.
  ignore: regexps of source tensors that are allowed to stay unused (buffers, metadata).
  """
  if shardings is None and mesh is not None:
    shardings = mesh_shardings(target, mesh, axis_rules)
  target = unbox(target)
  check_plan(reader, rules, target, ignore)
  flat_target = flat(target)
  flat_shardings = flat(shardings) if shardings is not None else {}
  out = {}
  for path, spec in flat_target.items():
    r = rules[path]
    arrays = []
    for s in r.sources:
      shape, dtype = reader.shapes[s]
      if jnp.issubdtype(spec.dtype, jnp.floating) != jnp.issubdtype(dtype, jnp.floating):
        raise CheckpointError(f'{reader.path}: tensor {s!r} has dtype {dtype}, '
                              f'target {path} needs {np.dtype(spec.dtype)}')
      arrays.append(reader.read(s))
    try:
      value = np.asarray(r.fn(*arrays))
    except ValueError as e:  # A misshapen source fails its head split / q,k,v unpacking.
      raise CheckpointError(
          f'{reader.path}: tensor {", ".join(r.sources)} {[a.shape for a in arrays]} cannot be '
          f'rearranged for {path}, which needs {tuple(spec.shape)}: {e}') from None
    if value.shape != tuple(spec.shape):
      raise CheckpointError(
          f'{reader.path}: tensor {", ".join(r.sources)} {[a.shape for a in arrays]} gives shape '
          f'{value.shape} for {path}, which needs {tuple(spec.shape)}')
    del arrays
    value = value.astype(spec.dtype, copy=False)
    out[path] = jax.device_put(value, flat_shardings.get(path))
    del value
  return unflat(out)


# Rearrangements between PyTorch Linear weights [out, in] and Flax kernels.
def linear(w):
  return w.T


def split_heads_in(heads):
  """[heads*dim, in] Linear weight -> DenseGeneral kernel [in, heads, dim]."""
  return lambda w: w.T.reshape(w.shape[1], heads, -1)


def split_heads_bias(heads):
  return lambda b: b.reshape(heads, -1)


def split_heads_out(heads):
  """[out, heads*dim] Linear weight -> DenseGeneral kernel [heads, dim, out]."""
  return lambda w: w.T.reshape(heads, -1, w.shape[0])


def conv(w):
  """Conv2d weight [out, in, kh, kw] -> Flax [kh, kw, in, out]."""
  return w.transpose(2, 3, 1, 0)
