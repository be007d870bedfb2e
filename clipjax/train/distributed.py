"""Multi-controller start-up: one process per host joins a `jax.distributed` process group.

A single-process run needs none of it. The group is described by, first match wins:
1. explicit arguments (`--coordinator_address --num_processes --process_id` in main.py);
2. the variables our launchers export: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
   JAX_PROCESS_ID (launch/local_multiprocess.sh, launch/slurm_gpu.sbatch);
3. a cluster JAX detects by itself: SLURM (`srun` with more than one task), Open MPI,
   a multi-host TPU slice (TPU_WORKER_HOSTNAMES with several hosts, multislice
   MEGASCALE_COORDINATOR_ADDRESS), or CLIPJAX_DISTRIBUTED=1 (launch/tpu_pod.sh: JAX reads
   the slice from the TPU VM metadata server).

Failure is bounded: connecting gives up after `init_timeout` seconds (CLIPJAX_INIT_TIMEOUT),
and once running, a process whose peers miss heartbeats for `heartbeat_timeout` seconds
(CLIPJAX_HEARTBEAT_TIMEOUT) is terminated by the JAX coordination service, so a dead peer
or coordinator never leaves the others hanging in a collective.
"""
import collections
import json
import logging
import os
import signal
import socket
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

DEFAULT_INIT_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 100


class DistributedInitError(RuntimeError):
  pass


def _env_int(env, key):
  value = env.get(key)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedInitError(f'Environment variable {key}={value!r} is not an integer') from None


def _slurm_tasks(env):
  """Tasks of the current `srun` step (None outside one: the batch script itself)."""
  if 'SLURM_STEP_NODELIST' not in env or 'SLURM_PROCID' not in env:
    return None
  return _env_int(env, 'SLURM_STEP_NUM_TASKS') or _env_int(env, 'SLURM_NTASKS')


def resolve(coordinator_address=None, num_processes=None, process_id=None, env=None):
  """-> kwargs for `jax.distributed.initialize` (empty: let JAX detect the cluster), or None
  for a single-process run. Raises DistributedInitError for a half-specified group."""
  env = os.environ if env is None else env
  source = 'flags --coordinator_address/--num_processes/--process_id'
  given = dict(coordinator_address=coordinator_address, num_processes=num_processes,
               process_id=process_id)
  if all(v is None for v in given.values()):
    source = 'environment JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID'
    given = dict(coordinator_address=env.get('JAX_COORDINATOR_ADDRESS') or None,
                 num_processes=_env_int(env, 'JAX_NUM_PROCESSES'),
                 process_id=_env_int(env, 'JAX_PROCESS_ID'))
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    # Under SLURM or on a TPU pod JAX fills in the rest (e.g. a fixed coordinator address).
    if missing and not _cluster(env):
      raise DistributedInitError(f'{source}: {", ".join(missing)} missing (got {given}); '
                                 'give all three, or none for a single-process run')
    if given['num_processes'] is not None and given['num_processes'] < 1:
      raise DistributedInitError(f'{source}: num_processes={given["num_processes"]} < 1')
    if given['num_processes'] == 1 and given['process_id'] in (0, None):
      return None
    return {k: v for k, v in given.items() if v is not None}
  return {} if _cluster(env) else None


def _cluster(env) -> bool:
  """A multi-process cluster JAX's own detection (jax._src.clusters) can describe."""
  tasks = _slurm_tasks(env)
  if tasks is not None:
    return tasks > 1
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  return bool(env.get('CLIPJAX_DISTRIBUTED') == '1' or env.get('OMPI_MCA_orte_hnp_uri')
              or env.get('MEGASCALE_COORDINATOR_ADDRESS') or ',' in hosts)


