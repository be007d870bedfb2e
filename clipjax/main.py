"""`python -m clipjax.main --config configs/NAME.py[:arg] --workdir DIR [--config.key=value ...]`.

Modes (`--config.mode`):
  train   (default) trains, or resumes the latest checkpoint in DIR;
  eval    evaluates the latest checkpoint in DIR and writes DIR/eval.json;
  export  writes the latest checkpoint's model, spec and tokenizer to DIR/export (what
          `clipjax.convert` and TinyCLIP teachers read).
A config with `stages` trains them one after the other in the same run, exporting each
stage's model to DIR/stage_<i> (clipjax/train/stages.py). Ctrl-C or SIGTERM saves a
checkpoint at the end of the step and exits; a second Ctrl-C exits at once.

A mistake in the command (an unknown or mistyped key, a value of the wrong type, a flag
given twice, a missing config, data or checkpoint) stops before any compute with one line
naming it; `--debug` shows the traceback instead.
"""
import logging
import re
import shutil
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from clipjax import host_allocator

MODES = ('train', 'eval', 'export')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the full traceback of an error.')
# Multi-process runs (see clipjax/train/distributed.py and launch/README.md); launchers
# usually set these through the environment instead.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')

log = logging.getLogger('clipjax')


class UserError(Exception):
  """A mistake in the command line or its inputs: reported in one line, no traceback."""


def _fail(message: str, code: int = 2) -> None:
  print(f'error: {message}', file=sys.stderr)
  if '--debug' not in sys.argv:
    print('(--debug shows the traceback)', file=sys.stderr)
  sys.exit(code)


def _refuse_repeats(args: list) -> None:
  """absl keeps the last of a repeated flag; a shell-expanded `{a..b}` pattern repeats one
  silently, so a repeat is an error."""
  seen = {}
  for arg in args:
    if arg == '--':
      break
    if arg.startswith('--'):
      name = arg[2:].split('=', 1)[0]
      if name in seen:
        hint = (" (the shell expands an unquoted {a..b} pattern into one flag per path: quote "
                "the whole flag, '--config.key=path/{00000..00003}.tar')" if '/' in arg else '')
        raise UserError(f'--{name} is given twice ({seen[name]} and {arg}){hint}')
      seen[name] = arg


def _explain(error: Exception, argv: list) -> str:
  """One line for a flag or config-file error (absl and ml_collections chain several)."""
  chain = []
  while error is not None:
    chain.append(error)
    error = error.__cause__ or error.__context__
  key_error = next((e for e in reversed(chain) if isinstance(e, KeyError)), None)
  if key_error is not None:  # an override naming no key of the config
    key = str(key_error.args[0]).strip("'\"").split('\n')[0]
    flag = next((a.split('=', 1)[0] for a in argv
                 if a.startswith('--config.') and re.search(rf'\.{re.escape(key)}(=|$)', a)),
                f'--config...{key}')
    suggestion = re.search(r'Did you mean "([^"]+)"', ' '.join(str(e) for e in chain))
    hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
    return (f'{flag}: the config has no key {key!r}{hint}; its keys are listed in '
            'configs/README.md')
  for e in chain:
    if isinstance(e, FileNotFoundError) or 'No such file' in str(e):
      return f'--config: config file not found: {_config_path(argv)}'
  message = str(chain[0]).strip().split('\n')[0]
  return message if message.startswith('flag --') else f'{type(chain[0]).__name__}: {message}'


def _config_path(argv: list) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return '?'


def parse_flags(argv: list) -> list:
  """absl's parsing, with every mistake turned into one line (`--debug`: the traceback)."""
  try:
    _refuse_repeats(argv[1:])
    rest = flags.FLAGS(argv)
    mode = _CONFIG.value.mode  # config files load lazily: make a missing one fail here
  except Exception as e:  # pylint: disable=broad-except
    if '--debug' in argv:
      raise
    _fail(e.args[0] if isinstance(e, UserError) else _explain(e, argv))
  if mode not in MODES:
    _fail(f'--config.mode={mode!r}: choose one of {", ".join(MODES)}')
  return rest


def _run(config, workdir: str) -> None:
  import jax
  from clipjax.evaluate import report
  from clipjax.train import loop
  trainer = loop.Trainer(config, workdir)
  if config.mode == 'export':
    folder = trainer.export_checkpoint()
    log.info('Exported step %d to %s', trainer.checkpointer.latest_step(), folder)
    return
  results = trainer.train() if config.mode == 'train' else trainer.evaluate_checkpoint()
  if results and jax.process_index() == 0:
    print(report.summary_table(results, str(trainer.workdir)))


def _unused(workdir: Path) -> bool:
  """Nothing a run wrote is worth keeping: no checkpoint, no training log."""
  checkpoints = workdir / 'checkpoints'
  return not (workdir / 'metrics.jsonl').exists() and not (
      checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()))


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
  log.setLevel(logging.INFO)
  from clipjax.train import distributed, loop
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir = Path(_WORKDIR.value)
  created = not workdir.exists()
  try:
    _run(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, loop.NonFiniteLossError,
          distributed.DistributedInitError, KeyboardInterrupt) as e:
    if created and workdir.exists() and _unused(workdir):
      shutil.rmtree(workdir, ignore_errors=True)
    if _DEBUG.value:
      raise
    if isinstance(e, KeyboardInterrupt):
      _fail('interrupted before a checkpoint could be saved', code=130)
    _fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), code=1)


if __name__ == '__main__':
  host_allocator.reexec('clipjax.main')  # before JAX is imported: see its docstring
  app.run(main, flags_parser=parse_flags)
