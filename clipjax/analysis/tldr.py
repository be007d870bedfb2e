"""TL;DR data reduction (Wang et al., ICCV 2023; showlab/datacentric.vlp): keep the samples
that represent the data, drop the rest, and give the kept ones a second caption.

  python -m clipjax.data.make_shards --out data/tldr --synthetic 20000 --format array_record \\
      --misaligned 0.2 --duplicates 0.1
  python -m clipjax.analysis.tldr --config configs/tldr_quickstart.py --workdir runs/tldr
  python -m clipjax.main --config configs/quickstart.py --workdir runs/reduced \\
      --config.data.format=array_record --config.data.train='data/tldr/{00000..00019}.array_record' \\
      --config.data.subset=runs/tldr/manifest.json      # or data.train=the new shards

Over `config.data` (a random-access source: array_record, csv or synthetic), in workdir:
 1. captioner/: the codebook captioner (`clipjax.methods.tldr`, `config.captioner`)
    trained on the data by the loop (resumed, or read back when finished).
 2. alignment/: the image-text alignment model standing in for the release's unreleased
    BLIP ITM scores: `config.alignment.model`, any CLIP checkpoint `clipjax.convert` reads,
    or else a CLIP trained here from `config.alignment.train` and exported.
 3. codes/, scores/: per part of `part_size` samples, each image's code ids (the
    captioner's evaluation transform: resize and centre crop) and each pair's cosine under
    the alignment model. Codes are a feature pass over the mesh and every process; scores
    are computed by process p for parts p, p + P, ...; every part is written whole.
 4. manifest.json (`clipjax.data.manifest`, what `data.subset` reads): per image a
    representation of its codes, PCA-whitened to `pca_dim` (faiss's eigen_power -0.5)
    and L2-normalised, clustered by K-means (`clipjax.kmeans`, on the mesh); in each
    cluster a share keep_fraction / align_fraction of its members (`per_cluster`), kept
    where the pair is also among the top `align_fraction` of all pairs by alignment score. The kept share is
    about keep_fraction (the two cuts are independent; the manifest says what it is).
 5. captions/ and shards/ (with `recaption`): beam-searched captions of the kept images
    (`config.captioner.num_beams`, ...), stored as `original<separator>generated` (the
    release's '; ') in new shards of the kept samples, each written whole by process
    j mod P.

Every stage skips what a previous run finished and every file is written whole, so a
killed reduction, run again, writes the same manifest and shards (everything is a function
of the data and the config: the feature passes' transforms are deterministic, K-means is
seeded).

Chosen where the release differs or is silent (config keys under `selection`):
- `representation`: 'histogram' (default: the image's bag of codes, counts / tokens) or
  'ids' (the release: the token-ordered vector of code ids cast to float, which treats
  categorical ids as coordinates);
- `per_cluster`: 'stride' (the release: members in index order, every 1/share-th, i.e.
  range(0, n, N) for share 1/N) or 'quota' (default: as many from each cluster, taking one
  member of each set of images with identical codes before a second of any, so exact
  duplicates are dropped first);
- `pca_dim`: at most the representation's rank (the release asked faiss for 256 dims of a
  197-dim vector).
"""
import concurrent.futures
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from clipjax import analysis, kmeans
from clipjax.analysis import frequency
from clipjax.data import manifest, parts, pipeline, sources, transforms
from clipjax.train import loop

MANIFEST, REPORT = 'manifest.json', 'reduction.json'


def _sync(what: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'clipjax.analysis.tldr: {what}')


def _exist(paths: list) -> list:
  """Which of `paths` exist, as process 0 sees them: every process then makes the same
  collective calls."""
  found = np.asarray([p.exists() for p in paths], bool)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    found = np.asarray(multihost_utils.broadcast_one_to_all(found))
  return found.tolist()


def _stage(folder: Path, key: dict) -> Path:
  """`folder` for outputs derived from `key` (what they depend on); outputs of another
  key (another selection, other settings) are removed first."""
  record, text = folder / 'stage.json', json.dumps(key, sort_keys=True)
  if jax.process_index() == 0:
    if record.exists() and record.read_text() != text:
      shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not record.exists():
      record.write_text(text)
  _sync(f'{folder.name} prepared')
  return folder


def _plain(node) -> dict:
  return node.to_dict() if hasattr(node, 'to_dict') else dict(node or {})


def _digest(indices: np.ndarray) -> str:
  return hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()