def initialize(coordinator_address=None, num_processes=None, process_id=None, *,
               init_timeout=None, heartbeat_timeout=None) -> bool:
  """Joins the process group if there is one (see module doc); True if it did.

  Must run before anything touches a JAX backend (jax.devices(), any computation).
  """
  kwargs = resolve(coordinator_address, num_processes, process_id)
  if kwargs is None:
    return False
  init_timeout = init_timeout or _env_int(os.environ, 'CLIPJAX_INIT_TIMEOUT') or DEFAULT_INIT_TIMEOUT
  heartbeat_timeout = (heartbeat_timeout or _env_int(os.environ, 'CLIPJAX_HEARTBEAT_TIMEOUT')
                       or DEFAULT_HEARTBEAT_TIMEOUT)
  where = ', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'detected from the cluster environment'
  log.info('Joining process group (%s); waiting up to %ds for all processes', where, init_timeout)
  if kwargs.get('process_id') and kwargs.get('coordinator_address'):
    # JAX aborts the process without a Python error when the coordinator cannot be reached.
    init_timeout -= wait_for_coordinator(kwargs['coordinator_address'], init_timeout,
                                         kwargs['process_id'])
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=init_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout,
                               shutdown_timeout_seconds=heartbeat_timeout)
  except Exception as e:  # XlaRuntimeError, ValueError from cluster detection, ...
    raise DistributedInitError(
        f'jax.distributed.initialize({where}) failed after at most {init_timeout}s '
        f'(CLIPJAX_INIT_TIMEOUT): {type(e).__name__}: {e}. Check that every process was '
        'started with the same coordinator address and process count, that process 0 is '
        'running, and that its port is reachable from this host.') from e
  log.info('Joined process group as process %d of %d (%s); %d local / %d global devices',
           jax.process_index(), jax.process_count(), where, jax.local_device_count(),
           jax.device_count())
  _explain_runtime_errors(jax.process_index(), jax.process_count())
  return True


def _explain_runtime_errors(index: int, count: int) -> None:
  """A collective that fails because a peer died raises deep inside XLA (e.g. 'Gloo
  all-reduce failed: Connection reset by peer'); say plainly what that means."""
  previous = sys.excepthook

  def hook(kind, value, tb):
    previous(kind, value, tb)
    if issubclass(kind, jax.errors.JaxRuntimeError):
      sys.stderr.write(
          f'clipjax: process {index} of {count} stopped because an operation across processes '
          'failed. Another process most likely died or was killed: see its log for the '
          'first error. A restart resumes from the last complete checkpoint.\n')
  sys.excepthook = hook


def wait_for_coordinator(address: str, timeout: float, process_id: int) -> int:
  """Waits until process 0's coordinator port accepts connections -> whole seconds spent."""
  host, port = address.rsplit(':', 1)
  host = host.strip('[]')
  t0 = time.monotonic()
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return int(time.monotonic() - t0)
    except OSError as e:
      if time.monotonic() - t0 > timeout:
        raise DistributedInitError(
            f'Process {process_id}: coordinator {address} (process 0) not reachable within '
            f'{timeout}s (CLIPJAX_INIT_TIMEOUT): {e}. Check that process 0 is running with the '
            'same --coordinator_address and that the port is open between hosts.') from None
      time.sleep(0.5)


class PreemptionWatch:
  """When the train loop should checkpoint and stop after a SIGTERM (preemption, a SLURM
  time limit, `kill`) or a Ctrl-C.

  One process: a handler sets a flag; a second Ctrl-C raises KeyboardInterrupt at once.
  A process group: JAX's preemption sync service takes the SIGTERM on whichever process
  gets it and names one step at which every process stops; per-process flags would stop
  processes at different steps and deadlock them in the collective checkpoint (Ctrl-C
  keeps its default there).
  """

  def __init__(self):
    self._group = jax.process_count() > 1
    self._signalled = False
    self._previous = {}
    if not self._group:  # a Python handler would hide SIGTERM from JAX's service
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, sig, _):
    if sig == signal.SIGINT and self._signalled:
      raise KeyboardInterrupt
    self._signalled = True
    if sig == signal.SIGINT:
      sys.stderr.write('\nCtrl-C: saving a checkpoint after this step, then exiting '
                       '(Ctrl-C again exits at once, without one)\n')

  def reached(self, step: int) -> bool:
    """Call once per step on every process, with the same `step`."""
    if self._group:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


def sum_counts(counts: dict) -> dict:
  """{name: int} summed over processes; each may count names the others never saw (the
  input pipeline's skip reasons), so the dicts travel as JSON bytes."""
  if jax.process_count() == 1:
    return dict(counts)
  blob = np.frombuffer(json.dumps(dict(counts)).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64)).ravel()
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  total = collections.Counter()
  for row, size in zip(multihost_utils.process_allgather(padded), sizes):
    total.update(json.loads(bytes(row[:size]).decode()))
  return dict(total)

