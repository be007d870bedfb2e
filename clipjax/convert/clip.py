"""CLIP checkpoints: Hugging Face (in and out), OpenAI `.pt` and open_clip state dicts (in).

Each layout is one table from our parameter paths to source tensor names plus a named
rearrangement, so the same table serves import (forward) and export (inverse).
"""
import json
import math
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.convert import load
from clipjax.convert.io import CheckpointError, Reader, open_checkpoint, write_safetensors
from clipjax.models.clip import CLIPModel


# name: (import: source -> ours, export: ours -> source); `heads` is bound per tower.
def _transforms(heads):
  return {
      'id': (lambda x: x, lambda x: x),
      'linear': (load.linear, load.linear),
      'conv': (load.conv, lambda w: w.transpose(3, 2, 0, 1)),
      'heads_in': (load.split_heads_in(heads), lambda k: k.reshape(k.shape[0], -1).T),
      'heads_bias': (load.split_heads_bias(heads), lambda b: b.reshape(-1)),
      'heads_out': (load.split_heads_out(heads), lambda k: k.reshape(-1, k.shape[-1]).T),
  }


HF_ACTS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
           'gelu_new': 'gelu_tanh'}
HF_ACTS_OUT = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh'}
HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                        num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                        hidden_act='quick_gelu', layer_norm_eps=1e-5, eos_token_id=49407)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                          hidden_act='quick_gelu', layer_norm_eps=1e-5)
IGNORE = (r'position_ids$', r'(^|\.)attn_mask$', r'^(input_resolution|context_length|vocab_size)$')


def mlp_ratio(hidden: int, width: int) -> float:
  """A ratio whose `int(width * ratio)` (how the blocks size their MLP) is exactly `hidden`."""
  ratio = hidden / width
  while int(width * ratio) < hidden:
    ratio = math.nextafter(ratio, math.inf)
  return ratio


def _check_ln_eps(eps, where):
  if not math.isclose(eps, 1e-5, rel_tol=1e-6):
    raise CheckpointError(f'{where}: layer_norm_eps={eps} unsupported (CLIP towers use 1e-5)')


def hf_clip_spec(config: dict, where='config.json') -> dict:
  """`CLIPModel` keyword arguments from a Hugging Face CLIP config.json dict."""
  if config.get('model_type', 'clip') != 'clip':
    raise CheckpointError(f'{where}: model_type {config.get("model_type")!r} is not clip')
  t = dict(HF_TEXT_DEFAULTS, **config.get('text_config', {}))
  v = dict(HF_VISION_DEFAULTS, **config.get('vision_config', {}))
  for tower in (t, v):
    _check_ln_eps(tower['layer_norm_eps'], where)
    if tower['hidden_act'] not in HF_ACTS:
      raise CheckpointError(f'{where}: hidden_act {tower["hidden_act"]!r} unsupported')
  if v['num_channels'] != 3:
    raise CheckpointError(f'{where}: num_channels={v["num_channels"]}; only RGB is supported')
  eos = t['eos_token_id']
  return dict(
      embed_dim=config.get('projection_dim', 512),
      init_logit_scale=math.exp(config.get('logit_scale_init_value', 2.6592)),
      vision=dict(width=v['hidden_size'], layers=v['num_hidden_layers'],
                  heads=v['num_attention_heads'], patch_size=v['patch_size'],
                  image_size=v['image_size'], act=HF_ACTS[v['hidden_act']],
                  mlp_ratio=mlp_ratio(v['intermediate_size'], v['hidden_size'])),
      text=dict(width=t['hidden_size'], layers=t['num_hidden_layers'],
                heads=t['num_attention_heads'], vocab_size=t['vocab_size'],
                context_length=t['max_position_embeddings'],
                eot_token_id=None if eos == 2 else eos,  # HF's legacy argmax pooling.
                act=HF_ACTS[t['hidden_act']],
                mlp_ratio=mlp_ratio(t['intermediate_size'], t['hidden_size'])))


