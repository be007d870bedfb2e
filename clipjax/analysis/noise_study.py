"""Pretraining noise and downstream tuning (NMTune, Chen et al. ICLR 2024, §3-4):
pretrain the same CLIP at several caption-noise ratios, then tune each frozen encoder
with the linear probe (LP), the MLP probe and NMTune, in domain and out of domain.

  python -m clipjax.analysis.noise_study --config configs/noise_study_quickstart.py \
      --workdir runs/noise_study [--config.seeds=0,1,2]

Per seed and ratio r: `pretrain` with `data.label_noise=r` (r of the samples carry
another sample's caption), exported; the feature spectra of the frozen encoder on each
`spectra` set (`clipjax.spectra`); then every `tune` variant on the export. Every run is
an ordinary training run in its own folder (seed<s>/noise<r>/<name>), so a killed study
resumes where it stopped and finished runs are read back, not repeated (as they are: a
changed config needs another workdir). Writes
results.json (one row per run), results.md (mean +- std over seeds, ratios side by side)
and noise_study.png (accuracy against noise per variant and domain; spectra).
"""
import logging
import time
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from clipjax import analysis, spectra
from clipjax.convert import native
from clipjax.evaluate import Encoder, EvalView, datasets
from clipjax.train import loop


log = logging.getLogger(__name__)


def _run_dir(workdir: Path, seed: int, noise: float, name: str) -> Path:
  return workdir / f'seed{seed}' / f'noise{noise:g}' / name


def feature_spectra(export: Path, sets: dict) -> dict:
  """{set name: spectrum} of the exported encoder's image features (unit rows)."""
  model, params = native.load_native(str(export))
  encoder = Encoder(EvalView.of(model, params), None, context_length=0,
                    image_size=model.vision['image_size'])
  out = {}
  for name, spec in sets.items():
    image_set = datasets.load_part(encoder.image_size, **dict(spec))
    features, _ = datasets.embed(encoder, image_set)
    out[name] = spectra.spectrum(features)
  return out


def run_study(study, workdir) -> list:
  """Every (seed, ratio) pretraining, spectra and tuning run -> result rows."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed in study.seeds:
    for noise in study.noise_ratios:
      t0 = time.perf_counter()
      config = ConfigDict(study.pretrain.to_dict())
      config.seed, config.data.label_noise = int(seed), float(noise)
      export = loop.train_and_export(config, _run_dir(workdir, seed, noise, 'pretrain'))
      for name, s in feature_spectra(export, study.spectra).items():
        rows.append(dict(seed=seed, noise=noise, kind='spectrum', set=name, sve=s['sve'],
                         lsvr=s['lsvr'], singular_values=s['singular_values'].tolist()))
      for variant, tune_config in study.tune.items():
        config = ConfigDict(tune_config.to_dict())
        config.seed, config.nmtune.backbone = int(seed), str(export)
        evals = loop.train(config, _run_dir(workdir, seed, noise, variant))  # or read back
        for key, value in evals.items():
          if key.endswith('/classifier_top1'):
            rows.append(dict(seed=seed, noise=noise, kind='top1', variant=variant,
                             set=key.split('/')[0], top1=value))
      log.info('seed %d, noise %g: done in %.0f s', seed, noise, time.perf_counter() - t0)
  return rows


def _std(values) -> float:
  """The sample standard deviation over seeds (0 for one seed)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(values) -> str:
  if len(values) == 1:
    return f'{values[0]:.3f}'
  return f'{np.mean(values):.3f} ± {_std(values):.3f}'


def summarise(rows: list) -> dict:
  """{(set, variant or 'sve'/'lsvr'): {noise: [values over seeds]}}."""
  table = {}
  for row in rows:
    if row['kind'] == 'top1':
      table.setdefault((row['set'], row['variant']), {}).setdefault(row['noise'], []).append(
          row['top1'])
    else:
      for metric in ('sve', 'lsvr'):
        table.setdefault((row['set'], metric), {}).setdefault(row['noise'], []).append(
            row[metric])
  return table


def markdown(rows: list) -> str:
  table = summarise(rows)
  noises = sorted({r['noise'] for r in rows})
  seeds = sorted({r['seed'] for r in rows})
  head = '| set | measure | ' + ' | '.join(f'noise {n:g}' for n in noises) + ' |'
  lines = [f'Seeds {seeds}: mean ± std (top-1 of each tuning on its test set; spectra of '
           'the frozen features).', '', head, '|' + '---|' * (len(noises) + 2)]
  for (name, measure), by_noise in sorted(table.items()):
    lines.append(f'| {name} | {measure} | ' +
                 ' | '.join(_cell(by_noise[n]) if n in by_noise else '' for n in noises) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: list, path: Path) -> None:
  """Top-1 against noise per variant (one panel per set), SVE against noise, and the
  first seed's spectra of the last spectra set per noise ratio."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  table = summarise(rows)
  sets = sorted({name for name, measure in table if measure not in ('sve', 'lsvr')})
  fig = Figure(figsize=(4.2 * (len(sets) + 2), 3.4))
  axes = fig.subplots(1, len(sets) + 2)
  percent = lambda noise: np.asarray(noise) * 100
  for ax, name in zip(axes, sets):
    for (set_name, variant), by_noise in sorted(table.items()):
      if set_name == name and variant not in ('sve', 'lsvr'):
        noise = sorted(by_noise)
        ax.errorbar(percent(noise), [np.mean(by_noise[n]) for n in noise],
                    yerr=[_std(by_noise[n]) for n in noise], marker='o', capsize=3,
                    label=variant)
    ax.set_title(f'{name}: top-1 after tuning')
  for (name, measure), by_noise in sorted(table.items()):
    if measure == 'sve':
      noise = sorted(by_noise)
      axes[-2].plot(percent(noise), [np.mean(by_noise[n]) for n in noise], marker='o',
                    label=name)
  axes[-2].set_title('singular value entropy')
  for ax in axes[:-1]:
    ax.set_xlabel('caption noise in pretraining (%)')
    ax.legend(fontsize=8)
  spectrum_rows = [r for r in rows if r['kind'] == 'spectrum']
  if spectrum_rows:
    seed, name = spectrum_rows[0]['seed'], spectrum_rows[-1]['set']
    spectra.plot_spectra(axes[-1], {
        f'noise {r["noise"]:g}': np.asarray(r['singular_values']) for r in spectrum_rows
        if r['seed'] == seed and r['set'] == name})
    axes[-1].set_title(f'{name}: spectra (seed {seed})')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_results(rows: list, workdir) -> None:
  analysis.write_results(rows, workdir, markdown, plot, 'noise_study.png')


def show(rows: list, workdir: Path) -> None:
  write_results(rows, workdir)
  print(markdown(rows))
  print(f'results: {workdir / "results.md"}, {workdir / "noise_study.png"}')


if __name__ == '__main__':
  analysis.run_cli(run_study, show, 'Study')
