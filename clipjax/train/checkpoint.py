"""Orbax checkpoints of the whole train state plus the data iterator position.

Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-write leaves the previous checkpoint as the latest one.
"""
import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory, keep: int = 3):
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_state) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, abstract_state, step=None):
    """Restores onto the shardings carried by `abstract_state` (any mesh, any device count)."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree, shardings):
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
