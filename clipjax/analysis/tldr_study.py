"""TL;DR against the full data and a random subset of the same size, at equal steps:

  python -m clipjax.analysis.tldr_study --config configs/tldr_quickstart.py:study \
      --workdir runs/tldr_study [--config.seeds=0,1,2]

1. The quickstart's shapes written as shards with injected noise (`make_shards`: a share
   of exact duplicates and of misaligned captions; each sample's json says which), in
   DIR/data.
2. The reduction (`clipjax.analysis.tldr`) over them in DIR/reduction, and a random
   subset of as many samples (seeded) beside it.
3. Per seed, the same CLIP trained for the same steps on each arm: all the data, the
   TL;DR subset (its manifest), the TL;DR subset with its new captions (its shards), the
   random subset; evaluated alike (zero-shot on held-out shape/colour pairs).
Each arm's share of the injected duplicates and misaligned pairs removed is counted
from the json, and so is that of other selections (`selections`: representation and
per-cluster rule, e.g. the release's ids and stride) from the reduction's stored codes and
scores, without training on them. Finished runs are read back, not repeated (a changed config needs another
workdir). Writes results.json, results.md and tldr_study.png.
"""
import json
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from clipjax import analysis
from clipjax.analysis import tldr
from clipjax.data import make_shards, manifest, parts, pipeline
from clipjax.train import loop

METRICS = {'shapes_shape/zeroshot_top1': 'zero-shot shape',
           'shapes_colour/zeroshot_top1': 'zero-shot colour'}


def write_data(study, folder: Path) -> str:
  """The noisy shards (once) -> their pattern."""
  d = study.data
  pattern = folder / 'pattern.txt'
  if not pattern.exists():
    members = make_shards.synthetic_members(
        int(d.samples), int(d.image_size), int(d.seed), 'jpg', float(d.digit_fraction),
        float(d.misaligned), float(d.duplicates), int(d.duplicate_group))
    written = make_shards.write(members, int(d.samples), str(folder), int(d.shard_size),
                                'array_record', progress=False)
    pattern.write_text(written)
  return pattern.read_text()


def noise_labels(source) -> tuple:
  """(noise kind [N], original image index [N]) from each sample's json."""
  kinds, originals = [], []
  for i in range(len(source)):
    meta = json.loads(source.raw(i)['json'])
    kinds.append(meta.get('noise', 'clean'))
    originals.append(meta.get('copy_of', i))
  return np.asarray(kinds), np.asarray(originals)


def removal(kept: np.ndarray, kinds: np.ndarray, originals: np.ndarray) -> dict:
  """Shares of the injected noise a subset (bool [N]) leaves out: misaligned pairs,
  duplicate copies, and redundant images (a kept image beyond the first of its copies)."""
  groups = np.bincount(originals, minlength=len(kept))
  duplicated = groups[originals] > 1
  kept_per_group = np.bincount(originals[kept], minlength=len(kept))
  redundant_kept = np.sum(np.maximum(kept_per_group[groups > 1] - 1, 0))
  return {'kept_fraction': float(kept.mean()),
          'misaligned_removed': float(1 - kept[kinds == 'misaligned'].mean()),
          'duplicates_removed': float(1 - kept[kinds == 'duplicate'].mean()),
          'redundant_removed': float(1 - redundant_kept / max(1, np.sum(groups[groups > 1] - 1))),
          'duplicated_images': int(duplicated.sum())}


def run_study(study, workdir) -> list:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'data').mkdir(exist_ok=True)
  pattern = write_data(study, workdir / 'data')
  reduction = ConfigDict(study.reduction.to_dict())
  reduction.data.train = pattern
  if not reduction.recaption.enabled:
    raise ValueError('the study trains on the recaptioned shards: reduction.recaption.enabled '
                     'must be True')
  summary = tldr.run(reduction, workdir / 'reduction')
  source = pipeline.make_source(reduction.data)
  kinds, originals = noise_labels(source)
  kept = np.zeros(len(source), bool)
  kept[manifest.read_manifest(str(workdir / 'reduction' / tldr.MANIFEST))['indices']] = True
  random_path = workdir / 'random_manifest.json'
  random = np.random.default_rng(int(study.data.seed)).choice(len(source), int(kept.sum()),
                                                              replace=False)
  manifest.write_manifest(str(random_path), random, len(source), note='random subset')
  random_kept = np.zeros(len(source), bool)
  random_kept[random] = True
  arms = {'full data': dict(train=pattern, subset=''),
          'TL;DR': dict(train=pattern, subset=str(workdir / 'reduction' / tldr.MANIFEST)),
          'TL;DR recaptioned': dict(train=summary['shards'], subset=''),
          'random subset': dict(train=pattern, subset=str(random_path))}
  rates = {'full data': removal(np.ones(len(source), bool), kinds, originals),
           'TL;DR': removal(kept, kinds, originals),
           'TL;DR recaptioned': removal(kept, kinds, originals),
           'random subset': removal(random_kept, kinds, originals)}
  rows = []
  for seed in study.seeds:
    for name, data in arms.items():
      if name not in study.arms:
        continue
      config = ConfigDict(study.clip.to_dict())
      config.seed = int(seed)
      config.data = ConfigDict(reduction.data.to_dict())
      config.data.train, config.data.subset = data['train'], data['subset']
      results = loop.train(config, workdir / f'seed{seed}' / name.replace(' ', '_').replace(';', ''))
      rows.append(dict(seed=int(seed), arm=name, steps=int(config.total_steps), **rates[name],
                       **{m: float(results[m]) for m in METRICS if m in results}))
  rows += selection_variants(reduction, workdir / 'reduction', source, kinds, originals,
                             study.selections)
  rows.append(dict(arm='reduction', **{k: v for k, v in summary.items() if k != 'selection'}))
  return rows


