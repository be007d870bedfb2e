"""Analyses of data and trained models (`python -m clipjax.analysis.<name>`): studies that
drive the training loop, evaluators and exports through their Python API, and jobs over
pretraining data that read it as training does; none adds a second stack."""
import json
import logging
from pathlib import Path


def write_results(rows: list, workdir, markdown, plot, figure: str) -> None:
  """A study's results.json (its rows), results.md (`markdown(rows)`) and figure
  (`plot(rows, path)`), each written whole or not at all."""
  from clipjax.evaluate import report  # pylint: disable=g-import-not-at-top
  workdir = Path(workdir)
  report.atomic_write(workdir / 'results.json', json.dumps(rows, indent=1))
  report.atomic_write(workdir / 'results.md', markdown(rows))
  plot(rows, workdir / figure)


def show_results(rows: list, workdir, markdown, plot, figure: str) -> None:
  """`write_results`, then the table and where the files went, on stdout."""
  workdir = Path(workdir)
  write_results(rows, workdir, markdown, plot, figure)
  print(markdown(rows))
  print(f'results: {workdir / "results.md"}, {workdir / figure}')


def seed_cell(values, digits: int = 3) -> str:
  """A table cell of per-seed values: 'mean (v0, v1, ...)', or the value alone for one."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.float64)
  text = ', '.join(f'{v:.{digits}f}' for v in values)
  return text if len(values) == 1 else f'{values.mean():.{digits}f} ({text})'


def run_cli(run, show, what: str) -> None:
  """The command line of an analysis: --config (ml_collections) and --workdir, defined
  here when run (tests import several analyses into one process); then
  `show(run(config, workdir), workdir)` with the libraries' INFO logs quiet."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file('config', None, f'{what} config (ml_collections).')
  workdir = flags.DEFINE_string('workdir', None, 'Directory for its files and results.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
    logging.getLogger('clipjax').setLevel(logging.INFO)
    show(run(config.value, workdir.value), Path(workdir.value))

  app.run(main)
