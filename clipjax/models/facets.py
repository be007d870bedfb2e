"""Text embeddings from a frozen decoder LLM (FLAME, Cao et al. 2025; MIV-XJTU/FLAME
`multiprompteol_embeddings.py`).

A caption goes into a one-word prompt ("... means in just one word:\"", PromptEOL) and its
embedding is the hidden state of a chosen decoder layer at the prompt's closing token.
Several prompts ("facets": the main object, its pattern, the action, ...) follow one shared
caption prefix and are read in one forward pass: facet k sees the prefix and its own tokens
only, never another facet, and keeps its absolute positions (as released: the rotary
positions are not re-indexed, so facet k is not the same as facet k run alone).

Padding, a deliberate difference from the release: prompts are left-padded (the shared
suffix is right-aligned, so the facets' closing tokens sit at the same positions in every
row) and here pad tokens are masked out as keys and rotary positions count from a row's
first real token, so a caption's vectors do not depend on what it is batched with (they
equal the batch-of-one vectors the official evaluation computes). The release masks pad
*query rows* only and numbers positions from the first pad, so its batched offline
embeddings (batch 32) shift slightly with the batch's longest prompt.
"""
import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

QUESTIONS = (
    'this image description means in just one word:"',
    'the category of the main object in this image means in just one word:"',
    'the prominent characteristic or pattern of the main object in this image means in just '
    'one word:"',
    'the category of the minor object in this image means in just one word:"',
    'the prominent characteristic or pattern of the minor object in this image means in just '
    'one word:"',
    'the primary action or event taking place in this image means in just one word:"',
    'the overall atmosphere or emotion of this image means in just one word:"',
)
CAPTION = '*sent 0*'
# The released templates verbatim (underscores there are spaces here). '<s>' in the
# multi-facet ones is the tokenizer's BOS token, mid-sequence, opening facet 1.
TEMPLATES = {
    'single': (f'Image description : "{CAPTION}" . After thinking step by step , ' + QUESTIONS[0]),
    'short': (f'Image description : "{CAPTION}" . After thinking step by step , <s> '
              + ' '.join(QUESTIONS[:3])),
    'long': (f'Detailed Image description : "{CAPTION}" . After thinking step by step , <s> '
             + ' '.join(QUESTIONS)),
}
FACETS = {'single': 1, 'short': 3, 'long': 7}
# The shared prefix ends at this text's last token (the release finds it as token -10 of
# 'After thinking step by step , this image description means in just one word:"').
_SEPARATOR_TEXT = 'After thinking step by step ,'


def clean_caption(caption: str) -> str:
  """The release's caption clean-up: end with a full stop unless it ends with . ? " or ',
  double quotes become single, a final '?' becomes '.'."""
  if caption and caption[-1] not in '.?"\'':
    caption += '.'
  caption = caption.replace('"', "'")
  if caption and caption[-1] == '?':
    caption = caption[:-1] + '.'
  return caption


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a template's facets sit, counted from the end of every (left-padded) prompt:
  `ends` the closing tokens' offsets (negative, ascending), `prefix_end` the offset of the
  shared prefix's last token (None for one facet)."""
  ends: tuple
  prefix_end: int | None

  def allowed(self, length: int) -> np.ndarray:
    """bool [length, length]: causal attention with facets isolated from each other."""
    allowed = np.tril(np.ones((length, length), bool))
    if self.prefix_end is None:
      return allowed
    p = length + self.prefix_end
    ends = [length + e for e in self.ends]
    for k in range(1, len(ends)):
      allowed[ends[k - 1] + 1:ends[k] + 1, p + 1:ends[k - 1] + 1] = False
    return allowed


