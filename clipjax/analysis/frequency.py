"""How often each concept occurs in pretraining data: in captions, in images, and in both
("No 'Zero-Shot' Without Exponential Data", Udandarao et al. 2024, §2; their code:
bethgelab/frequency_determines_performance).

  python -m clipjax.analysis.frequency --config configs/frequency_quickstart.py:count \
      --workdir runs/frequency_counts \
      --config.tagger.model=runs/frequency/seed0/pretrain/export

Caption frequency: an inverted index from each concept term (`clipjax.analysis.concepts`)
to the sorted ids of the captions that hold it; a concept's captions are the intersection
of its terms' postings. As in the official query, a term no caption holds is left out of
the intersection (a concept with no such term at all counts 0). The index is built for
the concepts' terms only, which keeps it small at any corpus size.

Image frequency: a CLIP tagger (any checkpoint `clipjax.convert` reads, e.g. our own
export) standing in for the official RAM++: an image shows a concept when the cosine of
its embedding with the concept's prompt-ensemble embedding (`zeroshot_classifier`) is
above `tagger.threshold`. Matched frequency is the intersection of both, per sample id.

The data is any training source (`config.data`, as stored: a training run's caption
swaps, `label_noise`, are not applied), cut into parts: index ranges of `part_size` for
random-access sources (sample id = index), one shard each for tar shards (id = shard
number * 2**32 + position in the shard). Process p of P counts parts p, p + P, ... and
writes each as parts/<n>.npz when it is complete (atomically), so a killed job recounts
only the parts it had not finished; then process 0 merges the parts one at a time into
counts.json: per concept its terms and text, image and matched counts, the samples whose
caption (`skipped`) or image (`untagged`) could not be read, by reason, and the
misalignment degree. Each process tags on one device (run one process per accelerator).
"""
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipjax import analysis
from clipjax.analysis import concepts as concepts_lib
from clipjax.data import parts, pipeline, sources
from clipjax.data.transforms import to_size
from clipjax.evaluate import datasets, report

log = logging.getLogger(__name__)
COUNTS_FILE, PARTS_DIR = 'counts.json', 'parts'


# ------------------------------------------------------------------------- concepts

def load_concepts(spec) -> dict:
  """{group: [concept, ...]} from a config of named entries, each one of
  - a list of strings;
  - a string: class names as evaluators read them (prompts.json key or file);
  - dict(dataset=... | image_folder=..., ...): an evaluation set's class names;
  - dict(captions=FILE, min_items=10): retrieval concepts, the terms of a JSON list of
    caption lists (one list per image; `concepts.caption_concepts`)."""
  groups = {}
  for name, entry in (spec.to_dict() if hasattr(spec, 'to_dict') else dict(spec)).items():
    try:
      names = _concept_list(entry)
    except (OSError, KeyError, ValueError, TypeError) as e:
      raise type(e)(f'config.concepts.{name}={entry!r}: {e}') from e
    if not names:
      raise ValueError(f'config.concepts.{name} gives no concepts')
    groups[name] = list(names)
  if not groups:
    raise ValueError('config.concepts is empty: name at least one list of concepts')
  return groups


def _concept_list(entry) -> list:
  if isinstance(entry, (list, tuple)):
    return [str(c) for c in entry]
  if isinstance(entry, str):
    return datasets.resolve_classnames(entry)
  if not isinstance(entry, dict):
    raise TypeError('expected a list, a class-names key or file, or a dict')
  if 'captions' in entry:
    with open(entry['captions']) as f:
      return concepts_lib.caption_concepts(json.load(f), int(entry.get('min_items', 10)))
  options = dict(entry)
  folder = options.pop('image_folder', None)
  return datasets.load_image_set(8, image_folder_path=folder, **options).classnames


# --------------------------------------------------------------------------- tagger