def hf_tower(name: str, tower: dict) -> dict:
  """`tower` with one head count and MLP width, as HF CLIP has, or an error naming the cause.

  A pruned student (TinyCLIP) whose layers kept equal sizes exports; one whose layers
  differ, or whose heads are not width / heads wide, cannot be written as HF CLIP.
  """
  width, layers = tower['width'], tower['layers']
  heads = list(tower.get('layer_heads') or [tower['heads']] * layers)
  head_dim = tower.get('head_dim') or width // tower['heads']
  mlp = list(tower.get('layer_mlp') or [int(width * tower.get('mlp_ratio', 4.0))] * layers)
  problems = []
  if len(set(heads)) > 1:
    problems.append(f'per-layer head counts {heads}')
  elif heads[0] * head_dim != width:
    problems.append(f'{heads[0]} heads of {head_dim} dims in a width of {width}')
  if len(set(mlp)) > 1:
    problems.append(f'per-layer MLP widths {mlp}')
  if problems:
    raise CheckpointError(
        f'Hugging Face CLIP cannot express the {name} tower: {"; ".join(problems)} (it has one '
        'head count of width/heads dims and one MLP width per tower); keep this model as a '
        'clipjax checkpoint, or export it with equal sizes in every layer')
  return dict(tower, heads=heads[0], head_dim=None, layer_heads=None, layer_mlp=None,
              mlp_ratio=mlp[0] / width)


def hf_clip_config(spec: dict) -> dict:
  """Hugging Face CLIP config.json dict for a `CLIPModel` spec."""
  v, t = hf_tower('vision', spec['vision']), hf_tower('text', spec['text'])
  if v.get('pool', 'cls') != 'cls' or spec.get('init_logit_bias') is not None:
    raise CheckpointError('Hugging Face CLIP has no map/gap pooling or logit bias; '
                          'only cls-pooled CLIP models can be exported')
  hidden = lambda tower: round(tower['width'] * tower.get('mlp_ratio', 4.0))
  eot = t.get('eot_token_id')
  return dict(
      architectures=['CLIPModel'], model_type='clip', projection_dim=spec['embed_dim'],
      logit_scale_init_value=math.log(spec.get('init_logit_scale', 1 / 0.07)),
      text_config=dict(
          model_type='clip_text_model', vocab_size=t['vocab_size'], hidden_size=t['width'],
          intermediate_size=hidden(t), num_hidden_layers=t['layers'],
          num_attention_heads=t['heads'], max_position_embeddings=t['context_length'],
          hidden_act=HF_ACTS_OUT[t.get('act', 'gelu')], layer_norm_eps=1e-5,
          projection_dim=spec['embed_dim'], eos_token_id=2 if eot is None else eot),
      vision_config=dict(
          model_type='clip_vision_model', hidden_size=v['width'], intermediate_size=hidden(v),
          num_hidden_layers=v['layers'], num_attention_heads=v['heads'], num_channels=3,
          image_size=v['image_size'], patch_size=v['patch_size'],
          hidden_act=HF_ACTS_OUT[v.get('act', 'gelu')], layer_norm_eps=1e-5,
          projection_dim=spec['embed_dim']))


def _block_table(ours, theirs, layout):
  """One transformer block: our path prefix, their name prefix, 'hf' or 'openai' naming."""
  if layout == 'hf':
    names = dict(ln_1='layer_norm1', ln_2='layer_norm2', fc1='mlp.fc1', fc2='mlp.fc2',
                 out='self_attn.out_proj')
  else:
    names = dict(ln_1='ln_1', ln_2='ln_2', fc1='mlp.c_fc', fc2='mlp.c_proj', out='attn.out_proj')
  table = {}
  for ln in ('ln_1', 'ln_2'):
    table[f'{ours}/{ln}/scale'] = (f'{theirs}.{names[ln]}.weight', 'id')
    table[f'{ours}/{ln}/bias'] = (f'{theirs}.{names[ln]}.bias', 'id')
  for fc in ('fc1', 'fc2'):
    table[f'{ours}/mlp/{fc}/kernel'] = (f'{theirs}.{names[fc]}.weight', 'linear')
    table[f'{ours}/mlp/{fc}/bias'] = (f'{theirs}.{names[fc]}.bias', 'id')
  table[f'{ours}/attn/out/kernel'] = (f'{theirs}.{names["out"]}.weight', 'heads_out')
  table[f'{ours}/attn/out/bias'] = (f'{theirs}.{names["out"]}.bias', 'id')
  if layout == 'hf':
    for ours_name, hf in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      table[f'{ours}/attn/{ours_name}/kernel'] = (f'{theirs}.self_attn.{hf}.weight', 'heads_in')
      table[f'{ours}/attn/{ours_name}/bias'] = (f'{theirs}.self_attn.{hf}.bias', 'heads_bias')
  return table


