"""TinyCLIP automatic weight inheritance: hard-concrete L0 masks, the sparsity Lagrangian,
and the fold-and-prune to a dense smaller model (Cream/TinyCLIP `l0module.py`, CoFi).

Per tower, three mask groups (log-alphas, initialised to 10, i.e. mask ~ 1):
  hidden [D]        residual width, shared by all layers: embeddings, every LayerNorm
                    (normalised over the kept dims only), attention and MLP outputs;
  heads [L, H]      attention heads, applied to head outputs before `out`;
  intermediate [L, I]  MLP neurons, applied after the activation.
Training samples one mask per step for the whole batch; at prune time the masks become
deterministic (`deterministic`), their soft values are folded into the weights and the zero
rows and columns removed (`prune`). Pruned layers keep their own head and neuron counts;
`pruned_sizes` gives the tower spec (`layer_heads`, `layer_mlp`) under which `CLIPModel`
runs the result. The masks are applied by the real towers (`CLIPModel(..., masks=...)`,
clipjax/models/layers.py).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

LIMIT_A, LIMIT_B, EPS = -0.1, 1.1, 1e-6
BETA = 2.0 / 3.0          # hard-concrete temperature
MAGIC = 0.8               # deterministic soft mask: sigmoid(loga / beta * 0.8)
INIT_LOGA = 10.0
LOGA_RANGE = (math.log(1e-2), math.log(1e2))
INIT_LAMBDA = 10.0


# ------------------------------------------------------------------ masks and sparsity

def tower_dims(params, tower: str) -> dict:
  """(width D, layers L, heads H, mlp width I) of a tower's (unpruned) params."""
  t = params[tower]['transformer']
  blocks = sorted((k for k in t), key=lambda k: int(k.split('_')[1]))
  d, h, _ = t[blocks[0]]['attn']['query']['kernel'].shape
  return dict(width=d, layers=len(blocks), heads=h,
              mlp=t[blocks[0]]['mlp']['fc1']['kernel'].shape[1])


def init_logas(dims: dict) -> dict:
  full = lambda *s: jnp.full(s, INIT_LOGA, jnp.float32)
  return dict(hidden=full(dims['width']), heads=full(dims['layers'], dims['heads']),
              intermediate=full(dims['layers'], dims['mlp']))


def clamp(logas):
  """After every step (official `constrain_parameters`): loga in [ln 0.01, ln 100]."""
  return jax.tree_util.tree_map(lambda a: jnp.clip(a, *LOGA_RANGE), logas)


def sample(logas, rng):
  """One hard-concrete sample per mask entry, shared by the whole batch."""
  leaves, treedef = jax.tree_util.tree_flatten(logas)
  rngs = jax.random.split(rng, len(leaves))
  out = []
  for a, r in zip(leaves, rngs):
    u = jax.random.uniform(r, a.shape, minval=EPS, maxval=1 - EPS)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log(1 - u) + a) / BETA)
    out.append(jnp.clip(s * (LIMIT_B - LIMIT_A) + LIMIT_A, 0.0, 1.0))
  return jax.tree_util.tree_unflatten(treedef, out)


def score(loga):
  """P(z > 0) under the stretched hard-concrete distribution."""
  xn = (0.0 - LIMIT_A) / (LIMIT_B - LIMIT_A)
  cdf = jax.nn.sigmoid(math.log(xn / (1 - xn)) * BETA - loga)
  return 1.0 - jnp.clip(cdf, EPS, 1 - EPS)


def prunable_size(dims) -> int:
  d, l, i = dims['width'], dims['layers'], dims['mlp']
  return l * (4 * d * d + 4 * d) + l * (2 * d * i + d + i)


