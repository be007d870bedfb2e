"""TinyCLIP manual weight inheritance (Cream/TinyCLIP `weight_inherit.py`).

Depth: a student tower with `d` blocks takes the teacher's blocks `[0, s, 2s, ...]`,
`s = teacher_depth // d` (12 -> 6 keeps 0,2,..,10; 12 -> 9 keeps the first 9).
Width: every tensor keeps its leading slice on every axis. Our attention kernels are
`[embed, heads, head_dim]` (and `[heads, head_dim, embed]` for `out`), so a leading slice
keeps the first heads of q, k and v separately, as the official code does after reshaping
the fused `in_proj_weight` to `[3, H, 64, D]`. No importance scores: purely positional.
"""
import re

import numpy as np
from flax import traverse_util

_BLOCK = re.compile(r'^(.*?/transformer)/block_(\d+)/(.*)$')
# The official code leaves the student's temperature at its own initialisation.
DEFAULT_SKIP = ('log_logit_scale',)


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


def depths(flat) -> dict:
  """{'visual/transformer': layers, ...} from '/'-joined parameter names."""
  out = {}
  for k in flat:
    m = _BLOCK.match(k)
    if m:
      out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)) + 1)
  return out


def layer_map(teacher_depth: int, student_depth: int) -> list:
  """Teacher block index for each student block ('interval_front')."""
  if student_depth > teacher_depth:
    raise ValueError(f'student has {student_depth} blocks, more than the source\'s {teacher_depth}')
  step = teacher_depth // student_depth
  return [i * step for i in range(student_depth)]


def source_name(name: str, maps: dict) -> str:
  m = _BLOCK.match(name)
  if not m:
    return name
  return f'{m.group(1)}/block_{maps[m.group(1)][int(m.group(2))]}/{m.group(3)}'


def inherit(source, target, skip=DEFAULT_SKIP):
  """`target` (student params) with every leaf replaced by its slice of `source`.

  source, target: nested param dicts of arrays (`target` only needs shapes and dtypes,
  except for names in `skip`, which keep the target's value). Raises naming the parameter
  when the source lacks it or is smaller along some axis.
  """
  src, tgt = _flat(source), _flat(target)
  src_depth, tgt_depth = depths(src), depths(tgt)
  maps = {}
  for tower, d in tgt_depth.items():
    if tower not in src_depth:
      raise KeyError(f'inherit: source has no {tower!r} blocks')
    maps[tower] = layer_map(src_depth[tower], d)
  out = {}
  for name, leaf in tgt.items():
    if name.split('/')[-1] in skip:
      out[name] = leaf
      continue
    sname = source_name(name, maps)
    if sname not in src:
      raise KeyError(f'inherit: source has no parameter {sname!r} (for student {name!r})')
    value = np.asarray(src[sname])
    if value.ndim != len(leaf.shape) or any(t > s for t, s in zip(leaf.shape, value.shape)):
      raise ValueError(f'inherit: {name!r} {tuple(leaf.shape)} is not a leading slice of '
                       f'source {sname!r} {value.shape}')
    out[name] = value[tuple(slice(0, n) for n in leaf.shape)].astype(leaf.dtype)
  return traverse_util.unflatten_dict(out, sep='/')