def clip_encoder(model: str, batch_size: int = 256):
  """An `Encoder` of a CLIP checkpoint in any format `clipjax.convert` reads."""
  from clipjax import convert  # pylint: disable=g-import-not-at-top
  from clipjax.evaluate import Encoder, EvalView  # pylint: disable=g-import-not-at-top
  clip, params, tokenizer = convert.load_clip(model)
  if tokenizer is None:
    raise ValueError(f'{model!r} has no tokenizer.json beside it')
  return Encoder(EvalView.of(clip, params), tokenizer,
                 context_length=clip.text['context_length'],
                 image_size=clip.vision['image_size'], batch_size=batch_size)


class Tagger:
  """Which of `concepts` each image shows: cosine with the concept's prompt ensemble
  above `threshold`, through a CLIP checkpoint."""

  def __init__(self, model: str, concepts: list, threshold: float, templates=None,
               batch_size: int = 256):
    from clipjax.evaluate import zeroshot_classifier  # pylint: disable=g-import-not-at-top
    self.encoder = clip_encoder(model, batch_size)
    self.classifier = zeroshot_classifier(
        self.encoder, concepts, datasets.resolve_templates(templates) or
        list(datasets.DEFAULT_TEMPLATES))
    self.threshold = float(threshold)

  def scores(self, images: list) -> np.ndarray:
    """float32 [N, C] cosines of the images (uint8 arrays or PIL, any size)."""
    size = self.encoder.image_size
    batch = np.stack([to_size(image, size) for image in images])
    return self.encoder.encode_images(batch) @ self.classifier.T

  def __call__(self, images: list) -> np.ndarray:
    return self.scores(images) > self.threshold


# ---------------------------------------------------------------------------- parts

def _decode(raw: dict, decoder, with_image: bool) -> tuple:
  """(caption, image, caption skip reason, image skip reason) of a stored record: the
  caption is read whether or not its image decodes (caption counts never depend on
  the tagger)."""
  if sources.SKIP_KEY in raw:
    return None, None, raw[sources.SKIP_KEY], raw[sources.SKIP_KEY]
  caption = image = caption_skip = image_skip = None
  try:
    caption = sources.decode_text(raw.get(decoder.caption_key))
  except sources.BadSample as e:
    caption_skip = e.reason
  if with_image:
    try:
      image = decoder.image(raw)
    except sources.BadSample as e:
      image_skip = e.reason
  return caption, image, caption_skip, image_skip


def _records(source, where, with_images: bool):
  """(position, caption, image, caption skip reason, image skip reason) for one part."""
  if not isinstance(where, range):
    for position, raw in enumerate(sources.iter_tar_samples(where)):
      yield (position,) + _decode(raw, source.decoder, with_images)
    return
  for index in where:
    if hasattr(source, 'raw'):  # stored records (csv, array_record)
      yield (index,) + _decode(source.raw(index), source.decoder, with_images)
    elif with_images or not hasattr(source, 'caption'):  # generated records
      record = source[index]
      skip = record.get(sources.SKIP_KEY)
      yield index, record.get('caption'), record.get('image'), skip, skip
    else:
      try:
        yield index, source.caption(index), None, None, None
      except sources.BadSample as e:
        yield index, None, None, e.reason, None


def count_part(source, where, first_id: int, vocabulary: dict, tagger=None,
               chunk: int = 1024, progress=None) -> dict:
  """One part's postings: every vocabulary term's caption ids and, with a tagger, every
  concept's image ids (int64, sorted); samples whose caption (`skipped`) or image
  (`untagged`) could not be read, by reason."""
  postings = [[] for _ in vocabulary]
  tagged = [[] for _ in range(len(tagger.classifier))] if tagger is not None else []
  skipped, untagged, num_samples = {}, {}, 0
  pending_ids, pending_images = [], []

  def tag():
    if pending_ids:
      for c, column in enumerate(tagger(pending_images).T):
        tagged[c].extend(np.asarray(pending_ids)[column].tolist())
      pending_ids.clear()
      pending_images.clear()

  for position, caption, image, caption_skip, image_skip in _records(
      source, where, tagger is not None):
    num_samples += 1
    sample_id = position if isinstance(where, range) else first_id + position
    if caption_skip:
      skipped[caption_skip] = skipped.get(caption_skip, 0) + 1
    else:
      for term in concepts_lib.caption_terms(caption):
        slot = vocabulary.get(term)
        if slot is not None:
          postings[slot].append(sample_id)
    if tagger is not None:
      if image_skip:
        untagged[image_skip] = untagged.get(image_skip, 0) + 1
      else:
        pending_ids.append(sample_id)
        pending_images.append(image)
        if len(pending_ids) == chunk:
          tag()
    if progress is not None:
      progress.update(1)
  if tagger is not None:
    tag()
  return dict(num_samples=num_samples, skipped=skipped, untagged=untagged,
              postings=[np.asarray(p, np.int64) for p in postings],
              tagged=[np.asarray(t, np.int64) for t in tagged])


