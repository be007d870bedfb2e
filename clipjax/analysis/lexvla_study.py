"""LexVLA with and without the overuse penalty, and without it but with InfoNCE on each
vector's top 4 words too, against CLIP, at equal steps, on the CPU:

  python -m clipjax.analysis.lexvla_study --config configs/lexvla_quickstart.py:study \
      --workdir runs/lexvla [--config.seeds=0,1,2]

1. A tiny Llama (`clipjax.train.language_model`) trained once on the training captions,
   with instruction data in the lexical prompt's own form: the prompt's last token is
   taught one of the caption's content words (`corpus`), the in-context lexical
   prediction Llama 2 brings to the paper. Saved as a Hugging Face folder (DIR/llm).
2. Per seed, each run of `runs` (LexVLA, without the penalty, with the top-k term, CLIP)
   trained for the same steps on the same data and evaluated alike (retrieval, zero-shot,
   PatchDis for the lexical ones); the lexical runs also report the words active per
   item and across the evaluation images, and the top words of single-object images.
Finished parts are read back, not repeated (a changed config needs another workdir).
Writes results.json, results.md and lexvla_study.png.
"""
import logging
import time
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from clipjax import analysis
from clipjax.data import pipeline, shapes, transforms
from clipjax.train import language_model, loop

log = logging.getLogger(__name__)
# Column -> what it holds: evaluations, the last training batch's words (>= 1/sqrt(V)) and
# `lexical_statistics` on single-object images.
METRICS = {'retrieval/image_to_text_R@1': 'I->T R@1', 'retrieval/text_to_image_R@1': 'T->I R@1',
           'shapes_colour/zeroshot_top1': 'zero-shot colour',
           'shapes_shape/zeroshot_top1': 'zero-shot shape',
           'patchdis/patchdis_miou': 'PatchDis mIoU', 'patchdis/patchdis_random_miou': 'random mIoU',
           'image_active_words': 'words/image (batch)',
           'image_batch_active_words': 'words in batch',
           'image_top_word_share': 'top word share',
           'single_image_words': 'words/image (single)', 'top_words_hit': 'top-4 hit'}
# Sparsification settings of the retrieval curve: name -> (threshold, top_k).
SPARSITY = {'none (dense)': (0.0, 0), '>= 1/sqrt(V)': (None, 0), 'top 8': (None, 8),
            'top 4': (None, 4)}
# What a scene's caption says about it: colours, shapes, sizes, counts and where.
CONTENT_WORDS = (frozenset(shapes.SHAPES) | frozenset(shapes.COLOURS) | frozenset(shapes.SIZES)
                 | frozenset(shapes.NUMBER_WORDS.values())
                 | frozenset(('left', 'right', 'top', 'bottom', 'centre', 'center', 'middle',
                              'upper', 'lower')))


def lexical_answer(caption: str, rng: np.random.Generator) -> str:
  """One of the caption's content words (`CONTENT_WORDS`), drawn at random."""
  words = [w for w in caption.replace(',', ' ').split() if w in CONTENT_WORDS]
  if not words:
    raise ValueError(f'caption {caption!r} has none of the content words')
  return words[rng.integers(len(words))]


def corpus(source, seed: int = 0) -> tuple:
  """(captions, answers [N][1]) of every sample of a synthetic shapes source."""
  if not isinstance(source, shapes.ShapesSource):
    raise ValueError(f'the LexVLA study needs the synthetic shapes, got {source!r}')
  rng = np.random.default_rng(seed)
  captions = source.captions()
  return captions, [[lexical_answer(c, rng)] for c in captions]


def train_llm(study, folder: Path) -> dict:
  if (folder / 'config.json').exists():
    return {}
  captions, answers = corpus(pipeline.make_source(study.runs.lexvla.data))
  t0 = time.perf_counter()
  losses = language_model.train_language_model(
      captions, str(folder), facet_data=[('single', captions, answers)], **study.language_model)
  log.info('language model: loss %.2f -> %.2f in %.0f s', losses['loss_first'],
           losses['loss_last'], time.perf_counter() - t0)
  return losses


def sparsity_curve(config, state, top_ks=SPARSITY) -> dict:
  """Retrieval R@1 and active words per item (images, texts) of the evaluation set with
  the vectors sparsified at each (threshold, top_k): None = 1/sqrt(V), 0 = none."""
  from clipjax import evaluate  # pylint: disable=g-import-not-at-top
  from clipjax.methods import lexvla  # pylint: disable=g-import-not-at-top
  out = {}
  for name, (threshold, top_k) in top_ks.items():
    c = ConfigDict(config.to_dict())
    c.lexvla.eval_threshold, c.lexvla.eval_top_k = threshold, top_k
    method = lexvla.LexVLA(c)
    encoder = evaluate.Encoder(method.eval_view(state), None, context_length=0,
                               image_size=c.model.image_size)
    evaluator = evaluate.RetrievalEvaluator(
        **{k: v for k, v in c.evals.retrieval.items() if k != 'type'})
    data = evaluator.captioned_set(c.model.image_size)
    images = encoder.encode_images(data.get(np.arange(len(data))))
    texts = encoder.encode_texts(data.captions)
    scalars, _ = evaluator(encoder)
    out[name] = {'i2t_R@1': scalars['image_to_text_R@1'], 't2i_R@1': scalars['text_to_image_R@1'],
                 'image_words': float((images > 0).sum(-1).mean()),
                 'text_words': float((texts > 0).sum(-1).mean()), 'vocabulary': len(method.words)}
  return out