def hf_clip_table(spec: dict) -> dict:
  """{our path: (HF tensor name, transform name)} for a cls-pooled CLIP."""
  table = {'log_logit_scale': ('logit_scale', 'id')}
  for tower, hf, n in (('visual', 'vision_model', spec['vision']['layers']),
                       ('textual', 'text_model', spec['text']['layers'])):
    for i in range(n):
      table.update(_block_table(f'{tower}/transformer/block_{i}', f'{hf}.encoder.layers.{i}', 'hf'))
  table.update({
      'visual/patch_embed/kernel': ('vision_model.embeddings.patch_embedding.weight', 'conv'),
      'visual/pos_embed': ('vision_model.embeddings.position_embedding.weight', 'id'),
      'visual/cls_token': ('vision_model.embeddings.class_embedding', 'id'),
      'visual/ln_pre/scale': ('vision_model.pre_layrnorm.weight', 'id'),
      'visual/ln_pre/bias': ('vision_model.pre_layrnorm.bias', 'id'),
      'visual/ln_post/scale': ('vision_model.post_layernorm.weight', 'id'),
      'visual/ln_post/bias': ('vision_model.post_layernorm.bias', 'id'),
      'visual/proj': ('visual_projection.weight', 'linear'),
      'textual/token_embed': ('text_model.embeddings.token_embedding.weight', 'id'),
      'textual/pos_embed': ('text_model.embeddings.position_embedding.weight', 'id'),
      'textual/ln_final/scale': ('text_model.final_layer_norm.weight', 'id'),
      'textual/ln_final/bias': ('text_model.final_layer_norm.bias', 'id'),
      'textual/proj': ('text_projection.weight', 'linear'),
  })
  return table


def _heads_for(path, spec):
  return spec['vision' if path.startswith('visual') else 'text']['heads']


def table_rules(table, spec):
  return {path: load.rule(src, fn=_transforms(_heads_for(path, spec))[kind][0])
          for path, (src, kind) in table.items()}


def _qkv(index, heads, bias=False):
  """Slice q, k or v out of PyTorch's packed `in_proj_weight` [3W, W] / `in_proj_bias` [3W]."""
  def fn(w):
    part = np.split(w, 3, axis=0)[index]
    return part.reshape(heads, -1) if bias else load.split_heads_in(heads)(part)
  return fn


def openai_clip_rules(spec: dict) -> dict:
  """Rules for OpenAI CLIP / open_clip ViT state dicts (`visual.*`, `transformer.*`...)."""
  table = {'log_logit_scale': ('logit_scale', 'id')}
  if spec.get('init_logit_bias') is not None:
    table['logit_bias'] = ('logit_bias', 'id')
  towers = (('visual', 'visual.transformer.resblocks', spec['vision']),
            ('textual', 'transformer.resblocks', spec['text']))
  rules = {}
  for tower, theirs, tspec in towers:
    for i in range(tspec['layers']):
      ours = f'{tower}/transformer/block_{i}'
      table.update(_block_table(ours, f'{theirs}.{i}', 'openai'))
      for j, name in enumerate(('query', 'key', 'value')):
        rules[f'{ours}/attn/{name}/kernel'] = load.rule(
            f'{theirs}.{i}.attn.in_proj_weight', fn=_qkv(j, tspec['heads']))
        rules[f'{ours}/attn/{name}/bias'] = load.rule(
            f'{theirs}.{i}.attn.in_proj_bias', fn=_qkv(j, tspec['heads'], bias=True))
  table.update({
      'visual/patch_embed/kernel': ('visual.conv1.weight', 'conv'),
      'visual/pos_embed': ('visual.positional_embedding', 'id'),
      'visual/cls_token': ('visual.class_embedding', 'id'),
      'visual/ln_pre/scale': ('visual.ln_pre.weight', 'id'),
      'visual/ln_pre/bias': ('visual.ln_pre.bias', 'id'),
      'visual/ln_post/scale': ('visual.ln_post.weight', 'id'),
      'visual/ln_post/bias': ('visual.ln_post.bias', 'id'),
      'visual/proj': ('visual.proj', 'id'),
      'textual/token_embed': ('token_embedding.weight', 'id'),
      'textual/pos_embed': ('positional_embedding', 'id'),
      'textual/ln_final/scale': ('ln_final.weight', 'id'),
      'textual/ln_final/bias': ('ln_final.bias', 'id'),
      'textual/proj': ('text_projection', 'id'),
  })
  rules.update(table_rules(table, spec))
  return rules