def _pack(lists: list) -> tuple:
  offsets = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
  flat = np.concatenate(lists) if lists else np.zeros(0, np.int64)
  return offsets, flat.astype(np.int64)


def _unpack(offsets, flat) -> list:
  return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def write_part(path: Path, part: dict) -> None:
  """Atomically: a reader sees a complete part or none."""
  term_offsets, term_ids = _pack(part['postings'])
  image_offsets, image_ids = _pack(part['tagged'])
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, num_samples=part['num_samples'], skipped=json.dumps(part['skipped']),
           untagged=json.dumps(part['untagged']), term_offsets=term_offsets,
           term_ids=term_ids, image_offsets=image_offsets, image_ids=image_ids)
  os.replace(tmp, path)


def read_part(path: Path, job: dict) -> dict:
  with np.load(path) as z:
    part = dict(num_samples=int(z['num_samples']), skipped=json.loads(str(z['skipped'])),
                untagged=json.loads(str(z['untagged'])),
                postings=_unpack(z['term_offsets'], z['term_ids']),
                tagged=_unpack(z['image_offsets'], z['image_ids']))
  shape = (len(part['postings']), len(part['tagged']))
  expected = (len(job['vocabulary']), len(job['concepts']) if job['tagger'] else 0)
  if shape != expected:
    raise ValueError(f'{path}: holds {shape[0]} terms and {shape[1]} tagged concepts, the '
                     f'job {expected[0]} and {expected[1]}: the part is another job\'s')
  return part


# ---------------------------------------------------------------------------- merge

def _present_terms(job: dict, paths: list) -> np.ndarray:
  """bool [vocabulary]: the terms some caption holds (reads the parts' offsets only)."""
  present = np.zeros(len(job['vocabulary']), bool)
  for path in paths:
    with np.load(path) as z:
      present |= np.diff(z['term_offsets']) > 0
  return present


def _part_hits(job: dict, part: dict, present: np.ndarray) -> dict:
  """{concept: {'text', 'image', 'matched': ids}} within one part. A concept's captions
  hold all its terms that any caption in the whole data holds (a term no caption holds is
  left out, as in the official query), so parts can be merged by concatenation."""
  slots = {t: i for i, t in enumerate(job['vocabulary'])}
  out = {}
  for c, concept in enumerate(job['concepts']):
    found = [part['postings'][slots[t]] for t in job['terms'][c] if present[slots[t]]]
    text = found[0] if found else np.zeros(0, np.int64)
    for ids in found[1:]:
      text = np.intersect1d(text, ids, assume_unique=True)
    out[concept] = dict(text=text)
    if job['tagger']:
      image = part['tagged'][c]
      out[concept].update(image=image,
                          matched=np.intersect1d(text, image, assume_unique=True))
  return out


def _misaligned(found: dict) -> tuple:
  """(pairs whose caption and image both hold concepts but none in common, pairs with
  concepts on both sides): the paper's misalignment degree
  (src/misalignment_degree_quantification.py)."""
  union = lambda kind: np.unique(np.concatenate(
      [np.zeros(0, np.int64)] + [f[kind] for f in found.values()]))
  both = np.intersect1d(union('text'), union('image'), assume_unique=True)
  return len(np.setdiff1d(both, union('matched'), assume_unique=True)), len(both)


