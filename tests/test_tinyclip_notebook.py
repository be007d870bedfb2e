"""The TinyCLIP notebook runs green end to end (tiny settings through CLIPJAX_NB_* variables)."""
import json

import pytest

from clipjax.evaluate import report


@pytest.mark.slow
def test_tinyclip_distillation_notebook(tmp_path, run_notebook):
  run_notebook('tinyclip_distillation.ipynb', dict(
      CLIPJAX_NB_TEACHER_STEPS='12', CLIPJAX_NB_STEPS='10', CLIPJAX_NB_BATCH='32',
      CLIPJAX_NB_EVAL_SAMPLES='64', CLIPJAX_NB_WORKDIR=str(tmp_path)))
  out = json.loads((tmp_path / 'tinyclip.json').read_text())
  assert list(out['students']) == ['InfoNCE, scratch', 'affinity, scratch', 'affinity, inherited']
  # The table reports the runs: the teacher's own final evaluation, each student's last
  # evaluation, and steps-to-teacher recomputed from each student's eval history.
  teacher = report.read_jsonl(tmp_path / 'teacher' / 'eval_history.jsonl')[-1]
  keys = ('shapes_shape/zeroshot_top1', 'shapes_colour/zeroshot_top1')
  assert out['teacher'] == {k: teacher[k] for k in keys}
  for name, row in out['students'].items():
    history = report.read_jsonl(tmp_path / name.replace(', ', '_') / 'eval_history.jsonl')
    assert history[-1]['step'] == 10
    for k in keys:
      assert row[k] == history[-1][k]
      hits = [r['step'] for r in history if r[k] >= teacher[k] - 0.05]
      assert row[f'{k}/steps_to_teacher'] == (hits[0] if hits else None)
    both = [r['step'] for r in history if all(r[k] >= teacher[k] - 0.05 for k in keys)]
    assert row['both/steps_to_teacher'] == (both[0] if both else None)
  assert (tmp_path / 'tinyclip.png').stat().st_size > 10_000
