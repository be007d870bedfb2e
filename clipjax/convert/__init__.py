"""Checkpoint interop: OpenAI, open_clip and Hugging Face weights in and out.

    model, params, tokenizer = clipjax.convert.load_clip('path/to/clip-vit-base-patch32')
    emb = model.apply({'params': params}, images_nhwc, method='encode_image')

Formats: 'hf' (Hugging Face CLIP folder), 'openai' (OpenAI `.pt`, TorchScript or state dict),
'open_clip' (open_clip `state_dict` checkpoint, ViT towers), 'bert' (HF BERT /
sentence-transformers folder), 'llama' (HF Llama / Mistral / Qwen2 folder), 'clipjax' (our
own folder, see `native`). Nothing is downloaded: every source is a local path.
"""
import json
import os
import re
import zipfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.convert import load
from clipjax.convert.bert import load_bert
from clipjax.convert.clip import export_hf_clip, load_hf_clip, load_openai_clip
from clipjax.convert.io import CheckpointError, UnsafeCheckpointError, open_checkpoint
from clipjax.convert.llama import MODEL_TYPES as LLAMA_TYPES, load_llama
from clipjax.convert.native import load_native, save as save_native
from clipjax.models.clip import CLIPModel

FORMATS = ('hf', 'openai', 'open_clip', 'bert', 'llama', 'clipjax')


def _folder(src):
  return src if os.path.isdir(src) else os.path.dirname(src)