def _add(total: dict, counts: dict) -> None:
  for key, n in counts.items():
    total[key] = total.get(key, 0) + n


def merge(job: dict, paths: list) -> dict:
  """Counts from the part files, read one at a time (memory: one part): per concept its
  terms and text, image and matched frequency; samples, skips and the misalignment."""
  present = _present_terms(job, paths)
  kinds = ('text', 'image', 'matched') if job['tagger'] else ('text',)
  rows = {c: dict(terms=job['terms'][i], **dict.fromkeys(kinds, 0))
          for i, c in enumerate(job['concepts'])}
  num_samples, skipped, untagged, misaligned, with_both = 0, {}, {}, 0, 0
  for path in paths:
    part = read_part(path, job)
    found = _part_hits(job, part, present)
    for concept, ids in found.items():
      for kind in kinds:
        rows[concept][kind] += int(len(ids[kind]))
    num_samples += part['num_samples']
    _add(skipped, part['skipped'])
    _add(untagged, part['untagged'])
    if job['tagger']:
      pairs, both = _misaligned(found)
      misaligned, with_both = misaligned + pairs, with_both + both
  out = dict(num_samples=num_samples, skipped=skipped, untagged=untagged,
             groups=job['groups'], concepts=rows)
  if job['tagger']:
    counted = num_samples - sum(skipped.values())
    out['misaligned'] = dict(pairs=misaligned, fraction=misaligned / max(counted, 1),
                             with_both=with_both,
                             fraction_of_with_both=misaligned / max(with_both, 1))
  return out


def hits(job: dict, paths: list) -> dict:
  """{concept: {kind: sorted ids}} over every part (all ids in memory: for small jobs
  and checks, e.g. against a synthetic generator's truth)."""
  present = _present_terms(job, paths)
  found = [_part_hits(job, read_part(path, job), present) for path in paths]
  return {concept: {kind: np.concatenate([np.zeros(0, np.int64)] + [f[concept][kind]
                                                                   for f in found])
                    for kind in kinds}
          for concept, kinds in (found[0].items() if found else ())}


# ------------------------------------------------------------------------------ job

# Data keys that change how training reads a source, not what it holds.
_NOT_CONTENT = ('num_workers', 'shuffle_buffer', 'cycle_length', 'read_threads',
                'process_split', 'augment', 'mean', 'std', 'label_noise', 'image_size')


def describe_job(config, groups: dict) -> dict:
  """What fixes the counts: a workdir holding another job's parts is refused."""
  concepts = sorted({c for names in groups.values() for c in names})
  terms = [list(concepts_lib.terms(c)) for c in concepts]
  tagger = config.get('tagger') or {}
  tagger = tagger.to_dict() if hasattr(tagger, 'to_dict') else dict(tagger)
  tagger = tagger if tagger.get('model') else {}
  data = config.data.to_dict() if hasattr(config.data, 'to_dict') else dict(config.data)
  return dict(data={k: v for k, v in data.items() if k not in _NOT_CONTENT},
              part_size=int(config.get('part_size', 10_000)),
              max_samples=config.get('max_samples'), concepts=concepts, terms=terms,
              vocabulary=sorted({t for ts in terms for t in ts}), groups=groups,
              tagger={k: v for k, v in tagger.items() if k != 'batch_size'})


def _part_path(workdir: Path, n: int) -> Path:
  return Path(workdir) / PARTS_DIR / f'{n:06d}.npz'


def _setup(config, source=None) -> tuple:
  groups = load_concepts(config.concepts)
  job = describe_job(config, groups)
  if config.data.get('label_noise'):
    log.warning('data.label_noise=%s is ignored: counts are of the data as stored, not of '
                'the captions a training run swaps', config.data.label_noise)
  if source is None:
    source = pipeline.make_source(config.data)
  return job, source, parts.plan_parts(source, job['part_size'], job['max_samples'])


