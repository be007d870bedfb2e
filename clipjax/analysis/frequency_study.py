"""Concept frequency in pretraining data against zero-shot accuracy, end to end
("No 'Zero-Shot' Without Exponential Data", Udandarao et al. 2024):

  python -m clipjax.analysis.frequency_study --config configs/frequency_quickstart.py \
      --workdir runs/frequency [--config.seeds=0,1,2]

Per seed: pretrain a CLIP (`pretrain`, an ordinary training run, exported), count every
concept of the `concept_tasks`' classes in its training data with that CLIP as the image
tagger (`clipjax.analysis.frequency`), score each class zero-shot (per-class top-1), and
fit accuracy against the log of the chosen frequency (`clipjax.analysis.loglinear`);
then zero-shot top-1 on the `long_tail` set's rarest classes against its most frequent
ones (`clipjax.analysis.long_tail`). On synthetic shapes, where the generator knows every
object, the counts are also checked against the true number of samples showing each
concept. Finished runs and counts are read back, not repeated (a changed config needs
another workdir). Writes results.json, results.md and frequency_study.png.
"""
import logging
import time
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict
from scipy import stats

from clipjax import analysis
from clipjax.analysis import concepts as concepts_lib
from clipjax.analysis import frequency, long_tail, loglinear
from clipjax.data import pipeline, shapes
from clipjax.evaluate import ZeroShotEvaluator, datasets, zeroshot_classifier
from clipjax.evaluate import zeroshot_metrics
from clipjax.train import loop


log = logging.getLogger(__name__)
KINDS = ('text', 'image', 'matched')


def true_hits(source, concept_names) -> dict:
  """{concept: sorted ids of the samples showing it} from a synthetic source's scenes (an
  object shows a concept when the concept's terms are among its shape and colour); {}
  for other sources."""
  if not isinstance(source, shapes.ShapesSource):
    return {}
  wanted = {c: set(concepts_lib.terms(c)) for c in concept_names}
  found = {c: [] for c in concept_names}
  for index in range(len(source)):
    attributes = [{o.shape, o.colour} for o in source.scene(index)]
    for concept, terms in wanted.items():
      if any(terms <= a for a in attributes):
        found[concept].append(index)
  return {c: np.asarray(ids, np.int64) for c, ids in found.items()}


def against_truth(found: dict, truth: dict) -> dict:
  """Per frequency kind: precision and recall of its (sample, concept) hits, pooled over
  concepts, and the Spearman rho of its counts with the true counts."""
  out = {}
  for kind in KINDS:
    hit = sum(len(np.intersect1d(found[c][kind], truth[c])) for c in truth)
    claimed, real = sum(len(found[c][kind]) for c in truth), sum(len(t) for t in truth.values())
    out[kind] = dict(precision=hit / max(claimed, 1), recall=hit / max(real, 1),
                     spearman=float(stats.spearmanr([len(found[c][kind]) for c in truth],
                                                    [len(truth[c]) for c in truth])[0]))
  return out


def class_accuracy(encoder, tasks) -> list:
  """[(task, class name, per-class top-1)] of every zero-shot task."""
  rows = []
  for name, spec in tasks.items():
    _, arrays = ZeroShotEvaluator(**dict(spec))(encoder)
    rows += [(name, str(c), float(a)) for c, a in zip(arrays['classnames'],
                                                       arrays['per_class_accuracy'])]
  return rows


def zeroshot_top1(encoder, image_set) -> float:
  features, labels = datasets.embed(encoder, image_set)
  classifier = zeroshot_classifier(encoder, image_set.classnames, image_set.templates)
  return float(zeroshot_metrics(features, labels, classifier)[0]['top1'])


