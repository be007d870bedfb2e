"""Frozen teachers: any model `clipjax.convert` reads (a CLIP for TinyCLIP, a BERT-family
sentence encoder for ProtoCLIP's external teacher), and our own training runs.

A training run's workdir holds orbax train states, not a model file; export its model
(params, spec and tokenizer as a native folder, which `load_teacher` and every other
`clipjax.convert` reader accepts) with

  python -m clipjax.main --config configs/quickstart.py --workdir runs/quickstart \
      --config.mode=export            # -> runs/quickstart/export
"""
import json
import os

from clipjax import convert
from clipjax.convert import native

# Converted checkpoints' models, read once per (path, format), and the params converted
# while reading one, handed to the next `load_teacher`: rebuilds of a run (restores,
# prunes, stages) then neither convert again nor keep the params alive.
_CONVERTED, _PENDING = {}, {}


def teacher_model(src: str, format=None, kind: str = 'clip'):  # pylint: disable=redefined-builtin
  """The model of a checkpoint, which must be of `kind` ('clip', 'bert', 'llama'): native
  folders are read for their spec only, other formats are converted (once; the params
  wait for `load_teacher`)."""
  if not os.path.exists(src):
    raise FileNotFoundError(f'teacher {src!r}: no such file or folder')
  fmt = format or convert.detect_format(src)
  if fmt != 'clipjax':
    if (src, format) not in _CONVERTED:
      _CONVERTED[src, format], _PENDING[src, format], _ = convert.load_model(src, fmt)
    model = _CONVERTED[src, format]
  else:
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    with open(os.path.join(folder, native.SPEC_FILE)) as f:
      saved = json.load(f)
    if saved.get('kind') not in native.MODELS:
      raise ValueError(f'{folder}/{native.SPEC_FILE}: unknown model kind {saved.get("kind")!r}')
    model = native.MODELS[saved['kind']](**saved['spec'])
  if native.kind_of(model) != kind:
    raise ValueError(f'teacher {src}: a {native.kind_of(model)} model, not a {kind} one')
  return model


def load_teacher(src: str, format=None):  # pylint: disable=redefined-builtin
  """The params of a checkpoint of any `clipjax.convert` format (host arrays)."""
  params = _PENDING.pop((src, format), None)
  return convert.load_model(src, format)[1] if params is None else params
