"""The pure train step `(state, batch) -> (state, metrics)`, built once from a method.

Gradients are taken over `state.params` alone: frozen params, mutables and aux enter the
loss as constants, so XLA drops their backward pass from the compiled step.
"""
import jax
import jax.numpy as jnp
import optax

from clipjax.data import device_resize


def _split(tree, num: int):
  """[B, ...] leaves -> [num, B/num, ...] (micro-batches for accumulation)."""
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f'batch size {x.shape[0]} not divisible by grad_accum_steps={num}')
    return x.reshape(num, x.shape[0] // num, *x.shape[1:])
  return jax.tree_util.tree_map(split, tree)


def accumulated_grads(method, state, batch, rng, num_micro: int):
  """Exact full-batch gradient in `num_micro` chunks of tower activations (GradCache).

  1. embed every micro-batch without keeping activations (mutables carried through);
  2. loss and d(loss)/d(embeddings) over the whole batch, so every negative counts;
  3. per micro-batch, back-propagate its slice of that cotangent through the towers.
  Peak activation memory is one micro-batch; the result equals the unsplit gradient
  whenever the towers see each example alone (BatchNorm statistics are per micro-batch).
  """
  micro = _split(batch, num_micro)
  rows = jax.tree_util.tree_leaves(micro)[0].shape[1]

  def embed(mutables, mb):
    emb, updated = method.embed({**state.variables(), **mutables}, state.aux, mb, rng)
    for name, value in emb.items():
      if value.ndim == 0 or value.shape[0] != rows:
        raise ValueError(f'{type(method).__name__}.embed returned {name!r} of shape '
                         f'{value.shape}, not per example ([{rows}, ...]): gradient '
                         'accumulation needs per-example outputs only')
    return updated or mutables, emb

  mutables, emb = jax.lax.scan(embed, state.mutables, micro)
  emb = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), emb)
  (loss, metrics), (g_params, g_emb) = jax.value_and_grad(
      lambda p, e: method.loss_from_embeddings(state.variables(p), state.aux, e, batch),
      argnums=(0, 1), has_aux=True)(state.params, emb)

  def body(acc, xs):
    mb, g = xs
    _, vjp = jax.vjp(lambda p: method.embed(state.variables(p), state.aux, mb, rng)[0],
                     state.params)
    return jax.tree_util.tree_map(jnp.add, acc, vjp(g)[0]), None

  grads, _ = jax.lax.scan(body, g_params, (micro, _split(g_emb, num_micro)))
  return (loss, metrics, mutables), grads


def make_train_step(method, tx, learning_rate, grad_accum_steps: int = 1):
  """`learning_rate(step)`: the default schedule at a global step, for the metrics."""
  def train_step(state, batch):
    batch = device_resize.finish(batch)
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps > 1:
      (loss, metrics, mutables), grads = accumulated_grads(method, state, batch, rng,
                                                           grad_accum_steps)
    else:
      def objective(params):
        loss, metrics, mutables = method.loss(state.variables(params), state.aux, batch, rng)
        return loss, (metrics, mutables)
      (loss, (metrics, mutables)), grads = jax.value_and_grad(objective, has_aux=True)(
          state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              mutables=mutables or state.mutables)
    new_state = method.after_step(new_state)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params),
                   learning_rate=learning_rate(state.step))
    return new_state, metrics
  return train_step
