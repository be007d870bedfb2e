"""Classification and retrieval metrics with one explicit tie rule.

Tie rule (both metrics): ties are broken against the truth. A query scores a hit at k
when fewer than k wrong candidates score at least as high as its best correct one. So a
collapsed model whose scores are all equal gets no credit (argmax/top-k by index order
would hand it the items that happen to come first), and the result does not depend on
the sort implementation. Without ties this equals the usual top-k definition
(CLIP_benchmark, open_clip).
"""
import numpy as np

RECALL_KS = (1, 5, 10)


def _wrong_at_least(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """Per row: how many candidates not marked `positive` score >= the best positive."""
  best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
  return np.sum((scores >= best) & ~positive, axis=1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int = None):
  """(scalars, per_class_accuracy) from [N, C] scores and int labels.

  scalars: top1, top5 (only with more than 5 classes, where it is not 1 by construction)
  and mean_per_class_recall (sklearn's balanced accuracy: mean top-1 recall over the
  classes present). per_class_accuracy: [C] top-1 recall, NaN for absent classes.
  """
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels, np.int64)
  num_classes = logits.shape[1] if num_classes is None else num_classes
  if logits.ndim != 2 or logits.shape != (len(labels), num_classes):
    raise ValueError(f'logits {logits.shape} do not match {len(labels)} labels x '
                     f'{num_classes} classes')
  if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must be in [0, {num_classes}), got {len(labels)} labels')
  positive = np.arange(num_classes)[None, :] == labels[:, None]
  rank = _wrong_at_least(logits, positive)
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels, weights=(rank < 1), minlength=num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(counts > 0, hits / counts, np.nan)
  scalars = {'top1': float(np.mean(rank < 1)),
             'mean_per_class_recall': float(np.nanmean(per_class))}
  if num_classes > 5:
    scalars['top5'] = float(np.mean(rank < 5))
  return scalars, per_class


def retrieval_ranks(image_emb, text_emb, text_to_image, chunk: int = 1024) -> tuple:
  """(text_to_image_rank [T], image_to_text_rank [N]): per caption, how many wrong images
  score at least as high as its own; per image, how many wrong captions score at least
  as high as its best own caption (-1 for an image without captions). Rank < k is a hit
  at k. Embeddings are L2-normalised here, so raw model outputs are fine."""
  image_emb = _normalize(image_emb)
  text_emb = _normalize(text_emb)
  text_to_image = np.asarray(text_to_image, np.int64)
  num_images = len(image_emb)
  if text_to_image.shape != (len(text_emb),):
    raise ValueError(f'text_to_image has shape {text_to_image.shape}, expected '
                     f'({len(text_emb)},) (one image index per caption)')
  if text_to_image.min() < 0 or text_to_image.max() >= num_images:
    raise ValueError(f'text_to_image indices must be in [0, {num_images})')
  t2i_rank = np.concatenate([
      _wrong_at_least(text_emb[s:s + chunk] @ image_emb.T,
                      text_to_image[s:s + chunk, None] == np.arange(num_images)[None])
      for s in range(0, len(text_emb), chunk)])
  captioned = np.unique(text_to_image)
  i2t_rank = np.full(num_images, -1, np.int64)
  i2t_rank[captioned] = np.concatenate([
      _wrong_at_least(image_emb[captioned[s:s + chunk]] @ text_emb.T,
                      captioned[s:s + chunk, None] == text_to_image[None])
      for s in range(0, len(captioned), chunk)])
  return t2i_rank, i2t_rank


def retrieval_metrics(image_emb, text_emb, text_to_image, ks=RECALL_KS, chunk: int = 1024) -> dict:
  """Recall@k both ways with several captions per image (cosine similarity).

  `text_to_image[j]` is the index of caption j's image. text_to_image_R@k: share of
  captions whose image ranks in the top k images. image_to_text_R@k: share of images
  (those with at least one caption) with at least one of their captions in the top k
  texts (`retrieval_ranks`).
  """
  return recalls(*retrieval_ranks(image_emb, text_emb, text_to_image, chunk), ks)


def recalls(t2i_rank, i2t_rank, ks=RECALL_KS) -> dict:
  """{'image_to_text_R@k', 'text_to_image_R@k'} from `retrieval_ranks`' output."""
  i2t_rank = np.asarray(i2t_rank)[np.asarray(i2t_rank) >= 0]
  out = {}
  for k in ks:
    out[f'image_to_text_R@{k}'] = float(np.mean(i2t_rank < k))
    out[f'text_to_image_R@{k}'] = float(np.mean(np.asarray(t2i_rank) < k))
  return out


def _normalize(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f'embeddings must be [N, D], got shape {x.shape}')
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
