"""Hugging Face Llama / Mistral / Qwen2 checkpoints -> `LlamaEncoder` (frozen text encoder)."""
import json
import os

import jax.numpy as jnp

from clipjax.convert import load
from clipjax.convert.io import CheckpointError, open_checkpoint
from clipjax.models.llama import LlamaEncoder

MODEL_TYPES = ('llama', 'mistral', 'qwen2')
# The LM head is unused by an encoder; rotary inv_freq buffers are recomputed.
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
