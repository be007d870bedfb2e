"""glibc malloc settings that keep a CPU run's large buffers mapped from step to step.

XLA's CPU runtime allocates each step's large temporaries with malloc. glibc serves
blocks above its mmap threshold with mmap and frees them with munmap, so every step maps
and unmaps the same hundreds of megabytes and takes the page faults again (PyTorch's
caching allocator keeps them). With mmap and trimming off, freed blocks stay in the heap
and the next step reuses them: the quickstart's step runs ~10% faster on this project's
CPU machine (`python benchmarks/train_step.py --only quickstart`, README "Benchmarks").

glibc reads GLIBC_TUNABLES only when a process starts, so `python -m clipjax.main`
re-executes itself once with them set, before it imports JAX: on Linux with glibc, when
no accelerator is visible (a GPU or TPU host keeps the default policy for its host
memory), unless GLIBC_TUNABLES is already set or CLIPJAX_HOST_MALLOC=0. For notebooks,
start Jupyter with `GLIBC_TUNABLES=` + `TUNABLES` in its environment.
"""
import glob
import os
import platform
import sys

TUNABLES = ('glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:'
            'glibc.malloc.hugetlb=1')
_ACCELERATOR_DEVICES = ('/dev/nvidiactl', '/dev/nvidia[0-9]*', '/dev/accel[0-9]*',
                        '/dev/vfio/[0-9]*', '/dev/kfd')


def accelerator_visible() -> bool:
  """JAX_PLATFORMS names a non-CPU platform first, or else a GPU/TPU device file exists."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() != 'cpu'
  return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def wanted() -> bool:
  return (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'
          and 'GLIBC_TUNABLES' not in os.environ
          and os.environ.get('CLIPJAX_HOST_MALLOC', '1') != '0' and not accelerator_visible())


def reexec(module: str) -> None:
  """Replaces this process (same pid, arguments and streams) by `python -m module` with
  the tunables set, when `wanted()`; else returns."""
  if wanted():
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLES)
    os.execve(sys.executable, [sys.executable, '-m', module, *sys.argv[1:]], env)
