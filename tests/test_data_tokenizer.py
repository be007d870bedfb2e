"""Tokenizer: trained BPE, save/load, special-token detection, CLIP-style packing."""
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from clipjax.data import shapes
from clipjax.data.tokenizer import Tokenizer

CAPTIONS = shapes.ShapesSource('train', 2000).captions()


@pytest.fixture(scope='module')
def tok():
  return Tokenizer.train(CAPTIONS, vocab_size=1024)


def test_trained_specials_and_round_trip(tok):
  assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2)
  assert 256 < tok.vocab_size <= 1024
  for text in CAPTIONS[:50] + ['Hello, Wörld! A RED ✓ circle']:
    assert tok.decode(tok.encode(text)).strip() == text.lower()
  # Frequent caption words become single tokens.
  assert len(tok.encode('a red circle')) == 3


def test_call_packs_sot_tokens_eot_pad(tok):
  texts = ['a red circle on the left', 'a blue ring']
  out = tok(texts, context_length=16)
  assert out.dtype == np.int32 and out.shape == (2, 16)
  for row, text in zip(out, texts):
    ids = tok.encode(text)
    np.testing.assert_array_equal(row[:len(ids) + 2], [1] + ids + [2])
    assert (row[len(ids) + 2:] == tok.pad_id).all()


def test_truncation_keeps_eot(tok):
  text = ' '.join(CAPTIONS[:20])
  out = tok([text], context_length=8)[0]
  np.testing.assert_array_equal(out, [1] + tok.encode(text)[:6] + [2])
  with pytest.raises(ValueError, match='context_length'):
    tok(['a'], context_length=1)


def test_save_load_round_trip(tok, tmp_path):
  folder = tmp_path / 'run'
  tok.save(folder)
  loaded = Tokenizer.load(folder)
  also = Tokenizer.load(folder / 'tokenizer.json')
  for t in (loaded, also):
    assert (t.pad_id, t.sot_id, t.eot_id, t.vocab_size) == (0, 1, 2, tok.vocab_size)
    np.testing.assert_array_equal(t(CAPTIONS[:100], 32), tok(CAPTIONS[:100], 32))


def _wordlevel(specials, extra_words=('a', 'red', 'circle')):
  vocab = {w: i for i, w in enumerate(list(extra_words) + list(specials))}
  t = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=extra_words[0]))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  t.add_special_tokens(list(specials))
  return t


def test_load_clip_convention_ignores_files_post_processor(tmp_path):
  raw = _wordlevel(['<|startoftext|>', '<|endoftext|>'])
  # Like OpenAI CLIP's tokenizer.json: its own template adds bos/eos and pads.
  raw.post_processor = processors.TemplateProcessing(
      single='<|startoftext|> $A <|endoftext|>',
      special_tokens=[('<|startoftext|>', 3), ('<|endoftext|>', 4)])
  raw.enable_padding(pad_id=4, pad_token='<|endoftext|>', length=77)
  raw.save(str(tmp_path / 'tokenizer.json'))
  tok = Tokenizer.load(tmp_path)
  assert (tok.sot_id, tok.eot_id, tok.pad_id) == (3, 4, 0)  # open_clip pads with 0
  np.testing.assert_array_equal(tok(['a red circle'], 7)[0], [3, 0, 1, 2, 4, 0, 0])


def test_load_bert_and_llama_conventions(tmp_path):
  for name, specials, expected in [
      ('bert', ['[PAD]', '[CLS]', '[SEP]'], (4, 5, 3)),
      ('llama', ['<pad>', '<s>', '</s>'], (4, 5, 3))]:
    path = tmp_path / f'{name}.json'
    _wordlevel(specials).save(str(path))
    tok = Tokenizer.load(path)
    assert (tok.sot_id, tok.eot_id, tok.pad_id) == expected, name


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    Tokenizer.load(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='tokenizer.json'):
    Tokenizer.load(tmp_path)
  _wordlevel(['[UNK]']).save(str(tmp_path / 'odd.json'))
  with pytest.raises(ValueError, match='odd.json'):
    Tokenizer.load(tmp_path / 'odd.json')
