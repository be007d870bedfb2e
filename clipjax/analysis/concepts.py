"""Concepts as sets of noun lemmas, the key of the caption-frequency index
("No 'Zero-Shot' Without Exponential Data", Udandarao et al. 2024, §2).

A caption holds a concept when it holds every one of the concept's terms, in any order
and position (the official AND over unigram postings). Captions and concepts go through
the same steps: lowercase, split into letter/digit runs, drop function words, and
lemmatise each word as a noun with lemminflect (an offline PyPI lemmatiser with its own
dictionary; words outside it get its suffix rules, the same on both sides, so a query
always finds the form captions were indexed under). A caption word with several noun
lemmas is indexed under all of them ('leaves': leaf and leave), a concept word queries
its first ('leaves' -> leave), so the concept 'leaf' finds captions saying 'leaves'.

Differences from the official code, on purpose:
  - no part-of-speech tagging: the official index keeps the tokens spaCy tags NOUN/PROPN
    in context, which needs a tagger model that is not on PyPI. Every content word is
    indexed, so "red" in "a red car" counts for the concept "red" (an adjective there),
    as a class name such as a colour needs; retrieval concepts keep the words that can
    be nouns (lemminflect's noun dictionary), which context-free also lets "sitting" in;
  - keys are lowercased on both sides (the official index keeps proper nouns' case while
    queries are lowercased, so "Paris" in a caption never matched the query "paris");
  - digits are kept ("7" is a class of digit sets), other characters split words.
"""
import functools
import re

import lemminflect
import numpy as np

_WORD = re.compile(r'[a-z0-9]+')
# Function words: never concept terms ("bird of prey" -> bird, prey). The official index
# drops them by part of speech; a concept made only of them keeps them (see `terms`).
STOPWORDS = frozenset("""
a an the and or but nor of in on at to for from by with without into onto over under
above below between among through during before after up down out off about against
is are was were be been being am has have had do does did this that these those it its
there here their they them he she his her we our you your i me my as than then so not
no yes very some any each every all both either neither other such own same few more
most much many one s t
""".split())


@functools.lru_cache(maxsize=1 << 20)
def lemmas(word: str) -> tuple:
  """A lowercase word's noun lemmas ('mice' -> mouse; 'leaves' -> leave, leaf); a word
  outside the dictionary gets one, by lemminflect's suffix rules."""
  return tuple(lemminflect.getLemma(word, upos='NOUN')) or (word,)


def lemma(word: str) -> str:
  return lemmas(word)[0]


@functools.lru_cache(maxsize=1 << 20)
def can_be_noun(word: str) -> bool:
  return bool(lemminflect.getAllLemmas(word, upos='NOUN'))


def words(text: str) -> list:
  return _WORD.findall(text.lower())


def caption_terms(caption: str) -> set:
  """Every noun lemma of a caption's content words: its keys in the index."""
  return {t for w in words(caption) if w not in STOPWORDS for t in lemmas(w)}


def terms(concept: str) -> tuple:
  """A concept's query terms, sorted and unique ('Sports cars' -> ('car', 'sport')).
  Underscores separate words, as in dataset class names; a concept of function words
  only keeps them, which then never match (captions drop them)."""
  found = words(concept.replace('_', ' '))
  content = [w for w in found if w not in STOPWORDS] or found
  if not content:
    raise ValueError(f'concept {concept!r} has no words (letters or digits)')
  return tuple(sorted({lemma(w) for w in content}))


def caption_concepts(captions_per_item, min_items: int = 10) -> list:
  """Retrieval concepts: the noun lemmas of an item's captions (their union per item; a
  word that can be a noun), kept when at least `min_items` items hold them (the official
  keeps a noun in >= 10 images)."""
  items = {}
  for captions in captions_per_item:
    held = {lemma(w) for c in captions for w in words(c)
            if w not in STOPWORDS and can_be_noun(w)}
    for term in held:
      items[term] = items.get(term, 0) + 1
  return sorted(t for t, n in items.items() if n >= min_items)


def concept_recall(concept_list, captions, text_to_image, text_to_image_rank,
                   image_to_text_rank, k: int = 1) -> dict:
  """{concept: {'text_to_image', 'image_to_text': recall@k, 'captions', 'images'}} from a
  retrieval evaluation's ranks (`clipjax.evaluate.metrics.retrieval_ranks`), as the
  official src/retrieval_eval.py: each caption counts its hit for every concept it holds,
  each image for every concept any of its captions holds. NaN where none does."""
  text_to_image = np.asarray(text_to_image, np.int64)
  t2i_hit = np.asarray(text_to_image_rank) < k
  i2t_rank = np.asarray(image_to_text_rank)
  held = [caption_terms(c) for c in captions]
  out = {}
  for concept in concept_list:
    wanted = set(terms(concept))
    rows = np.asarray([wanted <= h for h in held], bool)
    images = np.unique(text_to_image[rows])
    images = images[i2t_rank[images] >= 0]
    out[concept] = dict(
        text_to_image=float(t2i_hit[rows].mean()) if rows.any() else float('nan'),
        image_to_text=float((i2t_rank[images] < k).mean()) if len(images) else float('nan'),
        captions=int(rows.sum()), images=int(len(images)))
  return out