def lexical_statistics(method, state, image_size: int, num_images: int = 200) -> dict:
  """On single-object images: words active per image (>= 1/sqrt(V), no top-k cap); the
  fraction whose top 4 words hold their colour and shape."""
  task = shapes.single_objects('train', shapes.TRAIN_COMBOS, image_size, num_images, seed=5)
  images = transforms.normalize(task[0])
  vectors = np.asarray(method.model.apply({'params': state.variables()['params']}, images,
                                          method='encode_image'))
  active = vectors >= method.threshold
  top = method.top_words(vectors, 4)
  hits = [o.colour in words and o.shape in words for o, words in zip(task[1], top)]
  return {'single_image_words': float(active.sum(-1).mean()), 'vocabulary': len(method.words),
          'top_words_hit': float(np.mean(hits)),
          'top_words_example': [f'{o.colour} {o.shape}: ' + ' '.join(w)
                                for o, w in zip(task[1][:5], top[:5])]}


def run_study(study, workdir) -> list:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  llm = workdir / 'llm'
  train_llm(study, llm)
  rows = []
  for seed in study.seeds:
    for name, run in study.runs.items():
      config = ConfigDict(run.to_dict())
      config.seed, config.data = int(seed), study.runs.lexvla.data
      if config.method == 'lexvla':
        config.llm.path = str(llm)
      t0 = time.perf_counter()
      trainer = loop.Trainer(config, workdir / f'seed{seed}' / name)
      results = trainer.train()
      row = dict(seed=int(seed), run=name, steps=int(config.total_steps),
                 seconds=time.perf_counter() - t0,
                 **{m: float(results[m]) for m in METRICS if m in results})
      if config.method == 'lexvla':
        state = trainer.restore()[0]
        row.update(lexical_statistics(trainer.method, state, config.model.image_size))
        row['sparsity'] = sparsity_curve(config, state)
      rows.append(row)
  return rows


def markdown(rows: list) -> str:
  seeds = sorted({r['seed'] for r in rows})
  runs = list(dict.fromkeys(r['run'] for r in rows))
  metrics = [m for m in METRICS if any(m in r for r in rows)]
  lines = [f'Seeds {seeds}, {rows[0]["steps"]} steps each: mean (per seed).', '',
           '| run | ' + ' | '.join(METRICS[m] for m in metrics) + ' |',
           '|---|' + '---|' * len(metrics)]
  for name in runs:
    mine = [r for r in rows if r['run'] == name]
    lines.append(f'| {name} | ' + ' | '.join(
        analysis.seed_cell([r[m] for r in mine]) if m in mine[0] else '-' for m in metrics) + ' |')
  lexical = [r for r in rows if 'sparsity' in r]
  if lexical:
    vocab = lexical[0]['vocabulary']
    lines += ['', f'Retrieval against sparsity (vocabulary {vocab} words):', '',
              '| run | sparsification | image words | text words | I->T R@1 | T->I R@1 |',
              '|---|---|---|---|---|---|']
    for name in runs:
      mine = [r for r in lexical if r['run'] == name]
      for setting in (mine[0]['sparsity'] if mine else {}):
        cells = [[r['sparsity'][setting][k] for r in mine]
                 for k in ('image_words', 'text_words', 'i2t_R@1', 't2i_R@1')]
        lines.append(f'| {name} | {setting} | ' + ' | '.join(analysis.seed_cell(c) for c in cells) + ' |')
    lines += ['', 'Top 4 words of single-object images (seed %d, %s):' % (
        lexical[0]['seed'], lexical[0]['run']), '']
    lines += [f'- {e}' for e in lexical[0]['top_words_example']]
  return '\n'.join(lines) + '\n'


def plot(rows: list, path: Path) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(8, 3.4))
  ax = fig.subplots()
  runs = list(dict.fromkeys(r['run'] for r in rows))
  metrics = list(METRICS)[:6]
  width = 0.8 / len(runs)
  for j, name in enumerate(runs):
    mine = [r for r in rows if r['run'] == name]
    x = np.arange(len(metrics)) + (j - (len(runs) - 1) / 2) * width
    ax.bar(x, [np.mean([r.get(m, np.nan) for r in mine]) for m in metrics], width, label=name)
  ax.set_xticks(np.arange(len(metrics)), [METRICS[m] for m in metrics], fontsize=7)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def show(rows: list, workdir: Path) -> None:
  analysis.show_results(rows, workdir, markdown, plot, 'lexvla_study.png')


if __name__ == '__main__':
  analysis.run_cli(run_study, show, 'Study')