def _save(path: Path, **arrays) -> None:
  """An .npz written whole (rename into place)."""
  tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def _with_data(run_config, data) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.data = ml_collections.ConfigDict(data.to_dict())
  config.data.subset = ''
  return config


# ------------------------------------------------------------------ models

def train_captioner(config, workdir: Path, alignment: str):
  """(trainer, state) of the captioner, trained to its last step first if need be; with
  `vision_from_alignment` its ViT starts from the alignment CLIP's image tower."""
  captioner = _with_data(config.captioner, config.data)
  if config.get('vision_from_alignment'):
    captioner.init_from = [dict(target='visual', src=alignment, subtree='visual',
                                ignore=('ln_post/.*', 'proj'))]
  trainer = loop.Trainer(captioner, workdir / 'captioner')
  trainer.train()
  return trainer, trainer.state


def alignment_model(config, workdir: Path) -> Path:
  """A CLIP checkpoint: `alignment.model`, or one trained here on the data."""
  if config.alignment.get('model'):
    return Path(config.alignment.model)
  return loop.train_and_export(_with_data(config.alignment.train, config.data),
                               workdir / 'alignment')


# ------------------------------------------------------------------ per-sample passes

def _part(workdir: Path, stage: str, n: int) -> Path:
  return workdir / stage / f'{n:06d}.npz'


def code_parts(trainer, state, plan: list, workdir: Path, bar=None) -> None:
  """codes/<n>.npz {'codes': int32 [n, T], 'valid'} for every part not yet written."""
  method, transform = trainer.method, _eval_transform(trainer)
  paths = [_part(workdir, 'codes', n) for n in range(len(plan))]
  for (_, where), path, done in zip(plan, paths, _exist(paths)):
    if not done:
      out = trainer.feature_pass(state, method.codes, np.asarray(where), transform=transform)
      if jax.process_index() == 0:
        _save(path, codes=out['codes'].astype(np.int32), valid=out['valid'])
    if bar is not None:
      bar.update(len(where))
  _sync('codes written')


def _eval_transform(trainer):
  """The captioner's batches without augmentation (resize and centre crop; resized in the
  feature pass with `data.canvas_size`, as its batches are declared): what codes and
  captions are read from."""
  c = trainer.config
  norm = {k: tuple(c.data[k]) for k in ('mean', 'std') if c.data.get(k) is not None}
  return transforms.ImageText(trainer.tokenizer, c.model.context_length, c.model.image_size,
                              canvas_size=c.data.get('canvas_size') or 0, **norm)


def score_parts(model: str, source, plan: list, workdir: Path, batch_size: int,
                threads: int = 16) -> None:
  """scores/<n>.npz {'scores': f32 [n] image-caption cosine, 'valid'} for this process's
  parts (n = p, p + P, ...) not yet written; images read by `threads` threads, encoded
  `batch_size` at a time on one device of this process."""
  todo = [n for n in range(jax.process_index(), len(plan), jax.process_count())
          if not _part(workdir, 'scores', n).exists()]
  if todo:
    encoder = frequency.clip_encoder(model, batch_size)
    size = encoder.image_size

    def read(i):
      record = source[i]
      if sources.SKIP_KEY in record:
        return None
      return transforms.to_size(record['image'], size), record['caption']

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for n in tqdm(todo, desc='alignment', unit='part', disable=jax.process_index() != 0):
        where = plan[n][1]
        scores = np.zeros(len(where), np.float32)
        valid = np.zeros(len(where), bool)
        for start in range(0, len(where), batch_size):
          rows = list(pool.map(read, where[start:start + batch_size]))
          ok = np.asarray([r is not None for r in rows])
          if ok.any():
            images = encoder.encode_images(np.stack([r[0] for r in rows if r is not None]))
            texts = encoder.encode_texts([r[1] for r in rows if r is not None])
            scores[start:start + len(rows)][ok] = np.sum(images * texts, axis=1)
          valid[start:start + len(rows)] = ok
        _save(_part(workdir, 'scores', n), scores=scores, valid=valid)
  _sync('scores written')


def read_parts(workdir: Path, stage: str, plan: list, key: str) -> tuple:
  """(values, valid) of a per-sample pass, concatenated over its parts."""
  values, valid = [], []
  for n in range(len(plan)):
    with np.load(_part(workdir, stage, n)) as part:
      values.append(part[key])
      valid.append(part['valid'])
  return np.concatenate(values), np.concatenate(valid)


