"""Orbax checkpoints of the whole train state, the data iterator position, and the run's
record of model changes (restructures), which says what model the state is for.

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

  def save(self, step: int, state, data_state, run: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        run=ocp.args.JsonSave(run)))

  def restore_run(self, step: int) -> dict:
    """The run record saved with `step` (read before the state: it says which model)."""
    return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']

  def restore(self, abstract_state, step: int):
    """(state, data position) onto the shardings carried by `abstract_state` (any mesh,
    any device count)."""
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
