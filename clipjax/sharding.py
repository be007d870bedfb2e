"""Device mesh, logical-axis rules and global batches: the one place sharding is decided.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`); config rules map
them to the mesh axes `data`, `fsdp`, `tensor` (MaxText style). The batch is split over
`data` x `fsdp`. Activations carry names too (`batch`, `length`, `act_embed`: `constrain`
inside `with_rules`): without them the partitioner copies a weight's fsdp split onto the
activations and every device holds the whole batch.
"""
import contextvars
import functools
import logging
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# Default logical -> mesh rules. FSDP shards the model width; tensor parallelism shards
# MLP hidden units, attention heads and the vocabulary.
DEFAULT_RULES = (
    ('batch', BATCH_AXES),
    ('length', None),
    ('act_embed', None),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple:
  """Resolves one -1 entry to 'the rest of the devices' and checks the product."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'mesh: {num_devices} devices not divisible by fixed axes product {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs '
                     f'{int(np.prod(sizes))} devices, have {num_devices}')
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1,
              devices=None) -> Mesh:
  """Auto-sharded (GSPMD) mesh whose device order follows the interconnect.

  `dcn_data` > 1 splits the `data` axis into that many slices (TPU slices, or processes on
  GPU/CPU) joined by the data-centre network, so only the data-parallel gradient reduction
  crosses it while `fsdp` and `tensor` collectives stay on ICI/NVLink.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  auto = (AxisType.Auto,) * 3
  if dcn_data == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  if shape[0] % dcn_data:
    raise ValueError(f'mesh.dcn_data={dcn_data} must divide the data axis size {shape[0]}')
  ici = (shape[0] // dcn_data, shape[1], shape[2])
  grid = mesh_utils.create_hybrid_device_mesh(
      ici, (dcn_data, 1, 1), devices, process_is_granule=devices[0].platform != 'tpu')
  return Mesh(grid, MESH_AXES, axis_types=auto)


def rules_from_config(rules) -> tuple:
  """Config rules arrive as lists (ml_collections); flax wants tuples of (name, axes)."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def fit_to_shape(s: NamedSharding, shape) -> NamedSharding:
  """`s` with every dimension its mesh axes do not divide replicated instead: a pruned
  width of 63 over fsdp=2 is a layout question, not a reason for the model not to run."""
  spec = tuple(s.spec) + (None,) * (len(shape) - len(s.spec))
  size = lambda axes: int(np.prod([s.mesh.shape[a] for a in
                                   (axes if isinstance(axes, tuple) else (axes,))]))
  fitted = tuple(None if axes is not None and dim % size(axes) else axes
                 for axes, dim in zip(spec, shape))
  return s if fitted == spec else NamedSharding(s.mesh, P(*fitted))


_ACTIVATIONS = contextvars.ContextVar('clipjax_activation_rules', default=None)


def with_rules(fn, mesh: Mesh, rules: Sequence):
  """`fn` tracing with the mesh and the logical rules in effect for `constrain`, so the
  models' activation constraints apply inside `jax.jit`. (Flax's own rules context also
  constrains the parameter initialisers it shape-checks during `apply`.)"""
  rules = rules_from_config(rules)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    token = _ACTIVATIONS.set((mesh, rules))
    try:
      return fn(*args, **kwargs)
    finally:
      _ACTIVATIONS.reset(token)
  return wrapped


def constrain(x, names: Sequence):
  """`x` constrained to the mesh axes its logical `names` map to; a no-op outside
  `with_rules` (single-device use, evaluation of a bare model)."""
  context = _ACTIVATIONS.get()
  if context is None:
    return x
  mesh, rules = context
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(names), rules)))


def logical_to_sharding(logical_tree, mesh: Mesh, rules: Sequence) -> object:
  """Boxed (nn.Partitioned) abstract variables -> tree of NamedSharding (`fit_to_shape`);
  unboxed leaves are replicated. Logs which parameters lost a sharded dimension that way
  (they cost more memory)."""
  specs = nn.get_partition_spec(logical_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules_from_config(rules))
  fitted = jax.tree_util.tree_map(lambda s, x: fit_to_shape(s, x.shape), shardings,
                                  nn.unbox(logical_tree))
  changed = [f'{jax.tree_util.keystr(path)} {tuple(x.shape)} {s.spec}->{f.spec}'
             for (path, x), s, f in zip(jax.tree_util.tree_leaves_with_path(nn.unbox(logical_tree)),
                                        jax.tree_util.tree_leaves(shardings),
                                        jax.tree_util.tree_leaves(fitted)) if s is not f]
  if changed:
    log.warning('%d parameters replicate dimensions the mesh does not divide, e.g. %s',
                len(changed), '; '.join(changed[:3]))
  return fitted


def like_params(tree, params, param_shardings, default):
  """Shardings for optimizer state: a leaf whose key path ends with a parameter's path and
  has its shape (Adam moments, also under masks) shares that parameter's sharding."""
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(param_shardings)):
    by_path[tuple(path)] = (p.shape, s)

  def pick(path, leaf):
    for start in range(len(path)):
      shape, s = by_path.get(tuple(path[start:]), (None, None))
      if s is not None and shape == leaf.shape:
        return s
    return default
  return jax.tree_util.tree_map_with_path(pick, tree)


def place_like(values, like):
  """`values` with the dtypes and shardings of the tree `like` (abstract or real arrays).
  Device arrays already of the right dtype are only re-placed, never copied to the host."""
  def place(v, l):
    if not (isinstance(v, jax.Array) and v.dtype == l.dtype):
      v = np.asarray(v).astype(l.dtype)
    return jax.device_put(v, getattr(l, 'sharding', None))
  return jax.tree_util.tree_map(place, nn.unbox(values), like)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Each process's numpy rows -> one global jax.Array per key, split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def fetch(tree):
  """Host numpy copy of a (possibly sharded over several processes) tree, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
