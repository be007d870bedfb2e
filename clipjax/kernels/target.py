"""Which Pallas lowering a kernel gets: compiled for the backend, or interpreted on request.

A TPU or GPU always runs compiled kernels (Mosaic TPU, Triton): a `pallas_call` that
silently fell back to the Python interpreter there would be orders of magnitude slower
and look like a working kernel. The CPU has no Pallas compiler, so there the kernels run
in interpret mode, announced once in the log. Tests ask for a layout explicitly:
`with target.use('tpu', interpret=True)` runs the TPU kernels in JAX's TPU interpreter
on the CPU, and `use('tpu', interpret=False)` lowers them for a TPU from any host.
The choice is read when a kernel is traced, so a jitted function keeps the target of its
first trace.
"""
import contextlib
import logging
import threading

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

KINDS = ('gpu', 'tpu')
_state = threading.local()
_announced = set()


@contextlib.contextmanager
def use(kind, *, interpret):
  """Kernels traced inside run `kind`'s layout (and lowering), interpreted or not."""
  if kind not in KINDS:
    raise ValueError(f'clipjax.kernels.target.use: kind={kind!r}; expected one of {KINDS}')
  previous = getattr(_state, 'forced', None)
  _state.forced = (kind, interpret)
  try:
    yield
  finally:
    _state.forced = previous


def current():
  """(kind, interpret) for a kernel traced now."""
  forced = getattr(_state, 'forced', None)
  if forced is not None:
    return forced
  backend = jax.default_backend()
  if backend in KINDS:
    return backend, False
  if backend == 'cpu':
    if backend not in _announced:
      _announced.add(backend)
      logging.warning("clipjax.kernels: the CPU has no Pallas compiler; implementation="
                      "'pallas' runs the GPU kernels in interpret mode (slow, for tests). "
                      "'chunked' is the fast path on a CPU.")
    return 'gpu', True
  raise NotImplementedError(f"clipjax.kernels: implementation='pallas' has no kernels for "
                            f"the {backend!r} backend; use 'chunked' or 'xla'")


def call_kwargs(kind, interpret, *, num_warps, num_stages, dimension_semantics):
  """`pallas_call` keywords for the target. Naming Triton's parameters also selects the
  Triton lowering on a GPU (JAX's default there, Mosaic GPU, cannot lower these kernels)."""
  if kind == 'gpu':
    return dict(interpret=interpret,
                compiler_params=pltriton.CompilerParams(num_warps=num_warps,
                                                        num_stages=num_stages))
  return dict(interpret=pltpu.InterpretParams() if interpret else False,
              compiler_params=pltpu.CompilerParams(dimension_semantics=dimension_semantics))
