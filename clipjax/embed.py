"""Offline text embeddings from a frozen decoder LLM (FLAME): every training caption's
facet vectors, computed once so training never holds the LLM.

  python -m clipjax.embed --config configs/flame_quickstart.py:embed --workdir runs/flame_text

`config.embed.captions` lists what each sample gets: (record field, template) pairs, e.g.
the alt-text with the single prompt and a long recaption (an extra column) with the
7-facet prompt, 1 + 7 vectors per sample (the release stores 11: raw, 3 short, 7 long).
Each vector is L2-normalised and stored as float16 (`clipjax.data.text_features`).

The data is any training source (`config.data`) cut into parts (index ranges, or one part
per tar shard, so the vectors are keyed like the image shards); process p of P embeds
parts p, p + P, ..., each written whole when done: a killed job redoes only the parts it
had not finished, and writes the same vectors as an uninterrupted one (a caption's
vectors do not depend on what it is batched with: `clipjax.models.facets`). Each process
runs the LLM on its own devices (parameters split over them, the batch over them too).
"""
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from clipjax import analysis
from clipjax.convert import llama as convert_llama
from clipjax.data import parts, pipeline, sources, text_features
from clipjax.models import facets

log = logging.getLogger(__name__)


class FacetEncoder:
  """Captions -> float32 [N, K, D] facet vectors (not normalised) of a frozen LLM in a
  Hugging Face folder (config.json, safetensors, tokenizer), on `devices` (default: this
  process's): parameters split by the logical rules over them (fsdp), batches too."""

  def __init__(self, path: str, layer: int | None = None, max_length: int = 512,
               max_caption_tokens: int = 1024, batch_size: int = 32, dtype: str = 'float32',
               devices=None):
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    self.tokenizer = AutoTokenizer.from_pretrained(path)
    devices = list(devices or jax.local_devices())
    self.mesh = Mesh(np.asarray(devices).reshape(1, len(devices), 1), ('data', 'fsdp', 'tensor'))
    dtype = jnp.dtype(dtype)
    self.model, self.params = convert_llama.load_llama(path, dtype=dtype, param_dtype=dtype,
                                                       mesh=self.mesh)
    self.layer = self.model.layers - 1 if layer is None else int(layer)
    self.width = self.model.width
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.max_length, self.max_caption_tokens = max_length, max_caption_tokens
    self._prompts, self._fns = {}, {}
    self._batch = NamedSharding(self.mesh, P('fsdp'))

  def prompts(self, template: str) -> facets.FacetPrompts:
    if template not in self._prompts:
      pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
      self._prompts[template] = facets.FacetPrompts(
          self.tokenizer, template, self.max_length, self.max_caption_tokens, pad)
    return self._prompts[template]

  def _fn(self, template: str):
    if template not in self._fns:
      layout = self.prompts(template).layout
      self._fns[template] = jax.jit(lambda params, ids, real: facet_vectors(
          self.model, params, ids, real, layout, self.layer))
    return self._fns[template]

  def __call__(self, captions, template: str) -> np.ndarray:
    """Batches of similar lengths (sorted), each cut to its longest prompt rounded up to
    32 tokens: a caption's vectors do not depend on its batch, so this only saves work."""
    ids, real = self.prompts(template)(captions)
    order = np.argsort(-real.sum(1), kind='stable')
    out = np.zeros((len(ids), facets.FACETS[template], self.width), np.float32)
    for start in range(0, len(ids), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = min(ids.shape[1], -(-int(real[rows].sum(1).max()) // 32) * 32)
      pad = lambda x: np.concatenate([x, np.zeros((self.batch_size - len(rows),) + x.shape[1:],
                                                  x.dtype)])
      batch = [jax.device_put(pad(x[rows, -length:]), self._batch) for x in (ids, real)]
      out[rows] = np.asarray(self._fn(template)(self.params, *batch))[:len(rows)]
    return out


def facet_vectors(model, params, ids, real, layout, layer):
  return facets.facet_embeddings(model, params, ids, real, layout, layer).astype(jnp.float32)


def _captions_spec(config) -> list:
  spec = [tuple(entry) for entry in config.embed.captions]
  for entry in spec:
    if len(entry) != 2 or entry[1] not in facets.TEMPLATES:
      raise ValueError(f'config.embed.captions entry {entry}: want (record field, template), '
                       f'template one of {sorted(facets.TEMPLATES)}')
  return spec


# Data keys that change how training reads the data, not what each sample's captions are.
_READING_KEYS = ('num_workers', 'shuffle_buffer', 'cycle_length', 'read_threads', 'process_split',
                 'augment', 'label_noise', 'mean', 'std', 'text_features', 'canvas_size')


def data_identity(data_config) -> dict:
  """The part of a data config that decides which sample holds which captions."""
  data = data_config.to_dict() if hasattr(data_config, 'to_dict') else dict(data_config)
  return {k: v for k, v in data.items() if k not in _READING_KEYS}


def describe_job(config) -> dict:
  """What the vectors depend on: a workdir holding another job's parts is refused."""
  import json  # pylint: disable=g-import-not-at-top
  llm = config.llm
  with open(Path(llm.path) / 'config.json') as f:
    spec = convert_llama.llama_spec(json.load(f), str(Path(llm.path) / 'config.json'))
  captions = _captions_spec(config)
  facets_per_sample = sum(facets.FACETS[t] for _, t in captions)
  return dict(data=data_identity(config.data), llm=str(llm.path), layer=llm.get('layer'),
              max_length=llm.max_length, max_caption_tokens=llm.max_caption_tokens,
              dtype=llm.dtype, captions=[list(c) for c in captions],
              part_size=config.embed.part_size, max_samples=config.embed.get('max_samples'),
              vectors_shape=[facets_per_sample, spec['width']])


def _records(source, where):
  """The decoded records of one part in order (None where a record could not be read)."""
  raws = ((source.decoder(raw) for raw in sources.iter_tar_samples(where))
          if not isinstance(where, range) else (source[index] for index in where))
  for record in raws:
    yield None if sources.SKIP_KEY in record else record


def embed_part(encoder: FacetEncoder, captions: list, source, where) -> tuple:
  """(keys, unit float16 vectors [N, K, D], skipped) for one part; a record without one
  of the caption fields is skipped."""
  keys, texts, skipped = [], {field: [] for field, _ in captions}, 0
  for record in _records(source, where):
    if record is None or any(not record.get(field) for field, _ in captions):
      skipped += 1
      continue
    keys.append(text_features.sample_key(record))
    for field in texts:
      texts[field].append(str(record[field]))
  if not keys:
    return keys, np.zeros((0,), np.float16), skipped
  blocks = [encoder(texts[field], template) for field, template in captions]
  vectors = np.concatenate(blocks, axis=1)
  vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
  return keys, vectors.astype(np.float16), skipped


def embed_parts(config, workdir, process_index: int = 0, process_count: int = 1,
                max_parts=None) -> dict:
  """Embeds this process's unfinished parts -> {'parts', 'samples', 'skipped', 'seconds'}.
  `max_parts` stops after that many, as a killed job would."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  job = describe_job(config)
  parts.check_job(workdir, job, create=True, what='embedding job')
  source = pipeline.make_source(config.data)
  plan = parts.plan_parts(source, job['part_size'], job['max_samples'])
  todo = [n for n in range(process_index, len(plan), process_count)
          if not text_features.part_done(workdir, n)][:max_parts]
  stats = dict(parts=0, samples=0, skipped=0, seconds=0.0)
  if not todo:
    return stats
  llm = config.llm
  encoder = FacetEncoder(llm.path, llm.get('layer'), llm.max_length, llm.max_caption_tokens,
                         config.embed.batch_size, llm.dtype)
  captions = _captions_spec(config)
  sizes = [len(plan[n][1]) if isinstance(plan[n][1], range) else None for n in todo]
  t0 = time.perf_counter()
  with tqdm(total=None if None in sizes else sum(sizes), unit='sample', desc='embedding',
            disable=process_index != 0) as bar:
    for n in todo:
      keys, vectors, skipped = embed_part(encoder, captions, source, plan[n][1])
      text_features.write_part(workdir, n, keys, vectors.reshape(len(keys), *job['vectors_shape']))
      stats['parts'] += 1
      stats['samples'] += len(keys)
      stats['skipped'] += skipped
      bar.update(len(keys) + skipped)
  stats['seconds'] = time.perf_counter() - t0
  return stats


def run(config, workdir) -> dict:
  """The whole job on every process of a launch (`launch/`), then a barrier."""
  from clipjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  stats = embed_parts(config, workdir, jax.process_index(), jax.process_count())
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('clipjax.embed: parts written')
  return stats


def show(stats: dict, workdir: Path) -> None:
  rate = stats['samples'] / stats['seconds'] if stats['seconds'] else 0.0
  print(f'{workdir}: embedded {stats["samples"]} samples in {stats["parts"]} parts '
        f'({stats["skipped"]} skipped), {stats["seconds"]:.1f} s, {rate:.1f} samples/s '
        '(this process, this run)')


if __name__ == '__main__':
  analysis.run_cli(run, show, 'Embedding job')
