"""Defaults every config starts from, so each file only says what it changes, and the
meaning of every key (`reference()` writes configs/README.md from it; a test keeps both in
sync: `python -m clipjax.config_base > configs/README.md`)."""
import os

from ml_collections import ConfigDict

from clipjax.sharding import DEFAULT_RULES


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = 'train'
  c.method = 'clip'
  c.seed = 0
  c.total_steps = 1000
  c.stop_at_step = 0  # stop (with a checkpoint) here, inside the schedule; 0: total_steps
  c.batch_size = 256
  c.grad_accum_steps = 1
  c.log_every = 50
  c.eval_every = 1000
  c.eval_at_start = True  # evaluate the random init too: the baseline every curve starts at
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.loss_implementation = 'auto'
  c.loss_collective = 'gather'
  c.peak_flops_per_device = 0.0  # for MFU; 0: clipjax/train/throughput.py's table
  c.compilation_cache_dir = '~/.cache/clipjax/jax'  # compiled programs kept for the next run
  # dcn_data: slices (TPU) or processes (GPU) the data axis spans over the network.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]
  c.tokenizer = ConfigDict(dict(path='', vocab_size=4096, train_captions=5000))
  # rules: ordered per-parameter policies (frozen, lr, schedule, decay, ascent, clip), e.g.
  # [dict(match='textual/.*', frozen=True)] for a LiT-style frozen text tower
  # (clipjax/train/optimizer.py).
  c.optim = ConfigDict(dict(lr=5e-4, warmup_steps=100, end_lr_factor=0.0, b1=0.9, b2=0.98,
                            eps=1e-6, weight_decay=0.2, grad_clip=1.0, rules=()))
  c.evals = ConfigDict()
  # Towers from pretrained checkpoints (any format clipjax.convert reads), e.g.
  # [dict(target='visual', src='ckpts/hf-clip', subtree='visual')].
  c.init_from = []
  # Stages of one run (clipjax/train/stages.py): one dict of dotted overrides per stage;
  # each starts from the model the previous one ended with.
  c.stages = []
  # A native model folder (e.g. DIR/export) this run starts from (Method.prepare).
  c.previous_stage = ''
  return c


def synthetic_data(train_num_samples: int) -> ConfigDict:
  return ConfigDict(dict(format='synthetic', train='', subset='',
                         train_num_samples=train_num_samples,
                         synthetic_split='train', digit_fraction=0.0, zipf=0.0,
                         caption_style='short',
                         num_workers=0, read_threads=0, augment=dict(scale=(0.9, 1.0)),
                         canvas_size=0,
                         shuffle_buffer=1000,
                         cycle_length=4, label_noise=0.0, caption_key='txt',
                         csv_img_key='filepath', csv_caption_key='title', csv_separator='',
                         extra_columns=ConfigDict()))


def load_config(path: str, arg: str = None) -> ConfigDict:
  """`get_config(arg)` of a config file by path, for notebooks, tests and benchmarks.

  `path` may be given as `file.py:arg`, as on the command line.
  """
  import importlib.util
  if arg is None and ':' in os.path.basename(path):
    path, arg = path.rsplit(':', 1)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'_clipjax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