# ------------------------------------------------------------------ selection

def representation(codes: np.ndarray, num_codes: int, kind: str) -> np.ndarray:
  """float32 [N, d] per image from its code ids [N, T]."""
  if kind == 'ids':
    return codes.astype(np.float32)
  if kind == 'histogram':
    flat = (np.arange(len(codes))[:, None] * num_codes + codes).reshape(-1)
    counts = np.bincount(flat, minlength=len(codes) * num_codes)
    return (counts.reshape(len(codes), num_codes) / codes.shape[1]).astype(np.float32)
  raise ValueError(f"selection.representation={kind!r}: use 'histogram' or 'ids'")


def pca_whiten(x: np.ndarray, dim: int, block: int = 65536) -> np.ndarray:
  """Centred, projected on the top `dim` principal axes (at most the rank), each scaled
  by eigenvalue ** -0.5 (faiss PCAMatrix(eigen_power=-0.5)), rows L2-normalised. The
  covariance is accumulated in float64 over row blocks."""
  mean = x.mean(axis=0, dtype=np.float64)
  cov = np.zeros((x.shape[1],) * 2)
  for s in range(0, len(x), block):
    d = x[s:s + block] - mean
    cov += d.T @ d
  eigval, eigvec = np.linalg.eigh(cov / len(x))
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  rank = int(np.sum(eigval > 1e-9 * max(eigval[0], 1e-30)))
  keep = max(1, min(dim, rank))
  proj = eigvec[:, :keep] / np.sqrt(np.maximum(eigval[:keep], 1e-30))
  y = (x - mean) @ proj
  y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
  return y.astype(np.float32)


def per_cluster(labels: np.ndarray, share: float, mode: str, groups=None) -> np.ndarray:
  """bool [N]: a `share` of every cluster's members. 'stride': members in index order,
  every 1/share-th (the release's range(0, n, N) when share = 1/N); 'quota':
  ceil(share * n) members, first occurrences of each `groups` value (e.g. identical
  codes) before second ones, in index order within each round."""
  if mode not in ('stride', 'quota'):
    raise ValueError(f"selection.per_cluster={mode!r}: use 'stride' or 'quota'")
  if not 0 < share <= 1:
    raise ValueError(f'per-cluster share {share} (selection.keep_fraction / align_fraction) '
                     'must be in (0, 1]')
  keep = np.zeros(len(labels), bool)
  order = np.argsort(labels, kind='stable')
  bounds = np.flatnonzero(np.diff(labels[order])) + 1
  for members in np.split(order, bounds):
    count = math.ceil(share * len(members) - 1e-9)
    if mode == 'stride':
      picks = members[np.floor(np.arange(count) / share + 1e-9).astype(np.int64)]
    else:
      group = np.zeros(len(members), np.int64) if groups is None else groups[members]
      seen = {}
      rounds = np.empty(len(members), np.int64)
      for k, g in enumerate(group):
        rounds[k] = seen.get(g, 0)
        seen[g] = rounds[k] + 1
      picks = members[np.lexsort((members, rounds))[:count]]
    keep[picks] = True
  return keep


def select(config, codes: np.ndarray, codes_valid, scores, scores_valid, mesh) -> dict:
  """{'keep': bool [N], 'labels': cluster per image, ...}: stage 4 on host arrays."""
  s = config.selection
  share = float(s.keep_fraction) / float(s.align_fraction)
  valid = codes_valid & scores_valid
  x = pca_whiten(representation(codes[valid], config.captioner.model.num_codes,
                                s.representation), int(s.pca_dim))
  k = min(int(s.clusters), int(valid.sum()))
  result = kmeans.kmeans(x, k, iterations=int(s.iterations), init=s.get('init', 'random'),
                         seed=int(s.seed), mesh=mesh)
  labels = np.full(len(codes), -1, np.int32)
  labels[valid] = result.labels
  _, groups = np.unique(codes, axis=0, return_inverse=True)
  clustered = np.zeros(len(codes), bool)
  clustered[valid] = per_cluster(result.labels, share, s.per_cluster, groups[valid].reshape(-1))
  threshold = np.quantile(scores[valid], 1.0 - float(s.align_fraction))
  aligned = valid & (scores >= threshold)
  return dict(keep=clustered & aligned, clustered=clustered, aligned=aligned, labels=labels,
              inertia=result.inertia, clusters=k, dims=x.shape[1], threshold=float(threshold))


