"""Llama-family import against transformers (Llama and Mistral with GQA, Qwen2 with qkv bias)."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.convert import llama as convert_llama

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TOL = 4e-6  # README: "Outputs match the PyTorch models to < 4e-6 (float32)"
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)


def save_tiny(kind, path, **extra):
  torch.manual_seed(0)
  config_cls, model_cls = {
      'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM),
      'mistral': (transformers.MistralConfig, transformers.MistralForCausalLM),
      'qwen2': (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
  hf = model_cls(config_cls(**TINY, **extra)).eval()
  with torch.no_grad():  # Layers that change the residual stream, so errors would show.
    for name, p in hf.named_parameters():
      if 'norm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
      else:
        p.mul_(10.0)
  hf.save_pretrained(path)
  return hf


def inputs():
  rng = np.random.RandomState(0)
  ids = rng.randint(0, 64, (2, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0  # Right padding.
  return ids, mask


@pytest.mark.parametrize('kind,extra', [
    ('llama', dict(rope_theta=500000.0)),
    ('llama', dict(attention_bias=True, head_dim=16)),
    ('mistral', dict(sliding_window=64)),
    ('qwen2', dict()),
])
def test_hidden_states_match_torch(tmp_path, kind, extra):
  hf = save_tiny(kind, tmp_path, **extra)
  model, params = convert_llama.load_llama(str(tmp_path))
  assert model.kv_heads == 2 and model.qkv_bias == (kind == 'qwen2' or 'attention_bias' in extra)
  ids, mask = inputs()
  with torch.no_grad():
    ref = hf.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   output_hidden_states=True)
  last, hidden = model.apply({'params': params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
  real = mask[..., None]
  assert np.abs((np.asarray(last) - ref.last_hidden_state.numpy()) * real).max() < TOL
  # HF lists the embeddings and each layer's output, the last one after the final norm.
  assert len(ref.hidden_states) == len(hidden) == 4
  for ours, theirs in zip(hidden[:-1], ref.hidden_states[:-1]):
    assert np.abs((np.asarray(ours) - theirs.numpy()) * real).max() < TOL


def test_bfloat16_sharded_checkpoint(tmp_path):
  """Published decoders are bf16 and split over several files with an index."""
  hf = save_tiny('qwen2', tmp_path / 'f32')
  hf.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16', max_shard_size='20KB')
  assert (tmp_path / 'bf16' / 'model.safetensors.index.json').exists()
  model, params = convert_llama.load_llama(str(tmp_path / 'bf16'), param_dtype=jnp.bfloat16)
  _, reference = convert_llama.load_llama(str(tmp_path / 'f32'))
  for path in ('token_embed', 'layer_1/key/bias', 'layer_2/down/kernel'):
    ours, ref = params, reference
    for key in path.split('/'):
      ours, ref = ours[key], ref[key]
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(ours, np.asarray(ref).astype(jnp.bfloat16))
  ids, _ = inputs()
  last, _ = model.apply({'params': params}, jnp.asarray(ids))
  assert last.dtype == jnp.float32 and np.isfinite(last).all()


def test_custom_mask_separates_segments(tmp_path):
  """A block-diagonal causal mask (FLAME-style facets) equals encoding each segment alone."""
  save_tiny('llama', tmp_path)
  model, params = convert_llama.load_llama(str(tmp_path))
  ids = np.random.RandomState(1).randint(0, 64, (1, 10))
  seg = np.array([0] * 4 + [1] * 6)
  mask = (seg[:, None] == seg[None, :]) & np.tri(10, dtype=bool)
  positions = np.concatenate([np.arange(4), np.arange(6)])[None]
  last, _ = model.apply({'params': params}, jnp.asarray(ids), jnp.asarray(mask[None, None]),
                        jnp.asarray(positions))
  first, _ = model.apply({'params': params}, jnp.asarray(ids[:, :4]))
  second, _ = model.apply({'params': params}, jnp.asarray(ids[:, 4:]))
  np.testing.assert_allclose(last, np.concatenate([first, second], axis=1), atol=1e-5)


def test_unsupported_config_is_refused(tmp_path):
  with pytest.raises(ValueError, match='rope_type'):
    convert_llama.llama_spec(dict(model_type='llama', rope_parameters=dict(rope_type='llama3')))
  with pytest.raises(ValueError, match='gemma'):
    convert_llama.llama_spec(dict(model_type='gemma'))


SHARDED = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, numpy as np
    from clipjax import sharding
    from clipjax.convert import llama as convert_llama
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    path = sys.argv[1]
    _, plain = convert_llama.load_llama(path)
    _, sharded = convert_llama.load_llama(path, mesh=mesh)
    q = sharded['layer_0']['query']['kernel']
    assert q.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor', None), q.sharding
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 2, 8)
    emb = sharded['token_embed']
    assert emb.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp'), emb.sharding
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print('OK')
''')


def test_streams_onto_mesh_shardings(tmp_path):
  save_tiny('llama', tmp_path)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run([sys.executable, '-c', SHARDED, str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