# One line per key of base_config(), synthetic_data() and a model; methods document their
# own section (config.<method>) in their module docstring.
MEANING = {
    'mode': 'train (or resume), eval (the latest checkpoint) or export (its model)',
    'method': 'registered method (clipjax/methods), or module:Class',
    'seed': 'initialisation, data order and augmentation',
    'total_steps': 'optimizer steps of the whole run',
    'stop_at_step': 'stop there with a checkpoint, schedules unchanged (0: at total_steps); a larger value resumes',
    'batch_size': 'global batch over all devices and processes',
    'grad_accum_steps': 'micro-batches per step (GradCache through the method)',
    'log_every': 'steps between lines of metrics.jsonl and the progress bar',
    'eval_every': 'steps between evaluations (0: none)',
    'eval_at_start': 'also evaluate the random init at step 0 (the curves\' baseline)',
    'checkpoint_every': 'steps between checkpoints (also at the end and on Ctrl-C/SIGTERM)',
    'keep_checkpoints': 'checkpoints kept on disk (the newest)',
    'loss_implementation': 'contrastive loss: auto, xla, chunked or pallas (clipjax/kernels)',
    'loss_collective': 'sharded loss: gather (all-gather columns) or ring (pass blocks; O(B*D) '
                       'memory split over devices)',
    'compilation_cache_dir': "JAX's persistent compilation cache: later runs load the "
                             "programs instead of compiling them ('': off; "
                             'JAX_COMPILATION_CACHE_DIR, when set, wins)',
    'peak_flops_per_device': 'the MFU denominator; 0: the device table (dense bf16), on a '
                             'CPU a measured float32 matmul (clipjax/train/throughput.py)',
    'mesh.data': 'data-parallel axis size (-1: the remaining devices)',
    'mesh.fsdp': 'axis sharding parameters and batch (ZeRO-3 style)',
    'mesh.tensor': 'axis sharding matrices within a layer',
    'mesh.dcn_data': 'slices (TPU) or processes (GPU) the data axis spans over the network',
    'sharding_rules': '(logical axis, mesh axes) pairs: how parameters and activations shard',
    'tokenizer.path': 'a tokenizer.json; empty: a BPE trained on training captions',
    'tokenizer.vocab_size': 'vocabulary of the trained BPE',
    'tokenizer.train_captions': 'captions the BPE is trained on',
    'optim.lr': 'peak learning rate (AdamW)',
    'optim.warmup_steps': 'linear warm-up before the cosine decay',
    'optim.end_lr_factor': 'final learning rate as a fraction of the peak',
    'optim.b1': 'AdamW beta 1',
    'optim.b2': 'AdamW beta 2',
    'optim.eps': 'AdamW epsilon',
    'optim.weight_decay': 'decoupled weight decay (not on biases, norms, temperatures)',
    'optim.grad_clip': 'global gradient-norm clip (0: none)',
    'optim.rules': 'ordered per-parameter regex rules: frozen, lr, schedule, decay, ascent, '
                   'clip (clipjax/train/optimizer.py)',
    'evals': 'name -> dict(type=zeroshot, linear_probe, retrieval or classifier, dataset=..., ...) '
             '(clipjax/evaluate)',
    'init_from': 'towers from pretrained checkpoints: dict(target, src, subtree[, ignore])',
    'stages': 'one dict of dotted overrides per stage of the run (clipjax/train/stages.py)',
    'previous_stage': 'a native model folder the run starts from (Method.prepare)',
    'model.name': 'preset (clipjax/models/__init__.py); other model keys override its fields',
    'model.image_size': 'input resolution',
    'model.patch_size': 'ViT patch size',
    'model.context_length': 'text tokens per caption',
    'model.pool': 'image embedding: cls token or mean of tokens (gap)',
    'model.dtype': 'activation dtype (float32 or bfloat16); parameters stay float32',
    'model.attention_impl': 'attention: xla, chunked or pallas (clipjax/kernels)',
    'model.remat': 'recompute each block in the backward pass (memory for compute)',
    'data.format': 'synthetic, wds (tar shards), array_record, csv, image_set (labelled; '
                   'data.image_set: clipjax.evaluate.datasets.load_part arguments) or '
                   'features (an .npz of features and labels in data.train)',
    'data.train': 'shards as a brace pattern or list, or the csv/array_record path',
    'data.subset': 'a subset manifest (clipjax/data/manifest.py, e.g. TL;DR\'s): train on '
                   'the samples it keeps',
    'data.train_num_samples': 'samples of the synthetic source',
    'data.digit_fraction': 'share of drawn digits among the synthetic shapes',
    'data.synthetic_split': "synthetic shapes: 'train' (held-out pairs left out) or 'all' pairs",
    'data.caption_style': "synthetic shapes: 'short' (1-3 objects) or 'long' (2-4, every attribute)",
    'data.zipf': 'synthetic shapes: shape and colour of rank r drawn in proportion to r**-zipf',
    'data.num_workers': ('grain worker processes (0: in the main process); a run resumes '
                         'with the number it started with; from a random-access source '
                         "and process_split 'batch' any number gives the same batches "
                         'while no sample is skipped'),
    'data.read_threads': 'threads reading ahead of a random-access source and of the feature '
                         'pass (0: none; pays where reading releases the GIL, e.g. JPEG decode)',
    'data.augment.scale': 'random-resized-crop area range',
    'data.canvas_size': 'crop and resize on the accelerator (uint8 pixels up to this size '
                        'shipped; 0: on the host; clipjax/data/device_resize.py)',
    'data.shuffle_buffer': 'window of the shuffle of shard streams',
    'data.cycle_length': 'shards read at once (interleaved)',
    'data.label_noise': 'fraction of samples whose captions are swapped among themselves',
    'data.caption_key': 'the caption member of a WebDataset sample (txt)',
    'data.csv_img_key': 'csv column of image paths',
    'data.csv_caption_key': 'csv column of captions',
    'data.csv_separator': 'csv separator (empty: by extension, tab for .tsv)',
    'data.extra_columns': 'more members/columns to carry into records: name -> key',
}


def flat_keys(config, prefix: str = '') -> dict:
  """{dotted key: value} down to leaves; `evals` and `extra_columns` stay whole."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ConfigDict) and value and key not in ('evals', 'extra_columns'):
      out.update(flat_keys(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def reference() -> str:
  """configs/README.md: every key, its default, its meaning."""
  quickstart = load_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                        'quickstart.py'))
  config = base_config()
  config.model, config.data = quickstart.model, quickstart.data
  keys = flat_keys(config)
  missing = sorted(set(keys) - set(MEANING))
  if missing:
    raise KeyError(f'config keys without a line in config_base.MEANING: {missing}')
  show = lambda v: repr(v.to_dict() if isinstance(v, ConfigDict) else v)
  return '\n'.join([
      '# Config keys', '',
      'Generated by `python -m clipjax.config_base > configs/README.md` from',
      '`clipjax/config_base.py`: its defaults, with `model` and `data` as in',
      '`configs/quickstart.py`. Override any key with `--config.key=value`. Method sections',
      '(`config.aclip`, `config.flame`, `config.lexvla`, `config.nmtune`, `config.protoclip`,',
      '`config.tinyclip`) are documented in their modules (`clipjax/methods/`).', '',
      '| key | default | meaning |', '|---|---|---|',
      *(f'| `{k}` | `{show(keys[k])}` | {MEANING[k]} |' for k in sorted(keys))]) + '\n'


if __name__ == '__main__':
  print(reference(), end='')
