"""Method registry: the loop finds a method by name and never imports one directly."""
import importlib

from clipjax.methods.base import Method

_METHODS = {
    'clip': 'clipjax.methods.clip',
    'siglip': 'clipjax.methods.siglip',
    'tinyclip': 'clipjax.methods.tinyclip',
}


def get_method(name: str) -> type:
  """The `Method` class registered as `name` (each module exposes `METHOD`)."""
  if name not in _METHODS:
    raise ValueError(f'Unknown method {name!r} (config key "method"); available: {sorted(_METHODS)}')
  return importlib.import_module(_METHODS[name]).METHOD
