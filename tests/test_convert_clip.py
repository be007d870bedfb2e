"""CLIP import/export against the PyTorch originals (transformers.CLIPModel) on tiny random models."""
import json
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import convert
from clipjax.convert import clip as convert_clip
from clipjax.convert import load
from clipjax.methods import l0
from clipjax.convert.io import CheckpointError, UnsafeCheckpointError, open_checkpoint, write_safetensors

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

EOS = 98
TOL = 4e-6  # README: "Outputs match the PyTorch models to < 4e-6 (float32)"


def tiny_config(act='gelu', width=32, heads=4, eos=EOS):
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=99, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=heads, max_position_embeddings=16, eos_token_id=eos,
                       hidden_act=act),
      vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=heads, image_size=16, patch_size=4, hidden_act=act),
      projection_dim=24)


def inputs():
  rng = np.random.RandomState(0)
  ids = rng.randint(0, EOS, (3, 16))
  ids[0, 5], ids[1, 15], ids[2, 3], ids[2, 9] = EOS, EOS, EOS, EOS  # Pool at the first EOS.
  images = rng.randn(2, 3, 16, 16).astype(np.float32)
  return ids, images


def torch_outputs(model, ids, images):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(images))
  return dict(image_emb=out.image_embeds.numpy(), text_emb=out.text_embeds.numpy(),
              logits=out.logits_per_image.numpy())


def our_outputs(model, params, ids, images):
  images = jnp.asarray(images.transpose(0, 2, 3, 1))
  ids = jnp.asarray(ids, jnp.int32)
  out = model.apply({'params': params}, images, ids)
  raw_image = model.apply({'params': params}, images, method='encode_image')
  raw_text = model.apply({'params': params}, ids, method='encode_text')
  for emb, raw in ((out['image_emb'], raw_image), (out['text_emb'], raw_text)):
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=-1, keepdims=True), atol=1e-5)
  logits = out['logit_scale'] * out['image_emb'] @ out['text_emb'].T
  return dict(image_emb=np.asarray(out['image_emb']), text_emb=np.asarray(out['text_emb']),
              logits=np.asarray(logits))


def assert_close(ours, ref, tol=TOL):
  for key in ref:
    err = np.abs(ours[key] - ref[key]).max()
    assert err < tol, (key, err)


@pytest.fixture(scope='module')
def hf_model():
  torch.manual_seed(0)
  model = transformers.CLIPModel(tiny_config()).eval()
  with torch.no_grad():  # Non-trivial norms and biases so a swapped tensor would show.
    for name, p in model.named_parameters():
      if 'norm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize('weights', ['safetensors', 'bin'])
def test_hf_import_matches_torch(hf_model, tmp_path, weights):
  hf_model.save_pretrained(tmp_path)
  if weights == 'bin':
    os.remove(tmp_path / 'model.safetensors')
    torch.save(hf_model.state_dict(), tmp_path / 'pytorch_model.bin')
  ids, images = inputs()
  model, params = convert_clip.load_hf_clip(str(tmp_path))
  assert model.text['eot_token_id'] == EOS and model.text['act'] == 'gelu'
  assert_close(our_outputs(model, params, ids, images), torch_outputs(hf_model, ids, images))


def test_hf_legacy_eos_pools_at_argmax(tmp_path):
  torch.manual_seed(1)
  hf = transformers.CLIPModel(tiny_config(act='quick_gelu', eos=2)).eval()
  hf.save_pretrained(tmp_path)
  ids, images = inputs()
  model, params = convert_clip.load_hf_clip(str(tmp_path))
  assert model.text['eot_token_id'] is None
  assert_close(our_outputs(model, params, ids, images), torch_outputs(hf, ids, images))


def test_export_loads_in_transformers(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path / 'in')
  model, params = convert_clip.load_hf_clip(str(tmp_path / 'in'))
  convert_clip.export_hf_clip(model, params, str(tmp_path / 'out'))
  reloaded = transformers.CLIPModel.from_pretrained(str(tmp_path / 'out')).eval()
  ids, images = inputs()
  assert_close(torch_outputs(reloaded, ids, images), torch_outputs(hf_model, ids, images), 1e-6)
  # And back again through our importer.
  model2, params2 = convert_clip.load_hf_clip(str(tmp_path / 'out'))
  assert_close(our_outputs(model2, params2, ids, images), torch_outputs(hf_model, ids, images))


def pruned_student(hf_model, tmp_path, heads, mlp_kept):
  """The HF model through our importer, structurally pruned (TinyCLIP's `l0.prune`) to
  `heads[i]` heads and a `mlp_kept[i]` fraction of MLP neurons in layer i of both towers."""
  hf_model.save_pretrained(tmp_path / 'in')
  model, params = convert_clip.load_hf_clip(str(tmp_path / 'in'))
  params = load.unbox(params)
  masks = {}
  for tower, spec in (('visual', model.vision), ('textual', model.text)):
    neurons = params[tower]['transformer']['block_0']['mlp']['fc1']['kernel'].shape[1]
    masks[tower] = dict(
        hidden=np.ones(spec['width'], np.float32),
        heads=np.stack([np.arange(spec['heads']) < h for h in heads]).astype(np.float32),
        intermediate=np.stack([np.arange(neurons) < f * neurons for f in mlp_kept]).astype(np.float32))
  pruned = l0.prune(params, masks)
  sizes = {tower: l0.pruned_sizes(pruned, tower) for tower in masks}
  return model.clone(vision=dict(model.vision, **sizes['visual']),
                     text=dict(model.text, **sizes['textual'])), pruned