def _count_blocks(reader, prefix):
  pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
  found = {int(m.group(1)) for n in reader.keys() if (m := pattern.match(n))}
  return max(found) + 1 if found else 0


def openai_clip_spec(reader: Reader, act: str = 'quick_gelu', vision_heads: Optional[int] = None,
                     text_heads: Optional[int] = None) -> dict:
  """Model spec inferred from OpenAI / open_clip tensor shapes (heads default to width // 64)."""
  def shape(name):
    if name not in reader:
      raise CheckpointError(f'{reader.path}: missing tensor {name!r}; not an OpenAI/open_clip '
                            'ViT CLIP state dict (ResNet and custom text towers are unsupported)')
    return reader.shapes[name][0]
  vw, _, patch, _ = shape('visual.conv1.weight')
  grid = math.isqrt(shape('visual.positional_embedding')[0] - 1)
  tw = shape('ln_final.weight')[0]
  vocab, _ = shape('token_embedding.weight')
  return dict(
      embed_dim=shape('visual.proj')[1],
      init_logit_bias=0.0 if 'logit_bias' in reader else None,
      vision=dict(width=vw, layers=_count_blocks(reader, 'visual.transformer.resblocks'),
                  heads=vision_heads or vw // 64, patch_size=patch, image_size=grid * patch,
                  act=act, mlp_ratio=mlp_ratio(
                      shape('visual.transformer.resblocks.0.mlp.c_fc.weight')[0], vw)),
      text=dict(width=tw, layers=_count_blocks(reader, 'transformer.resblocks'),
                heads=text_heads or tw // 64, vocab_size=vocab,
                context_length=shape('positional_embedding')[0], eot_token_id=None, act=act,
                mlp_ratio=mlp_ratio(shape('transformer.resblocks.0.mlp.c_fc.weight')[0], tw)))


def build(spec: dict, dtype=jnp.float32) -> CLIPModel:
  return CLIPModel(dtype=dtype, **spec)


def clip_target(model: CLIPModel):
  """Abstract (shape-only) params of a CLIP model."""
  size = model.vision['image_size']
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  ids = jnp.zeros((1, model.text['context_length']), jnp.int32)
  return load.abstract_params(model, images, ids)


def load_hf_clip(path: str, dtype=jnp.float32, **placement):
  """(model, params) from a Hugging Face CLIP folder (config.json + weights).

  placement: `shardings`, or `mesh` (+ `axis_rules`): see `load.place`.
  """
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, 'config.json')
  with open(config_path) as f:
    spec = hf_clip_spec(json.load(f), config_path)
  model = build(spec, dtype)
  with open_checkpoint(path) as reader:
    params = load.place(reader, table_rules(hf_clip_table(spec), spec), clip_target(model),
                        ignore=IGNORE, **placement)
  return model, params


