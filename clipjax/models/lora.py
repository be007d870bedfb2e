"""LoRA (Hu et al. 2021) for any Flax model's parameters, chosen by name rules.

The model is left as it is: adapters live in their own tree beside the frozen params, and
`merge` returns params with W + (alpha / rank) * A @ B in place of every adapted kernel, so
`model.apply(merge(frozen, adapters, ...))` is the adapted model and gradients reach the
adapters only. Merging costs one rank-r product per kernel per step (nothing beside a
decoder's forward) but materialises each adapted kernel, and in the backward pass its
gradient, at full size, one layer's worth at a time under XLA's scheduling at best: for a
7B model shard the frozen params (fsdp) rather than replicate them.

A rule is `(regex, in_axes)`: a kernel whose '/'-joined name matches is read as a matrix
[prod(shape[:in_axes]), prod(shape[in_axes:])] (DenseGeneral kernels keep heads on their
own axes: a query kernel [embed, heads, dim] has one input axis, an output kernel
[heads, dim, embed] two). The first matching rule decides. A starts uniform in
+-1/sqrt(fan_in) and B at zero (as peft), so the adapted model starts equal to the base.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np


def _compile(rules) -> list:
  compiled = []
  for rule in rules:
    pattern, in_axes = rule
    if int(in_axes) < 1:
      raise ValueError(f'LoRA rule {rule!r}: in_axes must be >= 1')
    compiled.append((re.compile(pattern), int(in_axes)))
  return compiled


def _adapted(params, rules) -> dict:
  """{path tuple: in_axes} of the kernels the rules select."""
  rules = _compile(rules)
  chosen = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    for pattern, in_axes in rules:
      if pattern.fullmatch(name):
        if leaf.ndim <= in_axes:
          raise ValueError(f'LoRA rule {pattern.pattern!r} selects {name} of shape '
                           f'{leaf.shape}, which has no output axes after {in_axes} input axes')
        chosen[tuple(getattr(k, 'key', k) for k in path)] = in_axes
        break
  if not chosen:
    raise ValueError(f'LoRA rules {[p.pattern for p, _ in rules]} select no parameter')
  return chosen


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def init(params, rules, rank: int, rng) -> dict:
  """Adapters for the kernels `rules` select: a tree mirroring their paths, each leaf
  {'a': [fan_in, rank], 'b': [rank, fan_out]} in float32."""
  if rank < 1:
    raise ValueError(f'LoRA rank must be >= 1, got {rank}')
  adapters = {}
  chosen = _adapted(params, rules)
  for i, (path, in_axes) in enumerate(sorted(chosen.items())):
    shape = _get(params, path).shape
    fan_in, fan_out = math.prod(shape[:in_axes]), math.prod(shape[in_axes:])
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32, -bound, bound)
    _set(adapters, path, {'a': a, 'b': jnp.zeros((rank, fan_out), jnp.float32)})
  return adapters


def merge(params, adapters, scale: float):
  """`params` with kernel + scale * (a @ b) wherever `adapters` has an entry."""
  def walk(p, a):
    if isinstance(a, dict) and set(a) == {'a', 'b'} and not isinstance(p, dict):
      delta = (a['a'] @ a['b']).reshape(p.shape)
      return (p.astype(jnp.float32) + scale * delta).astype(p.dtype)
    missing = set(a) - set(p)
    if missing:
      raise ValueError(f'LoRA adapters for {sorted(missing)}, which the params do not have')
    return {k: walk(v, a[k]) if k in a else v for k, v in p.items()}
  return walk(params, adapters)


def count(adapters) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(adapters)))