def run_seed(study, seed: int, workdir: Path) -> dict:
  config = ConfigDict(study.pretrain.to_dict())
  config.seed = int(seed)
  export = loop.train_and_export(config, workdir / f'seed{seed}' / 'pretrain')
  count_config = ConfigDict(study.count.to_dict())
  count_config.data, count_config.tagger.model = config.data, str(export)  # what it read
  job = frequency.run(count_config, workdir / f'seed{seed}' / 'counts')
  counts = job['concepts']
  encoder = frequency.clip_encoder(str(export))
  accuracy = class_accuracy(encoder, study.concept_tasks)
  uncounted = sorted({c for _, c, _ in accuracy} - set(counts))
  if uncounted:
    raise KeyError(f'classes of config.concept_tasks not among config.count.concepts: '
                   f'{uncounted[:5]} ({len(uncounted)} in all)')
  truth = true_hits(pipeline.make_source(config.data), [c for _, c, _ in accuracy])
  concepts = [dict(task=task, concept=c, accuracy=a,
                   true=int(len(truth[c])) if truth else None,
                   **{k: counts[c][k] for k in KINDS}) for task, c, a in accuracy]
  fits = {kind: loglinear.fit([r[kind] for r in concepts], [r['accuracy'] for r in concepts],
                              study.num_bins) for kind in KINDS}
  for fit in fits.values():
    fit['curve'] = {k: v.tolist() for k, v in fit.pop('curve').items()}
  found = frequency.read_hits(count_config, workdir / f'seed{seed}' / 'counts')
  agreement = against_truth(found, truth) if truth else {}
  spec = dict(study.long_tail.source)
  image_set = datasets.load_image_set(encoder.image_size, **spec)
  freq = {c: counts[c][study.frequency] for c in image_set.classnames}
  tail, head = long_tail.tail_and_head(image_set, freq, study.long_tail.num_classes,
                                       study.long_tail.per_class, seed=int(seed))
  return dict(seed=int(seed), frequency=study.frequency, concepts=concepts, fits=fits,
              agreement_with_truth=agreement, misaligned=job['misaligned'], tail_classes=tail.classnames,
              tail_top1=zeroshot_top1(encoder, tail), head_top1=zeroshot_top1(encoder, head))


def run_study(study, workdir) -> list:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed in study.seeds:
    t0 = time.perf_counter()
    rows.append(run_seed(study, int(seed), workdir))
    log.info('seed %d: done in %.0f s', seed, time.perf_counter() - t0)
  return rows


def markdown(rows: list) -> str:
  seeds = [r['seed'] for r in rows]
  lines = [f'Seeds {seeds}: mean (per seed). r: Pearson of the binned curve (the paper\'s '
           'statistic); slope: per-class top-1 per e-fold of frequency (OLS, raw points).',
           'Against the generator\'s truth: precision and recall of the (sample, concept) '
           'hits and Spearman of the counts.', '',
           '| frequency | r (binned) | Spearman | slope | precision | recall | counts vs true |',
           '|---|---|---|---|---|---|---|']
  for kind in KINDS:
    fits = [r['fits'][kind] for r in rows]
    truth = [r['agreement_with_truth'].get(kind, {}) for r in rows]
    lines.append(f'| {kind} | {analysis.seed_cell([f["pearson_binned"] for f in fits], 2)} | '
                 f'{analysis.seed_cell([f["spearman"] for f in fits], 2)} | '
                 f'{analysis.seed_cell([f["slope"] for f in fits], 3)} | ' + ' | '.join(
                     analysis.seed_cell([t.get(m, np.nan) for t in truth], 2)
                     for m in ('precision', 'recall', 'spearman')) + ' |')
  lines += ['', f'Long tail ({len(rows[0]["tail_classes"])} rarest classes by '
            f'{rows[0]["frequency"]} frequency) against the as many most frequent, '
            'zero-shot top-1:', '', '| set | top-1 |', '|---|---|',
            f'| tail | {analysis.seed_cell([r["tail_top1"] for r in rows], 3)} |',
            f'| head | {analysis.seed_cell([r["head_top1"] for r in rows], 3)} |', '',
            'Misalignment degree (pairs with concepts on both sides but none in common, of '
            f'the samples counted): {analysis.seed_cell([r["misaligned"]["fraction"] for r in rows], 4)}']
  return '\n'.join(lines) + '\n'


def plot(rows: list, path: Path) -> None:
  """Per-class accuracy against each frequency (all seeds' points, one curve per seed)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(4.4 * len(KINDS), 3.6))
  for ax, kind in zip(fig.subplots(1, len(KINDS)), KINDS):
    for row in rows:
      loglinear.plot(ax, [c[kind] for c in row['concepts']],
                     [c['accuracy'] for c in row['concepts']], label=f'seed {row["seed"]}')
    ax.set_title(f'{kind} frequency')
    ax.set_ylabel('zero-shot per-class top-1')
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_results(rows: list, workdir) -> None:
  analysis.write_results(rows, workdir, markdown, plot, 'frequency_study.png')


def show(rows: list, workdir: Path) -> None:
  write_results(rows, workdir)
  print(markdown(rows))
  print(f'results: {workdir / "results.md"}, {workdir / "frequency_study.png"}')


if __name__ == '__main__':
  analysis.run_cli(run_study, show, 'Study')
