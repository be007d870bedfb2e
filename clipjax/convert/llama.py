"""Hugging Face Llama / Mistral / Qwen2 checkpoints -> `LlamaEncoder` (frozen text encoder)."""
import json
import os

import jax.numpy as jnp

from clipjax.convert import load
from clipjax.convert.io import CheckpointError, open_checkpoint
from clipjax.models.llama import LlamaEncoder

MODEL_TYPES = ('llama', 'mistral', 'qwen2')
# The LM head is read apart (`load_lm_head`) by the methods that use it (LexVLA); rotary
# inv_freq buffers are recomputed.
IGNORE = (r'^lm_head\.', r'rotary_emb\.inv_freq$')


def llama_spec(config: dict, where='config.json') -> dict:
  """`LlamaEncoder` keyword arguments from a HF config.json dict."""
  kind = config.get('model_type')
  if kind not in MODEL_TYPES:
    raise CheckpointError(f'{where}: model_type {kind!r}; supported: {MODEL_TYPES}')
  if config.get('hidden_act', 'silu') != 'silu':
    raise CheckpointError(f'{where}: hidden_act {config["hidden_act"]!r}; only silu is supported')
  rope = config.get('rope_parameters') or {}
  scaling = config.get('rope_scaling') or {}
  rope_type = rope.get('rope_type', scaling.get('rope_type', scaling.get('type', 'default')))
  if rope_type != 'default':
    raise CheckpointError(f'{where}: rope_type {rope_type!r} unsupported (only default RoPE)')
  if config.get('mlp_bias'):
    raise CheckpointError(f'{where}: mlp_bias=True unsupported')
  heads = config['num_attention_heads']
  window = config.get('sliding_window') if config.get('use_sliding_window', kind == 'mistral') else None
  return dict(vocab_size=config['vocab_size'], width=config['hidden_size'],
              layers=config['num_hidden_layers'], heads=heads,
              kv_heads=config.get('num_key_value_heads') or heads,
              mlp_dim=config['intermediate_size'],
              head_dim=config.get('head_dim') or config['hidden_size'] // heads,
              rope_theta=float(rope.get('rope_theta', config.get('rope_theta', 10000.0))),
              norm_eps=config.get('rms_norm_eps', 1e-6),
              qkv_bias=kind == 'qwen2' or bool(config.get('attention_bias')),
              out_bias=bool(config.get('attention_bias')), sliding_window=window)


def llama_rules(spec: dict, prefix: str = 'model.') -> dict:
  """{our path: Rule} for HF decoder names (`prefix` is '' for a bare LlamaModel)."""
  rules = {'token_embed': load.rule(f'{prefix}embed_tokens.weight'),
           'ln_final/scale': load.rule(f'{prefix}norm.weight')}
  for i in range(spec['layers']):
    ours, theirs = f'layer_{i}', f'{prefix}layers.{i}'
    for name, proj, heads in (('query', 'q_proj', spec['heads']), ('key', 'k_proj', spec['kv_heads']),
                              ('value', 'v_proj', spec['kv_heads'])):
      rules[f'{ours}/{name}/kernel'] = load.rule(f'{theirs}.self_attn.{proj}.weight',
                                                 fn=load.split_heads_in(heads))
      if spec['qkv_bias']:
        rules[f'{ours}/{name}/bias'] = load.rule(f'{theirs}.self_attn.{proj}.bias',
                                                 fn=load.split_heads_bias(heads))
    rules[f'{ours}/out/kernel'] = load.rule(f'{theirs}.self_attn.o_proj.weight',
                                            fn=load.split_heads_out(spec['heads']))
    if spec['out_bias']:
      rules[f'{ours}/out/bias'] = load.rule(f'{theirs}.self_attn.o_proj.bias')
    for name in ('gate', 'up', 'down'):
      rules[f'{ours}/{name}/kernel'] = load.rule(f'{theirs}.mlp.{name}_proj.weight', fn=load.linear)
    rules[f'{ours}/ln_attn/scale'] = load.rule(f'{theirs}.input_layernorm.weight')
    rules[f'{ours}/ln_mlp/scale'] = load.rule(f'{theirs}.post_attention_layernorm.weight')
  return rules


def llama_target(model: LlamaEncoder):
  return load.abstract_params(model, jnp.zeros((1, 2), jnp.int32))


