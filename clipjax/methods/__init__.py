"""Method registry: the loop finds a method by name and never imports one directly."""
import importlib

from clipjax.methods.base import EvalView, Hook, HookContext, Method

_METHODS = {
    'aclip': 'clipjax.methods.aclip',
    'clip': 'clipjax.methods.clip',
    'flame': 'clipjax.methods.flame',
    'lexvla': 'clipjax.methods.lexvla',
    'nmtune': 'clipjax.methods.nmtune',
    'protoclip': 'clipjax.methods.protoclip',
    'siglip': 'clipjax.methods.siglip',
    'tinyclip': 'clipjax.methods.tinyclip',
    'tldr_captioner': 'clipjax.methods.tldr',
}


def get_method(name: str) -> type:
  """The `Method` class registered as `name` (each module exposes `METHOD`), or one named
  by import path, `package.module:ClassName` (methods of your own, tests)."""
  if ':' in name:
    module, _, attr = name.partition(':')
    try:
      cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f'config.method={name!r}: {e}') from None
  elif name in _METHODS:
    cls = importlib.import_module(_METHODS[name]).METHOD
  else:
    raise ValueError(f'Unknown method {name!r} (config key "method"); available: '
                     f'{sorted(_METHODS)} or "package.module:ClassName"')
  if not (isinstance(cls, type) and issubclass(cls, Method)):
    raise ValueError(f'config.method={name!r} is not a clipjax.methods.Method subclass')
  return cls


__all__ = ['EvalView', 'Hook', 'HookContext', 'Method', 'get_method']