# ------------------------------------------------------------------ recaptioning

def caption_parts(trainer, state, kept: np.ndarray, part_size: int, folder: Path) -> list:
  """folder/<n>.npz for parts of the kept indices -> every kept sample's caption."""
  method, transform = trainer.method, _eval_transform(trainer)
  chunks = [kept[s:s + part_size] for s in range(0, len(kept), part_size)]
  paths = [folder / f'{n:06d}.npz' for n in range(len(chunks))]
  out = []
  for chunk, path, done in tqdm(list(zip(chunks, paths, _exist(paths))), desc='captions',
                                unit='part', disable=jax.process_index() != 0):
    if not done:
      ids = trainer.feature_pass(state, method.captions, chunk, transform=transform)
      if jax.process_index() == 0:
        _save(path, indices=chunk, captions=np.asarray(method.decode_captions(ids['caption_ids'])))
      _sync(f'captions {path.name}')
    with np.load(path) as part:
      out.extend(part['captions'].tolist())
  return out


def _image_member(source, index: int) -> dict:
  """{extension: bytes} of the stored image, as stored (PNG-encoded for a synthetic one)."""
  raw = source.raw(index) if hasattr(source, 'raw') else None
  if raw is not None and sources.SKIP_KEY not in raw:
    for key, value in raw.items():
      if key.lower() in sources.IMAGE_EXTS:
        return {key.lower(): value}
    if 'img' in raw:  # a csv row's file: named by what it holds
      kind = Image.open(io.BytesIO(raw['img'])).format.lower()
      return {{'jpeg': 'jpg'}.get(kind, kind): raw['img']}
  buf = io.BytesIO()
  Image.fromarray(np.asarray(source[index]['image'])).save(buf, format='PNG')
  return {'png': buf.getvalue()}


