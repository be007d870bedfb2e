"""Our own interchange folder: `clipjax.json` (model kind + spec) and `params.safetensors`.

Parameter names are our tree paths joined by '/', so loading is a 1:1 table and a converted
checkpoint reloads without the original framework's naming rules.
"""
import json
import os

import jax.numpy as jnp
import numpy as np

from clipjax.convert import load
from clipjax.convert.io import CheckpointError, open_checkpoint, write_safetensors
from clipjax.models.bert import BertEncoder
from clipjax.models.clip import CLIPModel
from clipjax.models.llama import LlamaEncoder

SPEC_FILE, PARAMS_FILE = 'clipjax.json', 'params.safetensors'
MODELS = {'clip': CLIPModel, 'bert': BertEncoder, 'llama': LlamaEncoder}
SPEC_FIELDS = {
    'clip': ('embed_dim', 'vision', 'text', 'init_logit_scale', 'init_logit_bias'),
    'bert': ('vocab_size', 'width', 'layers', 'heads', 'mlp_dim', 'max_len', 'type_vocab_size',
             'act', 'ln_eps', 'pooling', 'normalize'),
    'llama': ('vocab_size', 'width', 'layers', 'heads', 'kv_heads', 'mlp_dim', 'head_dim',
              'rope_theta', 'norm_eps', 'qkv_bias', 'out_bias', 'sliding_window'),
}


def kind_of(model) -> str:
  for kind, cls in MODELS.items():
    if isinstance(model, cls):
      return kind
  raise TypeError(f'no native format for {type(model).__name__}')


def example_inputs(model):
  """Smallest inputs that trace every parameter of `model`."""
  if isinstance(model, CLIPModel):
    size = model.vision['image_size']
    return (jnp.zeros((1, size, size, 3)), jnp.zeros((1, model.text['context_length']), jnp.int32))
  return (jnp.zeros((1, 2), jnp.int32),)


def save(model, params, folder: str, tokenizer=None):
  """Writes the spec, the params (in their own dtypes) and the tokenizer into `folder`."""
  kind = kind_of(model)
  spec = {f: getattr(model, f) for f in SPEC_FIELDS[kind]}
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, SPEC_FILE), 'w') as f:
    json.dump(dict(kind=kind, spec=spec), f, indent=2)
  flat = load.flat(load.unbox(params))
  shapes = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}
  write_safetensors(os.path.join(folder, PARAMS_FILE),
                    ((k, np.asarray(v)) for k, v in flat.items()), shapes,
                    metadata={'format': 'clipjax'})
  if tokenizer is not None:
    tokenizer.save(folder)


def load_native(folder: str, dtype=jnp.float32, **placement):
  """(model, params) from a folder written by `save`."""
  spec_path = os.path.join(folder, SPEC_FILE)
  with open(spec_path) as f:
    saved = json.load(f)
  if saved.get('kind') not in MODELS:
    raise CheckpointError(f'{spec_path}: unknown model kind {saved.get("kind")!r}')
  model = MODELS[saved['kind']](dtype=dtype, **saved['spec'])
  target = load.abstract_params(model, *example_inputs(model))
  rules = {path: load.rule(path) for path in load.flat(target)}
  with open_checkpoint(os.path.join(folder, PARAMS_FILE)) as reader:
    params = load.place(reader, rules, target, **placement)
  return model, params