def detect_format(src: str) -> str:
  """Format of a local checkpoint from its config files or archive layout."""
  folder = _folder(src)
  if os.path.exists(os.path.join(folder, 'clipjax.json')):
    return 'clipjax'
  if os.path.exists(os.path.join(folder, 'open_clip_config.json')):
    return 'open_clip'
  config_path = os.path.join(folder, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      model_type = json.load(f).get('model_type')
    if model_type == 'clip':
      return 'hf'
    if model_type == 'bert':
      return 'bert'
    if model_type in LLAMA_TYPES:
      return 'llama'
    raise CheckpointError(f'{config_path}: model_type {model_type!r} is not a supported format')
  if os.path.isfile(src) and zipfile.is_zipfile(src):
    with zipfile.ZipFile(src) as z:  # TorchScript archives carry their code: OpenAI's files.
      return 'openai' if any('/code/' in n for n in z.namelist()) else 'open_clip'
  if os.path.isfile(src):
    return 'open_clip'
  raise CheckpointError(f'{src}: cannot tell the checkpoint format; pass format= one of {FORMATS}')


def load_tokenizer(path: Optional[str]):
  """The data pipeline's `Tokenizer` from a folder holding tokenizer.json, else None."""
  if path is None or not os.path.exists(os.path.join(_folder(path), 'tokenizer.json')):
    return None
  from clipjax.data.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer.load(_folder(path))


def load_model(src: str, format: Optional[str] = None, dtype=jnp.float32,  # pylint: disable=redefined-builtin
               tokenizer: Optional[str] = None, **options):
  """(model, params, tokenizer) for any supported format.

  tokenizer: folder or file with a tokenizer.json (default: beside `src`); None when absent.
  options: placement (`shardings`, or `mesh` and `axis_rules`) and format options
    (`act`, `vision_heads`, `text_heads` for openai/open_clip; `param_dtype` for llama).
  """
  format = format or detect_format(src)
  if format == 'hf':
    model, params = load_hf_clip(src, dtype, **options)
  elif format in ('openai', 'open_clip'):
    model, params = load_openai_clip(src, dtype, layout=format, **options)
  elif format == 'bert':
    model, params = load_bert(src, dtype, **options)
  elif format == 'llama':
    model, params = load_llama(src, dtype, **options)
  elif format == 'clipjax':
    model, params = load_native(_folder(src), dtype, **options)
  else:
    raise ValueError(f'unknown format {format!r}; use one of {FORMATS}')
  return model, params, load_tokenizer(tokenizer or src)


def load_clip(src: str, format: Optional[str] = None, dtype=jnp.float32,  # pylint: disable=redefined-builtin
              tokenizer: Optional[str] = None, **options):
  """(CLIPModel, params, tokenizer); `encode_image` / `encode_text` give embeddings before
  L2 normalisation. OpenAI `.pt` files carry no tokenizer: pass `tokenizer=` a folder."""
  model, params, tok = load_model(src, format, dtype, tokenizer, **options)
  if not isinstance(model, CLIPModel):
    raise CheckpointError(f'{src}: holds a {type(model).__name__}, not a CLIP model')
  return model, params, tok


def load_params(src: str, target, subtree: Optional[str] = None, format: Optional[str] = None,  # pylint: disable=redefined-builtin
                shardings=None, ignore=()):
  """Initialises `target` (a param tree, abstract or real) from a checkpoint of any format.

  subtree: '/'-path inside the converted params, e.g. 'visual' to initialise an image tower
    (or a teacher's) from a CLIP checkpoint. Every target parameter must be present with its
    exact shape; a mismatch raises naming it. Values take the target's dtype and go to
    `shardings` (a matching tree) or to the target's own `.sharding` when it has one.
  ignore: regexes of checkpoint parameters the target is meant not to have (a tower's head
    when the model keeps only its tokens), dropped instead of refused.
  """
  _, params, _ = load_model(src, format)
  for key in (subtree.split('/') if subtree else ()):
    if key not in params:
      raise CheckpointError(f'{src}: no subtree {subtree!r} (have {sorted(params)})')
    params = params[key]
  dropped = [re.compile(p) for p in ignore]
  source = {k: v for k, v in load.flat(params).items() if not any(p.fullmatch(k) for p in dropped)}
  wanted = load.flat(load.unbox(target))
  del params  # `source` now holds the only references: each is freed once placed.
  problems = [f'{k}: missing' for k in wanted if k not in source]
  problems += [f'{k}: checkpoint {source[k].shape} vs target {wanted[k].shape}'
               for k in wanted if k in source and source[k].shape != wanted[k].shape]
  problems += [f'{k}: not in target' for k in source if k not in wanted]
  if problems:
    raise CheckpointError(f'{src}: does not fit the target params: ' + '; '.join(problems))
  flat_shardings = load.flat(shardings) if shardings is not None else {}
  out = {}
  for k, spec in wanted.items():
    sharding = flat_shardings.get(k, getattr(spec, 'sharding', None))
    out[k] = jax.device_put(np.asarray(source.pop(k)).astype(spec.dtype), sharding)
  return load.unflat(out)


def init_params(params, inits, shardings=None):
  """`params` with some subtrees replaced from checkpoints: the train-init hook.

  inits: iterable of dicts (e.g. straight from a config list) with keys
    target: '/'-path in `params` to replace ('' for all), e.g. 'visual' or 'teacher/textual';
    src: checkpoint path; subtree (optional): '/'-path inside the converted checkpoint;
    format (optional): as `load_model`; ignore (optional): as `load_params`.
  Replaced values keep the placement of the leaves they replace (or follow `shardings`).
  """
  flat_params = load.flat(load.unbox(params))
  flat_shardings = load.flat(shardings) if shardings is not None else {}
  for init in inits:
    unknown = set(init) - {'target', 'src', 'subtree', 'format', 'ignore'}
    if unknown or 'src' not in init:
      raise ValueError(f'init entry {init!r}: needs src; allowed keys target, src, subtree, '
                       'format, ignore')
    prefix = init.get('target', '').strip('/')
    under = lambda k: not prefix or k == prefix or k.startswith(prefix + '/')  # pylint: disable=cell-var-from-loop
    strip = lambda k: k[len(prefix) + 1:] if prefix else k  # pylint: disable=cell-var-from-loop
    target = {strip(k): v for k, v in flat_params.items() if under(k)}
    if not target:
      raise CheckpointError(f'init target {prefix!r} names no parameters')
    sub_shardings = {strip(k): v for k, v in flat_shardings.items() if under(k)}
    loaded = load_params(init['src'], load.unflat(target), init.get('subtree'), init.get('format'),
                         load.unflat(sub_shardings) if sub_shardings else None,
                         init.get('ignore', ()))
    for k, v in load.flat(loaded).items():
      flat_params[f'{prefix}/{k}' if prefix else k] = v
  return load.unflat(flat_params)


__all__ = ['CheckpointError', 'UnsafeCheckpointError', 'FORMATS', 'detect_format', 'export_hf_clip',
           'init_params', 'load_clip', 'load_model', 'load_params', 'load_tokenizer', 'open_checkpoint',
           'save_native']
