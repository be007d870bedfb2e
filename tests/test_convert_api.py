"""Notebook API (load_clip, load_params), the CLI, format detection and host memory of a load."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import convert
from clipjax.convert import __main__ as cli
from clipjax.convert import clip as convert_clip
from clipjax.convert.io import write_safetensors
from clipjax.data.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ['a red square on a blue field', 'two green circles', 'a small yellow triangle',
            'a blue circle above a red square']


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory):
  """A tiny random HF CLIP folder with a tokenizer.json whose eot is the model's eos."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  folder = tmp_path_factory.mktemp('hf')
  tokenizer = Tokenizer.train(CAPTIONS * 4, vocab_size=300)
  tokenizer.save(folder)
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                       eos_token_id=tokenizer.eot_id),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=16, patch_size=4),
      projection_dim=24)
  hf = transformers.CLIPModel(config).eval()
  hf.save_pretrained(folder)
  ids = tokenizer(CAPTIONS, context_length=16)
  images = np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=torch.tensor(images))
  reference = dict(images=images, logits=out.logits_per_image.numpy(),
                   text_emb=out.text_embeds.numpy())
  return str(folder), reference


def logits_of(model, params, tokenizer, images):
  ids = jnp.asarray(tokenizer(CAPTIONS, context_length=16))
  out = model.apply({'params': params}, jnp.asarray(images.transpose(0, 2, 3, 1)), ids)
  return np.asarray(out['logit_scale'] * out['image_emb'] @ out['text_emb'].T)


def test_load_clip_gives_model_params_tokenizer(hf_folder):
  folder, ref = hf_folder
  assert convert.detect_format(folder) == 'hf'
  model, params, tokenizer = convert.load_clip(folder)
  assert isinstance(tokenizer, Tokenizer)
  assert np.abs(logits_of(model, params, tokenizer, ref['images']) - ref['logits']).max() < 1e-4


def test_cli_round_trip_through_native_and_hf(hf_folder, tmp_path):
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  folder, ref = hf_folder
  cli.main(['--from', 'hf', folder, '--to', str(tmp_path / 'native')])
  assert convert.detect_format(str(tmp_path / 'native')) == 'clipjax'
  model, params, tokenizer = convert.load_clip(str(tmp_path / 'native'))
  assert np.abs(logits_of(model, params, tokenizer, ref['images']) - ref['logits']).max() < 1e-4
  cli.main(['--from', 'auto', str(tmp_path / 'native'), '--to', str(tmp_path / 'hf')])
  hf = transformers.CLIPModel.from_pretrained(str(tmp_path / 'hf')).eval()
  ids = Tokenizer.load(str(tmp_path / 'hf'))(CAPTIONS, context_length=16)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=torch.tensor(ref['images']))
  assert np.abs(out.logits_per_image.numpy() - ref['logits']).max() < 1e-4


def test_load_params_initialises_a_tower(hf_folder):
  folder, _ = hf_folder
  model, params, _ = convert.load_clip(folder)
  target = convert_clip.clip_target(model)['visual']
  visual = convert.load_params(folder, target, subtree='visual')
  for a, b in zip(jax.tree.leaves(visual), jax.tree.leaves(params['visual'])):
    np.testing.assert_array_equal(a, b)
  wider = convert_clip.clip_target(convert_clip.build(dict(
      convert_clip.model_spec(model), vision=dict(model.vision, width=48))))['visual']
  with pytest.raises(convert.CheckpointError, match=r'visual|ln_pre/scale: checkpoint \(32,\)'):
    convert.load_params(folder, wider, subtree='visual')
  with pytest.raises(convert.CheckpointError, match="no subtree 'vision'"):
    convert.load_params(folder, target, subtree='vision')


MEASURE = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp
    from clipjax.convert import llama

    def status(key):  # VmHWM: this process's peak resident memory (reset at exec, unlike ru_maxrss).
      for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
          return int(line.split()[1]) * 1024

    jnp.ones(3).block_until_ready()
    base = status('VmRSS')
    _, params = llama.load_llama(sys.argv[1])
    jax.block_until_ready(params)
    print(base, status('VmHWM'), status('VmRSS'))
