"""The TinyCLIP notebook runs green end to end (tiny settings through CLIPJAX_NB_* variables)."""
import json

import pytest


@pytest.mark.slow
def test_tinyclip_distillation_notebook(tmp_path, run_notebook):
  run_notebook('tinyclip_distillation.ipynb', dict(
      CLIPJAX_NB_TEACHER_STEPS='12', CLIPJAX_NB_STEPS='10', CLIPJAX_NB_BATCH='32',
      CLIPJAX_NB_EVAL_SAMPLES='64', CLIPJAX_NB_WORKDIR=str(tmp_path)))
  out = json.loads((tmp_path / 'tinyclip.json').read_text())
  assert list(out['students']) == ['InfoNCE, scratch', 'affinity, scratch', 'affinity, inherited']
  assert all(0.0 <= v <= 1.0 for r in out['students'].values() for k, v in r.items()
             if not k.endswith('steps_to_teacher'))
  assert (tmp_path / 'tinyclip.png').stat().st_size > 10_000
