"""FLAME against CLIP on long captions, at equal steps, end to end on the CPU:

  python -m clipjax.analysis.flame_study --config configs/flame_quickstart.py:study \
      --workdir runs/flame [--config.seeds=0,1,2]

1. A tiny Llama (`clipjax.train.language_model`) trained once on the training captions,
   with instruction data in the facet prompts' own form: each facet's closing token is
   taught a one-word answer read off the scene (`corpus`). It stands in for Mistral-Nemo:
   no LLM can be downloaded here. Saved as a Hugging Face folder (DIR/llm).
2. The embedding job (`clipjax.embed`) over the training data (DIR/text).
3. Per seed, FLAME and CLIP trained for the same steps on the same images (CLIP reads the
   captions through its own 32-token text tower); both evaluated by long-caption retrieval
   (`retrieval` on 'shapes_long') and zero-shot colour.
Finished parts are read back, not repeated (a changed config needs another workdir).
Writes results.json, results.md and flame_study.png.
"""
import logging
import time
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from clipjax import analysis, embed
from clipjax.data import pipeline, shapes
from clipjax.train import language_model, loop

log = logging.getLogger(__name__)
METRICS = ('long_retrieval/image_to_text_R@1', 'long_retrieval/text_to_image_R@1',
           'long_retrieval/image_to_text_R@5', 'long_retrieval/text_to_image_R@5',
           'shapes_colour/zeroshot_top1')


def facet_answers(objects) -> list:
  """One word per facet of the 7-facet prompt, from a scene's objects in caption order:
  the count; the main (first) object's shape and colour; the minor (last) object's; the
  second object's shape and colour for the action and atmosphere facets, which a scene of
  flat shapes does not have."""
  count = shapes.NUMBER_WORDS[len(objects)]
  first, last, second = objects[0], objects[-1], objects[1]
  return [count, first.shape, first.colour, last.shape, last.colour, second.shape, second.colour]


def corpus(source) -> tuple:
  """(captions, answers) of every sample of a long-caption synthetic source."""
  if not isinstance(source, shapes.ShapesSource) or source.caption_style != 'long':
    raise ValueError(f'the FLAME study needs long synthetic captions, got {source!r}')
  captions = [source.caption(i) for i in range(len(source))]
  return captions, [facet_answers(source.scene(i)) for i in range(len(source))]


def train_llm(study, folder: Path) -> dict:
  if (folder / 'config.json').exists():
    return {}
  captions, answers = corpus(pipeline.make_source(study.flame.data))
  t0 = time.perf_counter()
  losses = language_model.train_language_model(
      captions, str(folder), facet_data=[('long', captions, answers)], **study.language_model)
  log.info('language model: loss %.2f -> %.2f in %.0f s', losses['loss_first'],
           losses['loss_last'], time.perf_counter() - t0)
  return losses


def run_study(study, workdir) -> list:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  llm = workdir / 'llm'
  train_llm(study, llm)
  embedding = ConfigDict(study.embed.to_dict())
  embedding.llm.path, embedding.data = str(llm), study.flame.data  # one training set for all
  stats = embed.embed_parts(embedding, workdir / 'text')
  if stats['samples']:
    log.info('embedded %d samples at %.1f samples/s', stats['samples'],
             stats['samples'] / stats['seconds'])
  rows = []
  for seed in study.seeds:
    for name in ('flame', 'clip'):
      config = ConfigDict(study[name].to_dict())
      config.seed, config.data = int(seed), study.flame.data
      if name == 'flame':
        config.llm.path, config.data.text_features = str(llm), str(workdir / 'text')
      t0 = time.perf_counter()
      results = loop.train(config, workdir / f'seed{seed}' / name)
      rows.append(dict(seed=int(seed), method=name, steps=int(config.total_steps),
                       seconds=time.perf_counter() - t0,
                       **{m: float(results[m]) for m in METRICS}))
  return rows


def markdown(rows: list) -> str:
  seeds = sorted({r['seed'] for r in rows})
  lines = [f'Seeds {seeds}, {rows[0]["steps"]} steps each: mean (per seed).', '',
           '| method | ' + ' | '.join(m.split('/')[1] for m in METRICS) + ' |',
           '|---|' + '---|' * len(METRICS)]
  for name in ('flame', 'clip'):
    mine = [r for r in rows if r['method'] == name]
    lines.append(f'| {name} | ' + ' | '.join(analysis.seed_cell([r[m] for r in mine]) for m in METRICS) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: list, path: Path) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(7, 3.4))
  ax = fig.subplots()
  for offset, name in ((-0.2, 'flame'), (0.2, 'clip')):
    mine = [r for r in rows if r['method'] == name]
    means = [np.mean([r[m] for r in mine]) for m in METRICS]
    ax.bar(np.arange(len(METRICS)) + offset, means, 0.4, label=name)
    for i, m in enumerate(METRICS):
      ax.scatter([i + offset] * len(mine), [r[m] for r in mine], color='k', s=6)
  ax.set_xticks(np.arange(len(METRICS)), [m.split('/')[1] for m in METRICS], fontsize=7)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def show(rows: list, workdir: Path) -> None:
  analysis.show_results(rows, workdir, markdown, plot, 'flame_study.png')


if __name__ == '__main__':
  analysis.run_cli(run_study, show, 'Study')
