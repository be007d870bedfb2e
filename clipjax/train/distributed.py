"""Multi-controller start-up: `jax.distributed.initialize()` only when the launcher says so."""
import os

import jax

# Variables set by our launch scripts, SLURM, or a TPU pod runtime.
_MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES',
                     'MEGASCALE_COORDINATOR_ADDRESS')


def initialize() -> None:
  if os.environ.get('SLURM_NTASKS', '1') == '1' and not any(
      os.environ.get(k) for k in _MULTIPROCESS_ENV if k != 'SLURM_NTASKS'):
    return
  jax.distributed.initialize()
