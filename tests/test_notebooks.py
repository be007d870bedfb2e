"""The notebooks run green end to end (tiny settings through CLIPJAX_NB_* variables)."""
import json

import pytest


@pytest.mark.slow
def test_ablation_clip_vs_siglip_notebook(tmp_path, run_notebook):
  notebook = run_notebook('ablation_clip_vs_siglip.ipynb', dict(
      CLIPJAX_NB_STEPS='24', CLIPJAX_NB_BATCH='32', CLIPJAX_NB_EVAL_SAMPLES='64',
      CLIPJAX_NB_WORKDIR=str(tmp_path)))
  rows = json.loads((tmp_path / 'ablation.json').read_text())
  assert list(rows) == ['random init', 'clip', 'siglip']
  assert all(0.0 <= v <= 1.0 for r in rows.values() for k, v in r.items() if 'log10_C' not in k)
  for name in ('ablation.png', 'clip/training_curves.png', 'siglip/training_curves.png'):
    assert (tmp_path / name).stat().st_size > 10_000, name
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs)
  assert any('| random init |' in o.get('data', {}).get('text/markdown', '') for o in outputs)
