"""Train-step throughput and MFU for the quickstart model and ViT-B/16 shapes.

  python benchmarks/train_step.py                     # CPU: peak = measured f32 matmul rate
  python benchmarks/train_step.py --peak_tflops 989   # e.g. H100 bf16 dense peak

Model FLOPs per example are what every run logs (`Trainer.step_flops`: XLA's count for
the lowered step, forward + backward + optimizer, without accumulation or remat) divided
by the batch size. The compiled step's count on GPU (jax 0.11.2) was far too low (7.3
GFLOP/example for ViT-B/16 against 124 on CPU, where it matches the analytic ~123); the
lowered count has not been checked on a GPU yet. MFU = achieved model FLOP/s / peak.
The first (compiling) step is excluded from timing.

  python benchmarks/train_step.py --against torch      # the same CLIP trained by PyTorch

`--against torch` times the `side by side` case (issue #23's tiny CLIP: ViT 4x256 p16 at
64 px, text 4x256 with 32 tokens, vocabulary 49,408, embedding 256, batch 128, float32)
in clipjax and in PyTorch in this one process, alternating, `--rounds` times each, and
prints every median step time and the ratio of the medians. The PyTorch model is
open_clip's `CLIP` with its `ClipLoss` when open_clip is importable (it is not a clipjax
dependency: its torchvision needs a CUDA build here), otherwise transformers'
`CLIPModel`, said in the output. Both sides run the same step: both towers, symmetric
InfoNCE with a learnable temperature, backward, global-norm clip, AdamW with clipjax's
settings (decay on matrices only, as clipjax's rules), on one fixed batch.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax

from clipjax import sharding
from clipjax.config_base import load_config
from clipjax.train import throughput
from clipjax.train.loop import Trainer

CASES = {
    'quickstart (tiny, 32px)': dict(model=dict(name='tiny', image_size=32, patch_size=8,
                                               context_length=24), batch_size=64),
    'ViT-B/16 (224px, text 77)': dict(model=dict(name='ViT-B/16', image_size=224, patch_size=16,
                                                 context_length=77), batch_size=8),
    'side by side (issue #23)': dict(model=dict(
        name='tiny', image_size=64, patch_size=16, embed_dim=256, context_length=32,
        vision=dict(width=256, layers=4, heads=4), text=dict(width=256, layers=4, heads=4)),
        vocab_size=49408, batch_size=128),
}


QUICKSTART = Path(__file__).resolve().parents[1] / 'configs/quickstart.py'


def word_tokenizer(folder: str, size: int) -> str:
  """A tokenizer.json of `size` whole-word tokens (the caption words first): a CLIP-sized
  embedding table without CLIP's BPE files, which are not here."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
  words = ['<pad>', '<sot>', '<eot>', '[UNK]'] + sorted(
      {w for c in shapes.ShapesSource(num_samples=200).captions() for w in c.replace(',', ' ').split()})
  words += [f'w{i}' for i in range(size - len(words))]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  path = str(Path(folder) / 'tokenizer.json')
  tok.save(path)
  return path


def clipjax_step(case, dtype, batch_size=None):
  """(trainer, step() -> None running one step and waiting for it, model FLOPs per step,
  the batch)."""
  c = load_config(str(QUICKSTART))
  c.model.update(case['model'])
  c.model.dtype = dtype
  c.batch_size = batch_size or case['batch_size']
  c.data.train_num_samples = 1000
  c.tokenizer.train_captions = 200
  c.evals = {}
  workdir = tempfile.mkdtemp()
  if case.get('vocab_size'):
    c.tokenizer.path = word_tokenizer(workdir, case['vocab_size'])
  trainer = Trainer(c, workdir)
  batch = sharding.global_batch(next(trainer.make_loader()), trainer.mesh)
  state = trainer.initial_state()
  flops = trainer.step_flops(state, batch)  # what every run's MFU counts
  box = [state]

  def step():
    box[0], m = trainer.train_step(box[0], batch)
    jax.block_until_ready(m)
  step()  # compiles
  return trainer, step, flops, batch


def timed(step, steps: int) -> float:
  """Seconds per step over `steps` steps."""
  t = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - t) / steps


def bench(name, case, steps, dtype, peak, batch_size=None):
  trainer, step, flops, _ = clipjax_step(case, dtype, batch_size)
  dt = timed(step, steps)
  b = trainer.config.batch_size
  return dict(name=name, batch=b, step_ms=dt * 1e3, ex_s=b / dt,
              gflop_ex=flops / b / 1e9, mfu=flops / dt / peak)