def load_llama(path: str, dtype=jnp.float32, param_dtype=jnp.float32, **placement):
  """(LlamaEncoder, params) from a HF folder (config.json + safetensors, sharded or not).

  param_dtype: storage dtype of the params (bfloat16 halves a 7B model's memory).
  placement: `shardings`, or `mesh` (+ `axis_rules`): see `load.place`; each tensor goes
  straight to its devices as it is read.
  """
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, 'config.json')
  with open(config_path) as f:
    spec = llama_spec(json.load(f), config_path)
  model = LlamaEncoder(dtype=dtype, param_dtype=param_dtype, **spec)
  with open_checkpoint(path) as reader:
    prefix = 'model.' if 'model.embed_tokens.weight' in reader else ''
    params = load.place(reader, llama_rules(spec, prefix), llama_target(model), ignore=IGNORE,
                        **placement)
  return model, params


def load_lm_head(path: str):
  """The LM head's rows [vocab, width] (numpy, the checkpoint's dtype): `lm_head.weight`,
  or the input embeddings where config.json ties them (tie_word_embeddings)."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  with open(os.path.join(folder, 'config.json')) as f:
    tied = json.load(f).get('tie_word_embeddings', False)
  with open_checkpoint(path) as reader:
    for name in ('lm_head.weight',) + (('model.embed_tokens.weight', 'embed_tokens.weight')
                                        if tied else ()):
      if name in reader:
        return reader.read(name)
  raise CheckpointError(f'{path}: no lm_head.weight' + (' nor embed_tokens.weight' if tied else
                                                        ' and tie_word_embeddings is false'))


def llama_state_dict(model: LlamaEncoder, params) -> dict:
  """HF `LlamaForCausalLM` tensors (numpy, PyTorch layouts) of `params`; the LM head is
  tied to the embeddings. The inverse of `llama_rules`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  p = lambda x: np.asarray(x, np.float32)
  tensors = {'model.embed_tokens.weight': p(params['token_embed']),
             'model.norm.weight': p(params['ln_final']['scale'])}
  for i in range(model.layers):
    ours, theirs = params[f'layer_{i}'], f'model.layers.{i}'
    for name, proj in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      kernel = p(ours[name]['kernel'])  # [in, heads, dim]
      tensors[f'{theirs}.self_attn.{proj}.weight'] = kernel.reshape(kernel.shape[0], -1).T
      if 'bias' in ours[name]:
        tensors[f'{theirs}.self_attn.{proj}.bias'] = p(ours[name]['bias']).reshape(-1)
    out = p(ours['out']['kernel'])  # [heads, dim, out]
    tensors[f'{theirs}.self_attn.o_proj.weight'] = out.reshape(-1, out.shape[-1]).T
    if 'bias' in ours['out']:
      tensors[f'{theirs}.self_attn.o_proj.bias'] = p(ours['out']['bias'])
    for name in ('gate', 'up', 'down'):
      tensors[f'{theirs}.mlp.{name}_proj.weight'] = p(ours[name]['kernel']).T
    tensors[f'{theirs}.input_layernorm.weight'] = p(ours['ln_attn']['scale'])
    tensors[f'{theirs}.post_attention_layernorm.weight'] = p(ours['ln_mlp']['scale'])
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def save_llama(folder: str, model: LlamaEncoder, params) -> None:
  """A HF Llama folder (config.json + model.safetensors) that `load_llama` and
  `transformers.LlamaForCausalLM` read; Qwen2-style q/k/v biases are not written."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if model.qkv_bias or model.out_bias or model.sliding_window is not None:
    raise ValueError('save_llama writes plain Llama models (no biases, no sliding window)')
  os.makedirs(folder, exist_ok=True)
  config = dict(model_type='llama', architectures=['LlamaForCausalLM'],
                vocab_size=model.vocab_size, hidden_size=model.width,
                num_hidden_layers=model.layers, num_attention_heads=model.heads,
                num_key_value_heads=model.kv_heads, intermediate_size=model.mlp_dim,
                head_dim=model.head_dim or model.width // model.heads,
                rope_theta=model.rope_theta, rms_norm_eps=model.norm_eps, hidden_act='silu',
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                max_position_embeddings=4096, torch_dtype='float32')
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f, indent=1)
  tensors = llama_state_dict(model, params)
  save_file(tensors, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})
