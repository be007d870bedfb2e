"""Text tokenizer over Hugging Face `tokenizers`: a BPE trained on our captions, or any
local `tokenizer.json` (e.g. an OpenAI CLIP tokenizer folder).

Output follows CLIP: [sot, tokens..., eot, pad...] of a fixed context length; the
text tower pools at the first eot, so eot is kept even when the text is truncated.
"""
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

PAD, SOT, EOT = '<pad>', '<sot>', '<eot>'
# (sot, eot, pad) spellings of the conventions we recognise, in priority order.
_SPECIAL_CONVENTIONS = (
    (SOT, EOT, PAD),
    ('<|startoftext|>', '<|endoftext|>', None),  # OpenAI CLIP; open_clip pads with 0
    ('[CLS]', '[SEP]', '[PAD]'),  # BERT family
    ('<s>', '</s>', '<pad>'),  # RoBERTa / T5 / Llama family
)
_PAD_FALLBACKS = ('<pad>', '[PAD]', '<|pad|>', '<|padding|>')


def _tokenizer_file(path: str) -> str:
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'tokenizer.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'No tokenizer file at {path!r}: give a tokenizer.json or a folder containing one.')
  return path


class Tokenizer:
  """Wraps a `tokenizers.Tokenizer` with the special ids CLIP-style text needs."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, pad_id: int, sot_id: int,
               eot_id: int):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self._tok = tokenizer
    self.pad_id, self.sot_id, self.eot_id = int(pad_id), int(sot_id), int(eot_id)

  @classmethod
  def train(cls, texts, vocab_size: int = 1024) -> 'Tokenizer':
    """Byte-level BPE (lowercased) with <pad>=0, <sot>=1, <eot>=2."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, SOT, EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return cls(tok, pad_id=tok.token_to_id(PAD), sot_id=tok.token_to_id(SOT),
               eot_id=tok.token_to_id(EOT))

  @classmethod
  def load(cls, path) -> 'Tokenizer':
    """Loads a tokenizer.json (or a folder with one), detecting its special tokens."""
    file = _tokenizer_file(path)
    tok = tokenizers.Tokenizer.from_file(file)
    for sot, eot, pad in _SPECIAL_CONVENTIONS:
      sot_id, eot_id = tok.token_to_id(sot), tok.token_to_id(eot)
      if sot_id is None or eot_id is None:
        continue
      pad_id = tok.token_to_id(pad) if pad else None
      for name in _PAD_FALLBACKS:
        pad_id = tok.token_to_id(name) if pad_id is None else pad_id
      return cls(tok, pad_id=0 if pad_id is None else pad_id, sot_id=sot_id, eot_id=eot_id)
    known = ', '.join(f'{s}/{e}' for s, e, _ in _SPECIAL_CONVENTIONS)
    raise ValueError(f'{file}: no start/end-of-text tokens found; expected one of {known}.')

  def save(self, path) -> str:
    """Writes tokenizer.json (into `path` if it is a folder or has no .json suffix),
    atomically: a run killed mid-write must not leave a truncated vocabulary to resume with."""
    path = os.fspath(path)
    if not path.endswith('.json'):
      os.makedirs(path, exist_ok=True)
      path = os.path.join(path, 'tokenizer.json')
    self._tok.save(path + '.tmp')
    os.replace(path + '.tmp', path)
    return path

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list:
    """Token ids of `text` without special tokens."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    specials = {self.pad_id, self.sot_id, self.eot_id}
    return self._tok.decode([int(i) for i in ids if int(i) not in specials]).strip()

  def __call__(self, texts, context_length: int) -> np.ndarray:
    """int32 [N, context_length]: sot + tokens (truncated) + eot, then pad_id."""
    if context_length < 2:
      raise ValueError(f'context_length must be >= 2 (sot and eot), got {context_length}')
    if isinstance(texts, str):
      texts = [texts]
    out = np.full((len(texts), context_length), self.pad_id, np.int32)
    texts = list(texts)
    # One caption (the loader's per-sample call) skips encode_batch's thread-pool dispatch.
    encodings = ([self._tok.encode(texts[0], add_special_tokens=False)] if len(texts) == 1
                 else self._tok.encode_batch(texts, add_special_tokens=False))
    for row, enc in zip(out, encodings):
      ids = enc.ids[:context_length - 2]
      row[0] = self.sot_id
      row[1:len(ids) + 1] = ids
      row[len(ids) + 1] = self.eot_id
    return out
