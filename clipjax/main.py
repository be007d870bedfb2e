"""`python -m clipjax.main --config configs/NAME.py[:arg] --workdir DIR [--config.key=value ...]`.

`--config.mode=train` (default) trains or resumes; `--config.mode=eval` evaluates the latest
checkpoint in the workdir and writes `eval.json`; `--config.mode=export` writes the latest
checkpoint's model, spec and tokenizer to DIR/export (what `clipjax.convert` and TinyCLIP
teachers read). A config with `stages` trains them one after the other in the same run,
exporting each stage's model to DIR/stage_<i> (clipjax/train/stages.py).
"""
import logging

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])
# Multi-process runs (see clipjax/train/distributed.py and launch/README.md); launchers
# usually set these through the environment instead.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
  logging.getLogger('clipjax').setLevel(logging.INFO)
  from clipjax.train import distributed, loop
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  if config.mode not in ('train', 'eval', 'export'):
    raise app.UsageError(f'config.mode must be "train", "eval" or "export", got {config.mode!r}')
  trainer = loop.Trainer(config, _WORKDIR.value)
  if config.mode == 'export':
    folder = trainer.export_checkpoint()
    logging.getLogger('clipjax').info('Exported step %d to %s',
                                      trainer.checkpointer.latest_step(), folder)
    return
  if config.mode == 'train':
    results = trainer.train()
  else:
    results = trainer.evaluate_checkpoint()
  if jax.process_index() == 0:
    logging.getLogger('clipjax').info('Final: %s', ', '.join(f'{k}={v:.4g}' for k, v in sorted(results.items())))


if __name__ == '__main__':
  app.run(main)
