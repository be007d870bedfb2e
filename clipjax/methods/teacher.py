"""Teachers for distillation: any CLIP `clipjax.convert` reads, and our own training runs.

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
from clipjax.models.clip import CLIPModel


# Converted checkpoints' models, read once per (path, format), and the params converted
# while reading one, handed to the next `load_teacher`: rebuilds of a run (restores,
# prunes, stages) then neither convert again nor keep the params alive.
_CONVERTED, _PENDING = {}, {}


def teacher_model(src: str, format=None):  # pylint: disable=redefined-builtin
  """The CLIPModel of a checkpoint: native folders are read for their spec only, other
  formats are converted (once; the params wait for `load_teacher`)."""
  fmt = format or convert.detect_format(src)
  if fmt != 'clipjax':
    if (src, format) not in _CONVERTED:
      _CONVERTED[src, format], _PENDING[src, format], _ = convert.load_clip(src, fmt)
    return _CONVERTED[src, format]
  folder = src if os.path.isdir(src) else os.path.dirname(src)
  with open(os.path.join(folder, native.SPEC_FILE)) as f:
    saved = json.load(f)
  if saved.get('kind') != 'clip':
    raise ValueError(f'{folder}/{native.SPEC_FILE}: a teacher must be a CLIP model, not '
                     f'{saved.get("kind")!r}')
  return CLIPModel(**saved['spec'])


def load_teacher(src: str, format=None):  # pylint: disable=redefined-builtin
  """The params of a checkpoint of any `clipjax.convert` format (host arrays)."""
  params = _PENDING.pop((src, format), None)
  return convert.load_clip(src, format)[1] if params is None else params