def open_clip_model(m: dict):
  """(name, model, loss(images, ids)) from open_clip, or None with why where it fails to
  import (its torchvision wheel on PyPI is a CUDA build: here it raises RuntimeError)."""
  try:
    import open_clip  # pylint: disable=g-import-not-at-top
  except (ImportError, RuntimeError) as e:
    return None, f'{type(e).__name__}: {str(e).splitlines()[0][:80]}'
  vision, text = m['vision'], m['text']
  model = open_clip.CLIP(
      embed_dim=m['embed_dim'],
      vision_cfg=dict(width=vision['width'], layers=vision['layers'],
                      head_width=vision['width'] // vision['heads'],
                      patch_size=m['patch_size'], image_size=m['image_size']),
      text_cfg=dict(width=text['width'], layers=text['layers'], heads=text['heads'],
                    context_length=m['context_length'], vocab_size=m['vocab_size']),
      output_dict=True)
  loss_fn = open_clip.ClipLoss()

  def loss_of(images, ids):
    out = model(images, ids)
    return loss_fn(out['image_features'], out['text_features'], out['logit_scale'])
  return (f'open_clip {open_clip.__version__}', model, loss_of), None


def transformers_model(m: dict, why: str):
  import transformers  # pylint: disable=g-import-not-at-top
  tower = lambda t, **kw: dict(hidden_size=t['width'], num_hidden_layers=t['layers'],
                               num_attention_heads=t['heads'], intermediate_size=4 * t['width'],
                               hidden_act='gelu', **kw)
  model = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=tower(m['vision'], image_size=m['image_size'], patch_size=m['patch_size']),
      text_config=tower(m['text'], max_position_embeddings=m['context_length'],
                        vocab_size=m['vocab_size']),
      projection_dim=m['embed_dim']))

  def loss_of(images, ids):
    return model(input_ids=ids, pixel_values=images, return_loss=True).loss
  return (f'transformers {transformers.__version__} CLIPModel (open_clip: {why})', model,
          loss_of)


def torch_step(case, batch, optim):
  """(name of the PyTorch implementation, step() -> None, parameters) for the
  side-by-side case, on clipjax's batch with clipjax's AdamW settings (`optim`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  m = dict(case['model'], vocab_size=case['vocab_size'])
  found, why = open_clip_model(m)
  name, model, loss_of = found or transformers_model(m, why)
  matrices = [p for p in model.parameters() if p.ndim >= 2]
  others = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([dict(params=matrices, weight_decay=optim.weight_decay),
                           dict(params=others, weight_decay=0.0)],
                          lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)
  images = torch.from_numpy(np.asarray(batch['image'], np.float32).transpose(0, 3, 1, 2).copy())
  ids = torch.from_numpy(np.asarray(batch['text'], np.int64))

  def step():
    opt.zero_grad(set_to_none=True)
    loss_of(images, ids).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
    opt.step()
  step()
  return name, step, sum(p.numel() for p in model.parameters())


def side_by_side(rounds: int, steps: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  case = CASES['side by side (issue #23)']
  trainer, ours, _, batch = clipjax_step(case, 'float32')
  name, theirs, their_params = torch_step(case, batch, trainer.config.optim)
  params = {'clipjax': sum(x.size for x in jax.tree_util.tree_leaves(trainer.abstract_state.params)),
            name: their_params}
  times = {'clipjax': [], name: []}
  for _ in range(rounds):
    times['clipjax'].append(timed(ours, steps))
    times[name].append(timed(theirs, steps))
  print(f'Side by side, batch {case["batch_size"]}, {steps} steps a round, {rounds} rounds '
        f'alternating, torch {torch.__version__} with {torch.get_num_threads()} threads:\n')
  print('| implementation | parameters | ms per step, each round | median |\n|---|---|---|---|')
  for impl, ts in times.items():
    print(f'| {impl} | {params[impl] / 1e6:.2f}M | ' + ', '.join(f'{1e3 * t:.0f}' for t in ts) +
          f' | {1e3 * statistics.median(ts):.0f} |')
  ratio = statistics.median(times[name]) / statistics.median(times['clipjax'])
  print(f'\nclipjax steps/s over {name.split(" (")[0]}: {ratio:.2f}x')


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='accelerator peak; default: measured f32 matmul rate of this machine')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--only', default='', help='substring of a case name')
  p.add_argument('--batch_size', type=int, default=None,
                 help="override every case's batch (the defaults are CPU-sized)")
  p.add_argument('--against', choices=('torch',), default=None,
                 help='time the side-by-side case in clipjax and PyTorch, alternating')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--side_steps', type=int, default=20, help='steps a round, side by side')
  a = p.parse_args()
  if a.against:
    side_by_side(a.rounds, a.side_steps)
    return
  peak = a.peak_tflops * 1e12 if a.peak_tflops else throughput.matmul_peak_flops()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}   peak: {peak / 1e12:.3f} '
        f'TFLOP/s ({"given" if a.peak_tflops else "measured 1024^3 f32 matmul, as runs do"})   dtype: {a.dtype}')
  print(f'| {"model":28s} | batch | step ms | examples/s | GFLOP/example | MFU |')
  print('|' + '---|' * 6)
  for name, case in CASES.items():
    if a.only in name:
      r = bench(name, case, a.steps, a.dtype, peak, a.batch_size)
      print(f'| {r["name"]:28s} | {r["batch"]:5d} | {r["step_ms"]:7.1f} | {r["ex_s"]:10.1f} | '
            f'{r["gflop_ex"]:13.2f} | {100 * r["mfu"]:.1f}% |', flush=True)


if __name__ == '__main__':
  main()
