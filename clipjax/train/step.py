"""The pure train step `(state, batch) -> (state, metrics)`, built once from a method."""
import jax
import jax.numpy as jnp
import optax


def _split(tree, num: int):
  """[B, ...] leaves -> [num, B/num, ...] (micro-batches for accumulation)."""
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f'batch size {x.shape[0]} not divisible by grad_accum_steps={num}')
    return x.reshape(num, x.shape[0] // num, *x.shape[1:])
  return jax.tree_util.tree_map(split, tree)


def accumulated_grads(method, params, aux, batch, rng, num_micro: int):
  """Exact full-batch gradient in `num_micro` chunks of tower activations (GradCache).

  1. embed every micro-batch without keeping activations;
  2. loss and d(loss)/d(embeddings) over the whole batch, so every negative counts;
  3. per micro-batch, back-propagate its slice of that cotangent through the towers.
  Peak activation memory is one micro-batch; the result equals the unsplit gradient.
  """
  micro = _split(batch, num_micro)
  rngs = jax.random.split(rng, num_micro)
  emb = jax.lax.map(lambda xs: method.embed(params, xs[0], xs[1]), (micro, rngs))
  emb = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]) if x.ndim > 1 else x, emb)
  flat_emb = {k: v for k, v in emb.items() if v.ndim >= 1 and v.shape[0] == batch['image'].shape[0]}
  (loss, metrics), (g_params, g_emb) = jax.value_and_grad(
      lambda p, e: method.loss_from_embeddings(p, e, batch), argnums=(0, 1), has_aux=True)(
          params, flat_emb)
  g_micro = _split(g_emb, num_micro)

  def body(acc, xs):
    mb, r, g = xs
    _, vjp = jax.vjp(lambda p: {k: method.embed(p, mb, r)[k] for k in g}, params)
    return jax.tree_util.tree_map(jnp.add, acc, vjp(g)[0]), None

  grads, _ = jax.lax.scan(body, g_params, (micro, rngs, g_micro))
  return (loss, metrics), grads


def make_train_step(method, tx, lr_schedule, grad_accum_steps: int = 1):
  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps > 1:
      (loss, metrics), grads = accumulated_grads(
          method, state.params, state.aux, batch, rng, grad_accum_steps)
    else:
      (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(
          state.params, state.aux, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    new_state = method.after_step(new_state)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params),
                   learning_rate=lr_schedule(state.step))
    return new_state, metrics
  return train_step