def open_clip_options(folder: str) -> dict:
  """act / heads from an open_clip_config.json beside the weights (open_clip hub folders)."""
  path = os.path.join(folder, 'open_clip_config.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    cfg = json.load(f).get('model_cfg', {})
  vision, text = cfg.get('vision_cfg', {}), cfg.get('text_cfg', {})
  if isinstance(vision.get('layers'), (list, tuple)) or 'hf_model_name' in text:
    raise CheckpointError(f'{path}: ResNet image towers and HF text towers are unsupported')
  options = dict(act='quick_gelu' if cfg.get('quick_gelu') else 'gelu')
  if 'width' in vision:
    options['vision_heads'] = vision['width'] // vision.get('head_width', 64)
  if 'heads' in text:
    options['text_heads'] = text['heads']
  return options


def load_openai_clip(path: str, dtype=jnp.float32, act: Optional[str] = None, vision_heads=None,
                     text_heads=None, layout='openai', **placement):
  """(model, params) from an OpenAI `.pt` (TorchScript or state dict) or open_clip checkpoint.

  act: MLP activation; OpenAI models use quick_gelu, most open_clip-trained models gelu.
  vision_heads / text_heads: default to an open_clip_config.json beside the weights, else
    width // 64 (OpenAI's and open_clip's default head width).
  placement: `shardings`, or `mesh` (+ `axis_rules`): see `load.place`.
  """
  folder = path if os.path.isdir(path) else os.path.dirname(path) or '.'
  found = open_clip_options(folder) if layout == 'open_clip' else {}
  act = act or found.get('act') or ('quick_gelu' if layout == 'openai' else 'gelu')
  vision_heads = vision_heads or found.get('vision_heads')
  text_heads = text_heads or found.get('text_heads')
  with open_checkpoint(path) as reader:
    spec = openai_clip_spec(reader, act, vision_heads, text_heads)
    model = build(spec, dtype)
    params = load.place(reader, openai_clip_rules(spec), clip_target(model),
                        ignore=IGNORE, **placement)
  return model, params


def model_spec(model: CLIPModel) -> dict:
  return dict(embed_dim=model.embed_dim, vision=dict(model.vision), text=dict(model.text),
              init_logit_scale=model.init_logit_scale, init_logit_bias=model.init_logit_bias)


LEGACY_EOS = 2  # HF CLIP pools text at argmax(ids) when eos_token_id == 2.


def swap_token_ids(tokenizer_json: dict, a: int, b: int) -> dict:
  """A tokenizer.json dict with token ids `a` and `b` exchanged (vocab, specials, templates)."""
  swap = lambda i: b if i == a else a if i == b else i
  def visit(node, key=None):
    if isinstance(node, dict):
      if key == 'vocab':
        return {tok: swap(i) if isinstance(i, int) else i for tok, i in node.items()}
      return {k: visit(v, k) for k, v in node.items()}
    if isinstance(node, list):
      if key == 'vocab':  # Unigram vocab: [[piece, score], ...] by position.
        node = list(node)
        if max(a, b) < len(node):
          node[a], node[b] = node[b], node[a]
        return node
      return [visit(v, key) for v in node]
    if key in ('id', 'ids', 'pad_id') and isinstance(node, int):
      return swap(node)
    return node
  return visit(tokenizer_json)


def export_hf_clip(model: CLIPModel, params, folder: str, tokenizer=None):
  """Writes config.json + model.safetensors loadable by `transformers.CLIPModel`.

  tokenizer: optional `clipjax.data.tokenizer.Tokenizer`, written as tokenizer.json. An
  end-of-text id of 2 would switch HF CLIP to legacy argmax pooling, so that id is swapped
  with the last vocabulary id in the embedding table, the config and the tokenizer.
  """
  if not isinstance(model, CLIPModel):
    raise CheckpointError(f'only CLIP models export to Hugging Face CLIP, not {type(model).__name__}')
  spec = model_spec(model)
  spec.update(vision=hf_tower('vision', spec['vision']), text=hf_tower('text', spec['text']))
  eot = spec['text'].get('eot_token_id')
  swap = None
  if eot == LEGACY_EOS:
    swap = (LEGACY_EOS, spec['text']['vocab_size'] - 1)
    spec['text'] = dict(spec['text'], eot_token_id=swap[1])
  new_id = lambda i: {swap[0]: swap[1], swap[1]: swap[0]}.get(i, i) if swap else i
  config = hf_clip_config(spec)
  params = load.flat(load.unbox(params))
  table = hf_clip_table(spec)
  missing = sorted(set(table) - set(params))
  if missing:
    raise CheckpointError(f'params lack {missing} needed for Hugging Face CLIP export')
  def tensor(path):
    src, kind = table[path]
    value = np.asarray(params[path], dtype=np.float32)
    if swap and path == 'textual/token_embed':
      value = value.copy()
      value[list(swap)] = value[list(swap[::-1])]
    return src, np.asarray(_transforms(_heads_for(path, spec))[kind][1](value), order='C')
  shapes = {}
  for path, (name, kind) in table.items():
    out = jax.eval_shape(_transforms(_heads_for(path, spec))[kind][1],
                         jax.ShapeDtypeStruct(params[path].shape, jnp.float32))
    shapes[name] = (out.shape, np.float32)
  os.makedirs(folder, exist_ok=True)
  if tokenizer is not None:
    config['text_config'].update(bos_token_id=new_id(tokenizer.sot_id),
                                 pad_token_id=new_id(tokenizer.pad_id))
    path = tokenizer.save(folder)
    if swap:
      with open(path) as f:
        swapped = swap_token_ids(json.load(f), *swap)
      with open(path, 'w') as f:
        json.dump(swapped, f, ensure_ascii=False)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
  write_safetensors(os.path.join(folder, 'model.safetensors'),
                    (tensor(path) for path in table), shapes, metadata={'format': 'pt'})
