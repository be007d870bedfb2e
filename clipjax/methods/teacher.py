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


def teacher_model(src: str, format=None):  # pylint: disable=redefined-builtin
  """(CLIPModel, params or None): native folders are read for their spec only, other
  formats are converted once and their params kept for `prepare`."""
  fmt = format or convert.detect_format(src)
  if fmt == 'clipjax':
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    with open(os.path.join(folder, native.SPEC_FILE)) as f:
      saved = json.load(f)
    if saved.get('kind') != 'clip':
      raise ValueError(f'{folder}/{native.SPEC_FILE}: a teacher must be a CLIP model, not '
                       f'{saved.get("kind")!r}')
    return CLIPModel(**saved['spec']), None
  model, params = load_teacher(src, fmt)
  return model, params


def load_teacher(src: str, format=None):  # pylint: disable=redefined-builtin
  """(CLIPModel, params) from a checkpoint of any `clipjax.convert` format."""
  model, params, _ = convert.load_clip(src, format)
  return model, params