''')


@pytest.mark.slow
def test_peak_host_memory_of_a_300mb_load(tmp_path):
  """Streaming placement: peak memory above the idle process stays under 1.3x the file."""
  config = dict(model_type='llama', vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2)
  (tmp_path / 'config.json').write_text(json.dumps(config))
  shapes = {'model.embed_tokens.weight': (8192, 1024), 'model.norm.weight': (1024,)}
  for i in range(6):
    p = f'model.layers.{i}.'
    shapes.update({p + 'self_attn.q_proj.weight': (1024, 1024), p + 'self_attn.k_proj.weight': (256, 1024),
                   p + 'self_attn.v_proj.weight': (256, 1024), p + 'self_attn.o_proj.weight': (1024, 1024),
                   p + 'mlp.gate_proj.weight': (2816, 1024), p + 'mlp.up_proj.weight': (2816, 1024),
                   p + 'mlp.down_proj.weight': (1024, 2816), p + 'input_layernorm.weight': (1024,),
                   p + 'post_attention_layernorm.weight': (1024,)})
  rng = np.random.default_rng(0)
  path = tmp_path / 'model.safetensors'
  write_safetensors(str(path), ((n, rng.standard_normal(s, np.float32)) for n, s in shapes.items()),
                    {n: (s, np.float32) for n, s in shapes.items()})
  size = os.path.getsize(path)
  assert size > 250e6
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run([sys.executable, '-c', MEASURE, str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  base, peak, final = map(int, out.stdout.split()[-3:])
  growth = peak - base
  print(f'file {size / 1e6:.0f} MB; host memory: idle {base / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB '
        f'(+{growth / 1e6:.0f} MB = {growth / size:.2f}x file), after load {final / 1e6:.0f} MB')
  assert growth < 1.3 * size


def test_native_folder_round_trips_bert_and_llama(tmp_path):
  """Every importable model also saves to, and reloads from, our own folder format."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  transformers.Qwen2Model(transformers.Qwen2Config(
      vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
      num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / 'qwen')
  transformers.BertModel(transformers.BertConfig(
      vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=24, max_position_embeddings=8)).save_pretrained(tmp_path / 'bert')
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 32, (2, 6)), jnp.int32)
  for name in ('qwen', 'bert'):
    model, params, _ = convert.load_model(str(tmp_path / name))
    cli.main(['--from', 'auto', str(tmp_path / name), '--to', str(tmp_path / f'{name}-native')])
    model2, params2, _ = convert.load_model(str(tmp_path / f'{name}-native'))
    assert model2 == model
    np.testing.assert_array_equal(model.apply({'params': params}, ids)[0],
                                  model2.apply({'params': params2}, ids)[0])


@pytest.mark.parametrize('vocab_padding', [0, 5])
def test_export_of_a_model_trained_with_our_tokenizer(tmp_path, vocab_padding):
  """Our BPE's eot id is 2, which HF CLIP reads as 'pool at argmax(ids)': export swaps it."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from clipjax.models import build_clip  # pylint: disable=g-import-not-at-top
  tokenizer = Tokenizer.train(CAPTIONS * 4, vocab_size=300)
  assert tokenizer.eot_id == 2
  model = build_clip('tiny', vocab_size=tokenizer.vocab_size + vocab_padding, context_length=16,
                     eot_token_id=tokenizer.eot_id)
  images = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  ids = tokenizer(CAPTIONS, context_length=16)
  boxed = model.init(jax.random.PRNGKey(0), jnp.asarray(images), jnp.asarray(ids))['params']
  ours = model.apply({'params': boxed}, jnp.asarray(images), jnp.asarray(ids))
  logits = np.asarray(ours['logit_scale'] * ours['image_emb'] @ ours['text_emb'].T)
  convert.export_hf_clip(model, boxed, str(tmp_path), tokenizer)
  hf = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
  exported_tokenizer = Tokenizer.load(str(tmp_path))
  hf_ids = exported_tokenizer(CAPTIONS, context_length=16)
  assert hf.config.text_config.eos_token_id == exported_tokenizer.eot_id == model.text['vocab_size'] - 1
  last = model.text['vocab_size'] - 1
  np.testing.assert_array_equal(np.select([ids == 2, ids == last], [last, 2], ids), hf_ids)
  assert exported_tokenizer.decode(hf_ids[0]) == tokenizer.decode(ids[0])
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(hf_ids, dtype=torch.long),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  assert np.abs(out.logits_per_image.numpy() - logits).max() < 1e-4


def test_init_params_replaces_only_the_named_towers(hf_folder):
  """The train-init hook: image tower from a checkpoint, text tower fresh; a whole teacher."""
  folder, _ = hf_folder
  model, converted, _ = convert.load_clip(folder)
  fresh = jax.tree.map(lambda s: jnp.full(s.shape, 7.0, s.dtype),
                       convert.load.unbox(convert_clip.clip_target(model)))
  state = {'student': fresh, 'teacher': fresh}
  out = convert.init_params(state, [dict(target='student/visual', src=folder, subtree='visual'),
                                    dict(target='teacher', src=folder, format='hf')])
  for tree, ref in ((out['student']['visual'], converted['visual']),
                    (out['teacher'], converted)):
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(a, b)
  assert all((np.asarray(x) == 7.0).all() for x in jax.tree.leaves(out['student']['textual']))
  with pytest.raises(convert.CheckpointError, match="names no parameters"):
    convert.init_params(state, [dict(target='student/vision', src=folder)])
