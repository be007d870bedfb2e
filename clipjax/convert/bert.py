"""Hugging Face BERT checkpoints and sentence-transformers folders -> `BertEncoder`."""
import json
import os

import jax.numpy as jnp

from clipjax.convert import load
from clipjax.convert.io import CheckpointError, open_checkpoint
from clipjax.models.bert import BertEncoder

ACTS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh'}
POOLING_MODES = {'pooling_mode_mean_tokens': 'mean', 'pooling_mode_cls_token': 'cls',
                 'pooling_mode_max_tokens': 'max', 'pooling_mode_mean_sqrt_len_tokens': 'mean_sqrt_len'}
# The tanh pooler head is unused by sentence encoders; position_ids is a buffer.
IGNORE = (r'(^|\.)position_ids$', r'^(bert\.)?pooler\.')


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def sentence_pooling(folder: str):
  """(pooling, normalize) from sentence-transformers' modules.json; plain BERT: ('mean', False)."""
  modules_path = os.path.join(folder, 'modules.json')
  if not os.path.exists(modules_path):
    return 'mean', False
  pooling, normalize = 'mean', False
  for module in _read_json(modules_path):
    kind = module['type'].rsplit('.', 1)[-1]
    if kind == 'Pooling':
      config = _read_json(os.path.join(folder, module['path'], 'config.json'))
      modes = [POOLING_MODES[k] for k in POOLING_MODES if config.get(k)]
      unknown = [k for k, v in config.items() if k.startswith('pooling_mode_') and v
                 and k not in POOLING_MODES]
      if len(modes) != 1 or unknown:
        raise CheckpointError(f'{folder}/{module["path"]}: need exactly one supported pooling mode '
                              f'of {sorted(POOLING_MODES)}, got {config}')
      pooling = modes[0]
    elif kind == 'Normalize':
      normalize = True
    elif kind != 'Transformer':
      raise CheckpointError(f'{modules_path}: unsupported sentence-transformers module {kind}')
  return pooling, normalize


def bert_spec(config: dict, where='config.json') -> dict:
  if config.get('model_type') != 'bert':
    raise CheckpointError(f'{where}: model_type {config.get("model_type")!r}; only bert is supported')
  if config.get('position_embedding_type', 'absolute') != 'absolute':
    raise CheckpointError(f'{where}: position_embedding_type must be absolute')
  if config.get('hidden_act', 'gelu') not in ACTS:
    raise CheckpointError(f'{where}: hidden_act {config["hidden_act"]!r} unsupported')
  return dict(vocab_size=config['vocab_size'], width=config['hidden_size'],
              layers=config['num_hidden_layers'], heads=config['num_attention_heads'],
              mlp_dim=config['intermediate_size'],
              max_len=config.get('max_position_embeddings', 512),
              type_vocab_size=config.get('type_vocab_size', 2),
              act=ACTS[config.get('hidden_act', 'gelu')],
              ln_eps=config.get('layer_norm_eps', 1e-12))


def bert_rules(spec: dict, prefix: str = '') -> dict:
  """{our path: Rule} for HF BertModel names (`prefix` is 'bert.' inside task models)."""
  heads = spec['heads']
  p = prefix
  rules = {
      'token_embed': load.rule(f'{p}embeddings.word_embeddings.weight'),
      'pos_embed': load.rule(f'{p}embeddings.position_embeddings.weight'),
      'type_embed': load.rule(f'{p}embeddings.token_type_embeddings.weight'),
      'ln_embed/scale': load.rule(f'{p}embeddings.LayerNorm.weight'),
      'ln_embed/bias': load.rule(f'{p}embeddings.LayerNorm.bias'),
  }
  for i in range(spec['layers']):
    ours, theirs = f'layer_{i}', f'{p}encoder.layer.{i}'
    for name in ('query', 'key', 'value'):
      rules[f'{ours}/attn/{name}/kernel'] = load.rule(
          f'{theirs}.attention.self.{name}.weight', fn=load.split_heads_in(heads))
      rules[f'{ours}/attn/{name}/bias'] = load.rule(
          f'{theirs}.attention.self.{name}.bias', fn=load.split_heads_bias(heads))
    rules.update({
        f'{ours}/attn/out/kernel': load.rule(f'{theirs}.attention.output.dense.weight',
                                             fn=load.split_heads_out(heads)),
        f'{ours}/attn/out/bias': load.rule(f'{theirs}.attention.output.dense.bias'),
        f'{ours}/ln_attn/scale': load.rule(f'{theirs}.attention.output.LayerNorm.weight'),
        f'{ours}/ln_attn/bias': load.rule(f'{theirs}.attention.output.LayerNorm.bias'),
        f'{ours}/mlp/fc1/kernel': load.rule(f'{theirs}.intermediate.dense.weight', fn=load.linear),
        f'{ours}/mlp/fc1/bias': load.rule(f'{theirs}.intermediate.dense.bias'),
        f'{ours}/mlp/fc2/kernel': load.rule(f'{theirs}.output.dense.weight', fn=load.linear),
        f'{ours}/mlp/fc2/bias': load.rule(f'{theirs}.output.dense.bias'),
        f'{ours}/ln_mlp/scale': load.rule(f'{theirs}.output.LayerNorm.weight'),
        f'{ours}/ln_mlp/bias': load.rule(f'{theirs}.output.LayerNorm.bias'),
    })
  return rules


def load_bert(path: str, dtype=jnp.float32, **placement):
  """(BertEncoder, params) from a HF BERT or sentence-transformers folder (or its weights file).

  placement: `shardings`, or `mesh` (+ `axis_rules`): see `load.place`.
  """
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, 'config.json')
  spec = bert_spec(_read_json(config_path), config_path)
  pooling, normalize = sentence_pooling(folder)
  model = BertEncoder(pooling=pooling, normalize=normalize, dtype=dtype, **spec)
  target = load.abstract_params(model, jnp.zeros((1, 2), jnp.int32))
  with open_checkpoint(path) as reader:
    prefix = 'bert.' if 'bert.embeddings.word_embeddings.weight' in reader else ''
    params = load.place(reader, bert_rules(spec, prefix), target,
                        ignore=IGNORE + ((r'^cls\.',) if prefix else ()), **placement)
  return model, params