def selection_variants(reduction, folder: Path, source, kinds, originals, variants) -> list:
  """Removal rates of other selections over the same codes and alignment scores."""
  from clipjax import sharding  # pylint: disable=g-import-not-at-top
  plan = parts.plan_parts(source, int(reduction.part_size))
  codes, codes_valid = tldr.read_parts(folder, 'codes', plan, 'codes')
  scores, scores_valid = tldr.read_parts(folder, 'scores', plan, 'scores')
  rows = []
  for representation, rule in variants:
    config = ConfigDict(reduction.to_dict())
    config.selection.representation, config.selection.per_cluster = representation, rule
    chosen = tldr.select(config, codes, codes_valid, scores, scores_valid, sharding.make_mesh())
    rows.append(dict(arm='selection', representation=representation, per_cluster=rule,
                     **removal(chosen['keep'], kinds, originals)))
  return rows


def markdown(rows: list) -> str:
  runs = [r for r in rows if 'seed' in r]
  seeds = sorted({r['seed'] for r in runs})
  arms = list(dict.fromkeys(r['arm'] for r in runs))
  rates = ('kept_fraction', 'misaligned_removed', 'duplicates_removed', 'redundant_removed')
  lines = [f'Seeds {seeds}, {runs[0]["steps"]} steps each: mean (per seed).', '',
           '| arm | kept | misaligned removed | duplicates removed | redundant copies removed | '
           + ' | '.join(METRICS.values()) + ' |', '|---|' + '---|' * (len(rates) + len(METRICS))]
  for arm in arms:
    mine = [r for r in runs if r['arm'] == arm]
    lines.append(f'| {arm} | ' + ' | '.join(f'{mine[0][k]:.3f}' for k in rates) + ' | ' + ' | '.join(
        analysis.seed_cell([r[m] for r in mine]) for m in METRICS) + ' |')
  variants = [r for r in rows if r['arm'] == 'selection']
  if variants:
    lines += ['', 'Other selections over the same codes and scores (removal only):', '',
              '| representation | per cluster | kept | misaligned removed | duplicates removed | '
              'redundant copies removed |', '|---|---|---|---|---|---|']
    lines += [f'| {r["representation"]} | {r["per_cluster"]} | ' + ' | '.join(
        f'{r[k]:.3f}' for k in rates) + ' |' for r in variants]
  summary = next((r for r in rows if r['arm'] == 'reduction'), None)
  if summary and summary.get('examples'):
    lines += ['', 'Recaptioned samples (original; generated):', '']
    lines += [f'- {e["original"]}; **{e["generated"]}**' for e in summary['examples'][:3]]
  return '\n'.join(lines) + '\n'


def plot(rows: list, path: Path) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  runs = [r for r in rows if 'seed' in r]
  arms = list(dict.fromkeys(r['arm'] for r in runs))
  fig = Figure(figsize=(7, 3.2))
  ax = fig.subplots()
  width = 0.8 / len(arms)
  for j, arm in enumerate(arms):
    mine = [r for r in runs if r['arm'] == arm]
    x = np.arange(len(METRICS)) + (j - (len(arms) - 1) / 2) * width
    ax.bar(x, [np.mean([r[m] for r in mine]) for m in METRICS], width, label=arm)
  ax.set_xticks(np.arange(len(METRICS)), list(METRICS.values()))
  ax.set_ylabel('top-1')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def show(rows: list, workdir: Path) -> None:
  analysis.show_results(rows, workdir, markdown, plot, 'tldr_study.png')


if __name__ == '__main__':
  analysis.run_cli(run_study, show, 'Study')
