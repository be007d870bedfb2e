"""Teachers for distillation: any CLIP `clipjax.convert` reads, and our own training runs.

A training run's workdir holds orbax train states, not a model file; `export_run` writes
its params, spec and tokenizer as a native folder that `load_teacher` (and every other
`clipjax.convert` reader) accepts:

  python -m clipjax.main --config configs/quickstart.py --workdir runs/quickstart
  python -c "from clipjax.methods.teacher import export_run; \
             export_run('runs/quickstart', 'runs/quickstart/teacher')"
"""
import json
import os
from pathlib import Path

import ml_collections

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


def export_run(workdir: str, dst: str, step=None) -> str:
  """Writes a training run's (latest or given) checkpoint as a native folder; returns dst."""
  from clipjax.train.loop import Trainer  # pylint: disable=g-import-not-at-top
  config_path = Path(workdir) / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{config_path}: not a training workdir (no config.json)')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  config.tokenizer.path = str(Path(workdir) / 'tokenizer.json')
  trainer = Trainer(config, workdir)
  if trainer.checkpointer.latest_step() is None:
    raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint to export')
  state, _ = trainer.checkpointer.restore(trainer.abstract_state, step)
  trainer.export(state.params, dst)
  return dst