def expected_remaining(logas, dims):
  """Expected kept prunable parameters (official `get_num_parameters_and_constraint`)."""
  d = dims['width']
  per_head = (4 * d * d + 4 * d) // dims['heads']
  hidden = jnp.sum(score(logas['hidden']))
  heads = jnp.sum(score(logas['heads'])) * hidden * per_head / d
  return heads + 2 * jnp.sum(score(logas['intermediate'])) * hidden


def expected_sparsity(masks: dict, dims: dict):
  """Joint over towers (`--total-loss-flag`): 1 - sum remaining / sum prunable."""
  kept = sum(expected_remaining(masks[t], dims[t]) for t in masks)
  return 1.0 - kept / sum(prunable_size(dims[t]) for t in masks)


def target_sparsity(step, start: float, target: float, warmup: int):
  return start + (target - start) * jnp.minimum(1.0, step / max(warmup, 1))


def lagrangian(expected, target, lambdas):
  """One-sided: only too little sparsity is penalised. The multipliers are trained by
  gradient ascent (an optimizer rule), so they grow while the constraint is violated."""
  gap = jnp.maximum(target - expected, 0.0)
  return lambdas['lambda_1'] * gap + lambdas['lambda_2'] * gap ** 2


def deterministic(loga):
  """Eval-mode mask (official `_deterministic_z`): soft values, with the
  round(size - sum P(z>0)) smallest set to 0, per row for [L, N] groups."""
  loga = np.asarray(loga, np.float64)
  if loga.ndim == 2:
    return np.stack([deterministic(row) for row in loga])
  soft = 1.0 / (1.0 + np.exp(-loga / BETA * MAGIC))
  xn = (0.0 - LIMIT_A) / (LIMIT_B - LIMIT_A)
  cdf = np.clip(1.0 / (1.0 + np.exp(-(math.log(xn / (1 - xn)) * BETA - loga))), EPS, 1 - EPS)
  zeros = int(round(loga.size - np.sum(1.0 - cdf)))
  if zeros > 0:
    soft[np.argsort(soft, kind='stable')[:zeros]] = 0.0
  return soft.astype(np.float32)


def deterministic_masks(masks):
  return {t: {k: deterministic(v) for k, v in m.items()} for t, m in masks.items()}


# ------------------------------------------------------------------ fold and prune

def prune(params, masks):
  """Dense params with the deterministic masks' soft values folded in and zeros removed.

  Exact: the model on `pruned` equals the masked model on `params`. (The
  official prune also scales `proj`'s rows by the hidden mask, a ~0.4% change of the
  output that the masked forward never applied; we keep outputs identical.)
  """
  out = {k: v for k, v in params.items() if k not in masks}
  for tower, m in masks.items():
    p = jax.tree_util.tree_map(np.asarray, params[tower])
    z = np.asarray(m['hidden'])
    kd = np.nonzero(z)[0]
    q = {}
    ln = lambda l: {'scale': l['scale'][kd], 'bias': l['bias'][kd]}
    if tower == 'visual':
      q['patch_embed'] = {'kernel': (p['patch_embed']['kernel'] * z)[..., kd]}
      q['pos_embed'] = (p['pos_embed'] * z)[:, kd]
      q['cls_token'] = (p['cls_token'] * z)[kd]
      q['ln_pre'], q['ln_post'] = ln(p['ln_pre']), ln(p['ln_post'])
    else:
      q['token_embed'] = (p['token_embed'] * z)[:, kd]
      q['pos_embed'] = (p['pos_embed'] * z)[:, kd]
      q['ln_final'] = ln(p['ln_final'])
    q['proj'] = p['proj'][kd]
    blocks = {}
    for i in range(len(p['transformer'])):
      b = p['transformer'][f'block_{i}']
      zh, zi = np.asarray(m['heads'][i]), np.asarray(m['intermediate'][i])
      kh, ki = np.nonzero(zh)[0], np.nonzero(zi)[0]
      attn = {n: {'kernel': b['attn'][n]['kernel'][kd][:, kh], 'bias': b['attn'][n]['bias'][kh]}
              for n in ('query', 'key', 'value')}
      out_k = b['attn']['out']['kernel'] * zh[:, None, None] * z
      attn['out'] = {'kernel': out_k[kh][..., kd], 'bias': (b['attn']['out']['bias'] * z)[kd]}
      mlp = {'fc1': {'kernel': b['mlp']['fc1']['kernel'][kd][:, ki],
                     'bias': b['mlp']['fc1']['bias'][ki]},
             'fc2': {'kernel': (b['mlp']['fc2']['kernel'] * zi[:, None] * z)[ki][:, kd],
                     'bias': (b['mlp']['fc2']['bias'] * z)[kd]}}
      blocks[f'block_{i}'] = {'ln_1': ln(b['ln_1']), 'ln_2': ln(b['ln_2']), 'attn': attn, 'mlp': mlp}
    q['transformer'] = blocks
    out[tower] = q
  return out


