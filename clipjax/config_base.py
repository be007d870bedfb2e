"""Defaults every config starts from, so each file only says what it changes."""
from ml_collections import ConfigDict

from clipjax.sharding import DEFAULT_RULES


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = 'train'
  c.method = 'clip'
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 256
  c.grad_accum_steps = 1
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.loss_implementation = 'auto'
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
  return ConfigDict(dict(format='synthetic', train='', train_num_samples=train_num_samples,
                         digit_fraction=0.0,
                         num_workers=0, augment=dict(scale=(0.9, 1.0)), shuffle_buffer=1000,
                         cycle_length=4, label_noise=0.0, caption_key='txt',
                         csv_img_key='filepath', csv_caption_key='title', csv_separator='',
                         extra_columns=ConfigDict()))


def load_config(path: str, arg: str = None) -> ConfigDict:
  """`get_config(arg)` of a config file by path, for notebooks, tests and benchmarks.

  `path` may be given as `file.py:arg`, as on the command line.
  """
  import importlib.util
  import os
  if arg is None and ':' in os.path.basename(path):
    path, arg = path.rsplit(':', 1)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'_clipjax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
