"""The TinyCLIP notebook runs green end to end (tiny settings through CLIPJAX_NB_* variables)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tinyclip_distillation_notebook(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  for key, value in dict(CLIPJAX_NB_TEACHER_STEPS='12', CLIPJAX_NB_STEPS='10', CLIPJAX_NB_BATCH='32',
                         CLIPJAX_NB_EVAL_SAMPLES='64', CLIPJAX_NB_WORKDIR=str(tmp_path),
                         PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu').items():
    monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
  notebook = nbformat.read(ROOT / 'notebooks' / 'tinyclip_distillation.ipynb', as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(ROOT / 'notebooks')}}).execute()
  out = json.loads((tmp_path / 'tinyclip.json').read_text())
  assert list(out['students']) == ['InfoNCE, scratch', 'affinity, scratch', 'affinity, inherited']
  assert all(0.0 <= v <= 1.0 for r in out['students'].values() for k, v in r.items()
             if not k.endswith('steps_to_teacher'))
  assert (tmp_path / 'tinyclip.png').stat().st_size > 10_000