def pruned_sizes(pruned, tower: str) -> dict:
  """Tower spec entries of a pruned tower: residual width, head width, per-layer heads and
  MLP neurons (`clipjax.models.layers.Transformer`)."""
  t = pruned[tower]
  blocks = [t['transformer'][f'block_{i}'] for i in range(len(t['transformer']))]
  query = [np.shape(b['attn']['query']['kernel']) for b in blocks]
  return dict(width=int(np.shape(t['proj'])[0]), head_dim=int(query[0][2]),
              layer_heads=[int(q[1]) for q in query],
              layer_mlp=[int(np.shape(b['mlp']['fc1']['kernel'])[1]) for b in blocks])


def prunable_count(params, tower: str) -> int:
  """Parameters of a (possibly pruned) tower's blocks outside LayerNorms: what the
  sparsity target is measured on (LayerNorms are ignored, as officially)."""
  total = 0
  for b in params[tower]['transformer'].values():
    for part in ('attn', 'mlp'):
      total += sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(b[part]))
  return total


# ------------------------------------------------------------------ next stage

def expand(pruned, full, init_loga: float = INIT_LOGA, pruned_loga: float = -INIT_LOGA):
  """A pruned student put back into the full-size masked architecture for the next stage
  (official `load_pruned_model`): its weights fill the leading slices of `full`'s shapes
  (zeros elsewhere), and the mask logits of the removed hidden dims, heads and neurons
  start at `pruned_loga` (clamped to -4.6 after the first step), the kept ones at
  `init_loga`. Returns (params, {tower: logas}); other top-level entries pass through.
  """
  out = {k: v for k, v in pruned.items()}
  logas = {}
  for tower in ('visual', 'textual'):
    if tower not in pruned:
      continue
    flat_p = _flat(pruned[tower])
    flat_f = _flat(full[tower])
    placed = {}
    for name, like in flat_f.items():
      value = np.zeros(np.shape(like), np.asarray(flat_p[name]).dtype)
      value[tuple(slice(0, n) for n in np.shape(flat_p[name]))] = flat_p[name]
      placed[name] = value
    out[tower] = _unflat(placed)
    dims = tower_dims(full, tower)
    kept_hidden = np.shape(pruned[tower]['proj'])[0]
    blocks = pruned[tower]['transformer']
    pick = lambda n, size: np.where(np.arange(size) < n, init_loga, pruned_loga).astype(np.float32)
    logas[tower] = dict(
        hidden=pick(kept_hidden, dims['width']),
        heads=np.stack([pick(np.shape(blocks[f'block_{i}']['attn']['query']['kernel'])[1],
                             dims['heads']) for i in range(dims['layers'])]),
        intermediate=np.stack([pick(np.shape(blocks[f'block_{i}']['mlp']['fc1']['kernel'])[1],
                                    dims['mlp']) for i in range(dims['layers'])]))
  return out, logas


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


def _unflat(flat):
  return traverse_util.unflatten_dict(flat, sep='/')