def test_pruned_student_with_equal_layers_exports(hf_model, tmp_path):
  """HF CLIP has one MLP width per tower and width/heads-dim heads: a student whose layers
  kept equal MLP widths and all heads is an HF CLIP model."""
  student, params = pruned_student(hf_model, tmp_path, heads=(4, 4), mlp_kept=(0.5, 0.5))
  assert student.vision['layer_mlp'] == [32, 32]
  convert_clip.export_hf_clip(student, params, str(tmp_path / 'out'))
  reloaded = transformers.CLIPModel.from_pretrained(str(tmp_path / 'out')).eval()
  assert reloaded.config.text_config.intermediate_size == 19  # 37 neurons, half kept
  ids, images = inputs()
  assert_close(torch_outputs(reloaded, ids, images), our_outputs(student, params, ids, images), 1e-5)


@pytest.mark.parametrize('heads,mlp_kept,cause', [
    ((3, 2), (0.5, 0.5), r'vision tower: per-layer head counts \[3, 2\]'),
    ((2, 2), (0.5, 0.5), r'vision tower: 2 heads of 8 dims in a width of 32'),
    ((4, 4), (0.5, 0.75), r'vision tower: per-layer MLP widths \[32, 48\]')])
def test_pruned_student_with_unequal_layers_is_refused(hf_model, tmp_path, heads, mlp_kept, cause):
  student, params = pruned_student(hf_model, tmp_path, heads, mlp_kept)
  with pytest.raises(CheckpointError, match=cause):
    convert_clip.export_hf_clip(student, params, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def openai_state_dict(hf):
  """The HF model's weights under OpenAI CLIP / open_clip names (packed in_proj, proj [W, E])."""
  sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
  out = {'logit_scale': sd['logit_scale']}
  for ours, hf_prefix, layers in (('visual.transformer', 'vision_model', 2),
                                  ('transformer', 'text_model', 2)):
    for i in range(layers):
      src, dst = f'{hf_prefix}.encoder.layers.{i}', f'{ours}.resblocks.{i}'
      attn = f'{src}.self_attn'
      out[f'{dst}.attn.in_proj_weight'] = torch.cat(
          [sd[f'{attn}.{p}_proj.weight'] for p in 'qkv'])
      out[f'{dst}.attn.in_proj_bias'] = torch.cat([sd[f'{attn}.{p}_proj.bias'] for p in 'qkv'])
      for a, b in (('attn.out_proj', 'self_attn.out_proj'), ('ln_1', 'layer_norm1'),
                   ('ln_2', 'layer_norm2'), ('mlp.c_fc', 'mlp.fc1'), ('mlp.c_proj', 'mlp.fc2')):
        out[f'{dst}.{a}.weight'], out[f'{dst}.{a}.bias'] = sd[f'{src}.{b}.weight'], sd[f'{src}.{b}.bias']
  v, t = 'vision_model.', 'text_model.'
  out.update({
      'visual.conv1.weight': sd[v + 'embeddings.patch_embedding.weight'],
      'visual.class_embedding': sd[v + 'embeddings.class_embedding'],
      'visual.positional_embedding': sd[v + 'embeddings.position_embedding.weight'],
      'visual.ln_pre.weight': sd[v + 'pre_layrnorm.weight'],
      'visual.ln_pre.bias': sd[v + 'pre_layrnorm.bias'],
      'visual.ln_post.weight': sd[v + 'post_layernorm.weight'],
      'visual.ln_post.bias': sd[v + 'post_layernorm.bias'],
      'visual.proj': sd['visual_projection.weight'].T.contiguous(),
      'token_embedding.weight': sd[t + 'embeddings.token_embedding.weight'],
      'positional_embedding': sd[t + 'embeddings.position_embedding.weight'],
      'ln_final.weight': sd[t + 'final_layer_norm.weight'],
      'ln_final.bias': sd[t + 'final_layer_norm.bias'],
      'text_projection': sd['text_projection.weight'].T.contiguous(),
  })
  return out


class _Holder(torch.nn.Module):

  def forward(self, x):
    return x


def scripted_tree(state_dict):
  """A TorchScript module whose attribute tree carries `state_dict` (like OpenAI's .pt files)."""
  root = _Holder()
  for name, value in state_dict.items():
    *path, leaf = name.split('.')
    mod = root
    for part in path:
      if not hasattr(mod, part):
        mod.add_module(part, _Holder())
      mod = getattr(mod, part)
    mod.register_parameter(leaf, torch.nn.Parameter(value))
  getattr(root.transformer.resblocks, '0').attn_mask = torch.full((16, 16), float('-inf')).triu(1)
  return torch.jit.script(root)


@pytest.fixture(scope='module')
def quick_hf():
  torch.manual_seed(2)
  model = transformers.CLIPModel(tiny_config(act='quick_gelu', eos=2)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize('layout', ['torchscript', 'open_clip'])
def test_openai_and_open_clip_import(quick_hf, tmp_path, layout):
  sd = openai_state_dict(quick_hf)
  path = str(tmp_path / 'model.pt')
  if layout == 'torchscript':
    scripted_tree(sd).save(path)
  else:  # open_clip training checkpoints: DDP prefix inside a dict with other entries.
    torch.save({'epoch': 3, 'name': 'run', 'state_dict': {f'module.{k}': v for k, v in sd.items()}},
               path)
  model, params = convert_clip.load_openai_clip(
      path, vision_heads=4, text_heads=4, act='quick_gelu',
      layout='openai' if layout == 'torchscript' else 'open_clip')
  assert model.vision['image_size'] == 16 and model.text['eot_token_id'] is None
  ids, images = inputs()
  ids[:, -1] = EOS  # OpenAI pools at argmax(ids): make it the EOT position.
  assert_close(our_outputs(model, params, ids, images), torch_outputs(quick_hf, ids, images))


def test_open_clip_config_gives_act_and_heads(quick_hf, tmp_path):
  torch.save(openai_state_dict(quick_hf), tmp_path / 'open_clip_pytorch_model.bin')
  (tmp_path / 'open_clip_config.json').write_text(json.dumps(dict(model_cfg=dict(
      embed_dim=24, quick_gelu=True, vision_cfg=dict(width=32, head_width=8, layers=2),
      text_cfg=dict(width=32, heads=4, layers=2)))))
  assert convert.detect_format(str(tmp_path)) == 'open_clip'
  model, params, _ = convert.load_clip(str(tmp_path))
  assert (model.vision['act'], model.vision['heads'], model.text['heads']) == ('quick_gelu', 4, 4)
  ids, images = inputs()
  ids[:, -1] = EOS
  assert_close(our_outputs(model, params, ids, images), torch_outputs(quick_hf, ids, images))


class _RunsCode:

  def __reduce__(self):
    return (os.system, ('echo pwned > /dev/null',))


@pytest.mark.parametrize('zipped', [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path, zipped):
  path = str(tmp_path / 'evil.pt')
  torch.save({'weight': torch.zeros(2), 'payload': _RunsCode()}, path,
             _use_new_zipfile_serialization=zipped)
  with pytest.raises(UnsafeCheckpointError, match='evil.pt'):
    open_checkpoint(path)
  with open(path, 'wb') as f:  # A bare pickle too.
    pickle.dump(_RunsCode(), f, protocol=2)
  with pytest.raises(UnsafeCheckpointError, match='evil.pt'):
    open_checkpoint(path)


def _rewrite(src, dst, edit):
  with open_checkpoint(src) as reader:
    tensors = edit({n: reader.read(n) for n in reader.keys()})
  write_safetensors(dst, tensors.items())


def test_missing_or_misshapen_tensor_is_named(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  weights = str(tmp_path / 'model.safetensors')
  name = 'text_model.encoder.layers.1.mlp.fc1.weight'
  _rewrite(weights, weights, lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(CheckpointError, match=name.replace('.', r'\.')):
    convert_clip.load_hf_clip(str(tmp_path))
  hf_model.save_pretrained(tmp_path)
  _rewrite(weights, weights, lambda t: dict(t, **{name: t[name][:, :-1]}))
  with pytest.raises(CheckpointError, match=name.replace('.', r'\.') + r'.*needs \(32, 37\)'):
    convert_clip.load_hf_clip(str(tmp_path))
  hf_model.save_pretrained(tmp_path)
  q = 'vision_model.encoder.layers.0.self_attn.q_proj.weight'  # Fails its head split.
  _rewrite(weights, weights, lambda t: dict(t, **{q: t[q][:-1]}))
  with pytest.raises(CheckpointError, match=q.replace('.', r'\.') + r'.*\(31, 32\)'):
    convert_clip.load_hf_clip(str(tmp_path))
  hf_model.save_pretrained(tmp_path)
  _rewrite(weights, weights, lambda t: dict(t, extra=np.zeros(3, np.float32)))
  with pytest.raises(CheckpointError, match='unexpected tensors.*extra'):
    convert_clip.load_hf_clip(str(tmp_path))
  hf_model.save_pretrained(tmp_path)
  _rewrite(weights, weights, lambda t: dict(t, **{name: t[name].astype(np.int32)}))
  with pytest.raises(CheckpointError, match=name.replace('.', r'\.') + '.*dtype int32'):
    convert_clip.load_hf_clip(str(tmp_path))


def test_config_spec_round_trip(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  with open(tmp_path / 'config.json') as f:
    spec = convert_clip.hf_clip_spec(json.load(f))
  assert convert_clip.hf_clip_spec(convert_clip.hf_clip_config(spec)) == spec
  assert int(32 * spec['text']['mlp_ratio']) == 37