def count_parts(config, workdir, process_index: int = 0, process_count: int = 1,
                source=None, max_parts=None) -> float:
  """Counts this process's unfinished parts (`source` overrides `config.data`, e.g. an
  in-memory list in a notebook) -> seconds spent. `max_parts` stops after that many, as
  a killed job would. Images are read at the tagger's resolution (a JPEG's DCT-scaled
  decode) and resized and centre-cropped to it (RAM++ resizes without a crop)."""
  workdir = Path(workdir)
  (workdir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
  job, reader, plan = _setup(config, source)
  parts.check_job(workdir, job, create=True, what='counting job')
  todo = [n for n in range(process_index, len(plan), process_count)
          if not _part_path(workdir, n).exists()][:max_parts]
  tagger = None
  if job['tagger'] and todo:
    tagger = Tagger(job['tagger']['model'], job['concepts'], job['tagger']['threshold'],
                    job['tagger'].get('templates'),
                    batch_size=int((config.get('tagger') or {}).get('batch_size', 256)))
    if source is None:  # decode no smaller than the tagger reads
      reader = pipeline.make_source(config.data, image_size=tagger.encoder.image_size)
  vocabulary = {term: slot for slot, term in enumerate(job['vocabulary'])}
  sizes = [len(plan[n][1]) if isinstance(plan[n][1], range) else None for n in todo]
  t0 = time.perf_counter()
  with tqdm(total=None if None in sizes else sum(sizes), unit='sample', desc='counting',
            disable=process_index != 0) as bar:
    for n in todo:
      first_id, where = plan[n]
      write_part(_part_path(workdir, n),
                 count_part(reader, where, first_id, vocabulary, tagger, progress=bar))
  return time.perf_counter() - t0


def _part_paths(config, workdir, source=None) -> tuple:
  """(job, every part's path in id order), checked against the workdir's job; a part
  not yet written is an error."""
  workdir = Path(workdir)
  job, _, plan = _setup(config, source)
  parts.check_job(workdir, job, create=False, what='counting job')
  missing = [n for n in range(len(plan)) if not _part_path(workdir, n).exists()]
  if missing:
    raise FileNotFoundError(f'{workdir / PARTS_DIR}: parts {missing[:5]} ({len(missing)} '
                            'in all) are not counted yet; run the job (again) to finish them')
  return job, [_part_path(workdir, n) for n in range(len(plan))]


def read_hits(config, workdir, source=None) -> dict:
  """Which samples hold each concept (`hits`), from a finished job's parts."""
  return hits(*_part_paths(config, workdir, source))


def merge_parts(config, workdir, source=None) -> dict:
  """counts.json from every part (all must be written)."""
  counts = merge(*_part_paths(config, workdir, source))
  report.atomic_write(Path(workdir) / COUNTS_FILE, json.dumps(counts, indent=1))
  return counts


def run(config, workdir, source=None) -> dict:
  """The whole job on every process: count, wait for all, merge (process 0 writes)."""
  import jax  # pylint: disable=g-import-not-at-top
  index, count = jax.process_index(), jax.process_count()
  seconds = count_parts(config, workdir, index, count, source)
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('clipjax.analysis.frequency: parts written')
  if index == 0:
    counts = merge_parts(config, workdir, source)
  if count > 1:
    multihost_utils.sync_global_devices('clipjax.analysis.frequency: counts written')
  counts = read_counts(workdir) if index else counts
  log.info('counted in %.1f s (this process, this run)', seconds)
  return counts


def read_counts(workdir) -> dict:
  with open(Path(workdir) / COUNTS_FILE) as f:
    return json.load(f)


def run_job(config, workdir) -> dict:
  """`run` after joining the other processes of a multi-process launch (launch/)."""
  from clipjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  return run(config, workdir)


def show(counts: dict, workdir: Path) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    top = sorted(counts['concepts'].items(), key=lambda kv: -kv[1]['text'])
    print(f'{counts["num_samples"]} samples ({sum(counts["skipped"].values())} skipped), '
          f'{len(top)} concepts; most frequent in captions: ' +
          ', '.join(f'{c} {r["text"]}' for c, r in top[:5]))
    print(f'counts: {workdir / COUNTS_FILE}')


if __name__ == '__main__':
  analysis.run_cli(run_job, show, 'Counting')