def write_shards(source, kept: np.ndarray, originals: list, generated: list, out: Path,
                 shard_size: int, fmt: str, separator: str) -> str:
  """Shards of the kept samples, shard j written whole by process j mod P -> pattern."""
  out.mkdir(parents=True, exist_ok=True)
  count = -(-len(kept) // shard_size)
  ext = 'tar' if fmt == 'wds' else 'array_record'
  for j in range(jax.process_index(), count, jax.process_count()):
    path = out / f'{j:05d}.{ext}'
    if path.exists():
      continue
    tmp = out / f'.{j:05d}.{ext}.tmp{os.getpid()}'
    rows = range(j * shard_size, min((j + 1) * shard_size, len(kept)))
    samples = []
    for r in rows:
      i = int(kept[r])
      caption = originals[r] + separator + generated[r]
      meta = {'key': f'{i:09d}', 'index': i, 'caption': caption,
              'original_caption': originals[r], 'generated_caption': generated[r]}
      samples.append((f'{i:09d}', dict(_image_member(source, i), txt=caption,
                                       json=json.dumps(meta))))
    _write_shard(tmp, samples, fmt)
    os.replace(tmp, path)
  _sync('shards written')
  return str(out / f'{{00000..{count - 1:05d}}}.{ext}')


def _write_shard(path: Path, samples: list, fmt: str) -> None:
  if fmt == 'wds':
    with tarfile.open(path, 'w') as tar:
      for key, members in samples:
        for ext, value in members.items():
          data = value.encode('utf-8') if isinstance(value, str) else value
          info = tarfile.TarInfo(f'{key}.{ext}')
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    return
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  writer = array_record_module.ArrayRecordWriter(str(path), 'group_size:1')
  for key, members in samples:
    writer.write(sources.pack_record({'__key__': key, **members}))
  writer.close()


# ------------------------------------------------------------------ the command

def _caption_of(source, index: int) -> str:
  try:
    return source.caption(index) if hasattr(source, 'caption') else source[index]['caption']
  except (sources.BadSample, KeyError):
    return ''


def _job_identity(config: dict) -> dict:
  """A config as the reduction's job.json holds it: without `read_threads`, which changes
  how samples are read, never which (a job resumed with other read threads is the same)."""
  return {k: _job_identity(v) if isinstance(v, dict) else v
          for k, v in config.items() if k != 'read_threads'}


def run(config, workdir) -> dict:
  """The whole reduction on every process -> the reduction's summary (also REPORT)."""
  workdir = Path(workdir)
  for stage in ('codes', 'scores'):
    (workdir / stage).mkdir(parents=True, exist_ok=True)
  source = pipeline.make_source(_with_data(config.captioner, config.data).data,
                                image_size=config.captioner.model.image_size)
  if not hasattr(source, '__getitem__') or hasattr(source, 'shards'):
    raise ValueError(f'config.data: the reduction reads samples by index (array_record, csv, '
                     f'synthetic), got {source!r}; `python -m clipjax.data.make_shards '
                     '--format array_record` writes such shards')
  plan = parts.plan_parts(source, int(config.part_size))
  job = dict(data=_job_identity(config.data.to_dict()), part_size=int(config.part_size),
             vision_from_alignment=bool(config.get('vision_from_alignment')),
             batch_size=int(config.get('batch_size', 256)),
             captioner=_job_identity(config.captioner.to_dict()),
             alignment=config.alignment.to_dict())
  parts.check_job(workdir, job, create=True, what='reduction')
  model = alignment_model(config, workdir)
  trainer, state = train_captioner(config, workdir, str(model))
  with tqdm(total=len(source), desc='codes', unit='img',
            disable=jax.process_index() != 0) as bar:
    code_parts(trainer, state, plan, workdir, bar)
  score_parts(str(model), source, plan, workdir, int(config.get('batch_size', 256)))
  codes, codes_valid = read_parts(workdir, 'codes', plan, 'codes')
  scores, scores_valid = read_parts(workdir, 'scores', plan, 'scores')
  chosen = select(config, codes, codes_valid, scores, scores_valid, trainer.mesh)
  kept = np.flatnonzero(chosen['keep'])
  if not len(kept):
    raise ValueError(f'the selection kept no samples of {len(source)} ({config.selection})')
  summary = dict(num_samples=len(source), data=config.data.get('train', ''), kept=len(kept), kept_fraction=len(kept) / len(source),
                 unreadable=int(np.sum(~(codes_valid & scores_valid))),
                 in_clusters=int(chosen['clustered'].sum()), aligned=int(chosen['aligned'].sum()),
                 clusters=chosen['clusters'], pca_dims=chosen['dims'],
                 inertia=chosen['inertia'], score_threshold=chosen['threshold'],
                 selection=config.selection.to_dict(),
                 # as given, or relative to the workdir when trained in it
                 alignment_model=str(model.relative_to(workdir) if model.is_relative_to(workdir)
                                     else model))
  if jax.process_index() == 0:
    manifest.write_manifest(str(workdir / MANIFEST), kept, **summary)
    _save(workdir / 'selection.npz', labels=chosen['labels'], scores=scores,
          clustered=chosen['clustered'], aligned=chosen['aligned'])
  _sync('manifest written')
  r = config.get('recaption') or {}
  if r.get('enabled', True):
    captions = _stage(workdir / 'captions', dict(kept=_digest(kept), part_size=int(config.part_size),
                                                 generation=_plain(config.captioner.get('captioner'))))
    generated = caption_parts(trainer, state, kept, int(config.part_size), captions)
    originals = [_caption_of(source, int(i)) for i in kept]
    shards = _stage(workdir / 'shards', dict(kept=_digest(kept), recaption=_plain(r),
                                             generation=_plain(config.captioner.get('captioner'))))
    summary['shards'] = write_shards(source, kept, originals, generated, shards,
                                     int(r.get('shard_size', 1000)), r.get('format', 'array_record'),
                                     r.get('separator', '; '))
    summary['examples'] = [dict(index=int(i), original=o, generated=g)
                           for i, o, g in list(zip(kept, originals, generated))[:5]]
  if jax.process_index() == 0:
    from clipjax.evaluate import report  # pylint: disable=g-import-not-at-top
    report.atomic_write(workdir / REPORT, json.dumps(summary, indent=1))
  return summary


def run_job(config, workdir) -> dict:
  """`run` after joining the other processes of a multi-process launch (launch/)."""
  from clipjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  return run(config, workdir)


def show(summary: dict, workdir: Path) -> None:
  if jax.process_index():
    return
  print(f'kept {summary["kept"]} of {summary["num_samples"]} samples '
        f'({summary["kept_fraction"]:.1%}): {workdir / MANIFEST}')
  if 'shards' in summary:
    print(f'recaptioned shards: --config.data.train={summary["shards"]}')
    for row in summary['examples'][:3]:
      print(f'  {row["index"]}: {row["original"]!r} -> {row["generated"]!r}')


if __name__ == '__main__':
  analysis.run_cli(run_job, show, 'TL;DR reduction')
