"""The train state: one pytree that is jitted, sharded, donated and checkpointed whole."""
from typing import Any

import flax.struct
import jax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  aux: Any       # method state without gradients: EMA, teachers, prototypes, masks
  rng: jax.Array