class FacetPrompts:
  """Captions -> left-padded prompt ids [N, max_length] for one template.

  tokenizer: a Hugging Face tokenizer of the LLM (adds BOS itself, parses '<s>');
  captions are cut to `max_caption_tokens` tokens first, as the release cuts them (1024)
  before templating."""

  def __init__(self, tokenizer, template: str = 'long', max_length: int = 512,
               max_caption_tokens: int = 1024, pad_id: int = 0):
    if template not in TEMPLATES:
      raise ValueError(f'unknown FLAME template {template!r}; known: {sorted(TEMPLATES)}')
    self.tokenizer, self.template = tokenizer, template
    self.max_length, self.max_caption_tokens, self.pad_id = max_length, max_caption_tokens, pad_id
    self.facets = FACETS[template]
    probe = self._ids([self._prompt('x.')])[0]
    self.suffix = self._suffix(probe)
    closing = probe[-1]
    ends = [i for i in range(len(probe) - len(self.suffix), len(probe)) if probe[i] == closing]
    if len(ends) != self.facets:
      raise ValueError(f'template {template!r}: found {len(ends)} closing tokens ({closing}) '
                       f'after the caption, expected {self.facets}; is ":\\"" one token?')
    ends = tuple(e - len(probe) for e in ends)
    prefix_end = None if self.facets == 1 else -len(self.suffix) - 1
    self.layout = Layout(ends, prefix_end)

  def _prompt(self, caption: str) -> str:
    return TEMPLATES[self.template].replace(CAPTION, clean_caption(caption)).strip()

  def _ids(self, prompts: Sequence[str]) -> list:
    return [list(ids) for ids in self.tokenizer(list(prompts))['input_ids']]

  def _suffix(self, probe: list) -> list:
    """The template's tokens after the shared prefix (one facet: its closing token), the
    same in every prompt (checked per caption)."""
    if self.facets == 1:
      return probe[-1:]
    separator = self.tokenizer([_SEPARATOR_TEXT], add_special_tokens=False)['input_ids'][0][-1]
    starts = [i for i, t in enumerate(probe) if t == separator]
    if not starts:
      raise ValueError(f'template {self.template!r}: separator token {separator} not found')
    return probe[starts[-1] + 1:]

  def _cut(self, caption: str) -> str:
    ids = self.tokenizer([caption], add_special_tokens=False)['input_ids'][0]
    if len(ids) <= self.max_caption_tokens:
      return caption
    return self.tokenizer.decode(ids[:self.max_caption_tokens], skip_special_tokens=True)

  def __call__(self, captions: Sequence[str]) -> tuple:
    """(ids int32 [N, T] left-padded, real bool [N, T]); T is the longest prompt rounded up
    to a multiple of 32 (a few shapes to compile), at most `max_length`."""
    prompts = [self._prompt(self._cut(c)) for c in captions]
    rows = self._ids(prompts)
    length = min(self.max_length, -(-max(map(len, rows)) // 32) * 32)
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    real = np.zeros(ids.shape, bool)
    n = len(self.suffix)
    for i, row in enumerate(rows):
      if len(row) > self.max_length:
        raise ValueError(f'prompt of {len(row)} tokens exceeds max_length={self.max_length} '
                         f'(caption {captions[i][:60]!r}...); raise max_length or lower '
                         f'max_caption_tokens ({self.max_caption_tokens})')
      if row[-n:] != self.suffix:
        raise ValueError(f'caption {captions[i][:60]!r}: the prompt does not end with the '
                         f'template {self.template!r} as tokenized alone')
      ids[i, length - len(row):] = row
      real[i, length - len(row):] = True
    return ids, real


def facet_inputs(layout: Layout, real) -> tuple:
  """(mask bool [B, 1, T, T], positions [B, T]) of left-padded prompts: the layout's facet
  isolation with pad keys masked (a pad row attends to itself only, so it stays finite),
  rotary positions counted from each row's first real token."""
  length = real.shape[-1]
  real = jnp.asarray(real, bool)
  mask = jnp.asarray(layout.allowed(length))[None] & real[:, None, :]
  positions = jnp.maximum(jnp.cumsum(real, axis=-1) - 1, 0)
  return (mask | jnp.eye(length, dtype=bool)[None])[:, None], positions


def facet_embeddings(llm, params, ids, real, layout: Layout, layer: int):
  """[B, K, W] hidden states of decoder layer `layer` (1-based: its output, before any
  later layer or the final norm) at each facet's closing token. `llm` is a
  `clipjax.models.llama.LlamaEncoder`; layers above `layer` are not run."""
  if not 1 <= layer <= llm.layers:
    raise ValueError(f'layer {layer} out of range [1, {llm.layers}] for this LLM')
  _, hidden = llm.clone(layers=layer).apply({'params': params}, ids,
                                            *facet_inputs(layout, real))
  ends = np.asarray(layout.ends) + ids.shape[-1]
  return hidden[layer][:, ends]
