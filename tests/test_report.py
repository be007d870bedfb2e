"""The run report: labelled curves with chance and random-init lines, chance levels, summary."""
import json
import os

import numpy as np
import pytest

from clipjax.evaluate import report

DIGITS = ('zeroshot_top1', 'zeroshot_mean_per_class_recall', 'zeroshot_top5')
PROBE = ('linear_probe_top1', 'linear_probe_mean_per_class_recall', 'linear_probe_top5')
RECALLS = tuple(f'{d}_R@{k}' for d in ('image_to_text', 'text_to_image') for k in (1, 5, 10))
LOG10_C = -2.25  # not a value any accuracy reaches


def eval_row(step: int) -> dict:
  """Accuracies rising with the step, from a random init at step 0."""
  row = {'step': step}
  for i, metric in enumerate(DIGITS):
    row[f'digits/{metric}'] = 0.1 + 0.01 * i + step / 100
  for i, metric in enumerate(PROBE):
    row[f'digits_probe/{metric}'] = 0.3 + 0.02 * i + step / 200
  row['digits_probe/linear_probe_log10_C'] = LOG10_C
  for i, metric in enumerate(RECALLS):
    row[f'ret/{metric}'] = 0.02 + 0.01 * i + step / 100
  return row


@pytest.fixture
def workdir(tmp_path):
  """metrics.jsonl, eval_history.jsonl from step 0 and details as the evaluators write them."""
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for step in range(1, 41):
      f.write(json.dumps({'step': step, 'loss': 4.0 / step, 'learning_rate': 1e-3 * step,
                          'examples_per_sec': 100.0 + step}) + '\n')
  for step in (0, 20, 40):
    report.write_eval_json(str(tmp_path), eval_row(step), step=step)
  digits = dict(per_class_accuracy=np.full(10, 0.5, np.float32),
                class_counts=np.full(10, 9), classnames=np.asarray([str(i) for i in range(10)]))
  # An older, different file: the newest step (40, not 5 as the names sort) must be read.
  report.save_eval_details(str(tmp_path), {'digits': dict(per_class_accuracy=np.ones(8))}, 5)
  report.save_eval_details(str(tmp_path), {
      'digits': digits,
      'digits_probe': dict(per_class_accuracy=np.ones(7, np.float32),
                           classnames=np.asarray(list('abcdefg'))),
      'ret': dict(captions_per_image=np.ones(50, np.int64)),
  }, step=40)
  return str(tmp_path)


def panels(fig) -> dict:
  return {ax.get_title(): ax for ax in fig.axes if ax.axison}


def lines(ax) -> dict:
  return {line.get_label(): line for line in ax.get_lines()}


def test_chance_levels_from_details(workdir):
  assert report.chance_level(workdir, 'digits/zeroshot_top1') == pytest.approx(1 / 10)
  assert report.chance_level(workdir, 'digits/zeroshot_mean_per_class_recall') == pytest.approx(0.1)
  assert report.chance_level(workdir, 'digits/zeroshot_top5') == pytest.approx(5 / 10)
  assert report.chance_level(workdir, 'digits_probe/linear_probe_top1') == pytest.approx(1 / 7)
  assert report.chance_level(workdir, 'digits_probe/linear_probe_top5') == pytest.approx(5 / 7)
  assert report.chance_level(workdir, 'digits_probe/linear_probe_log10_C') is None
  for k in (1, 5, 10):  # one caption per image: k / N both ways
    assert report.chance_level(workdir, f'ret/text_to_image_R@{k}') == pytest.approx(k / 50)
    assert report.chance_level(workdir, f'ret/image_to_text_R@{k}') == pytest.approx(k / 50)
  assert report.chance_level(workdir, 'missing/zeroshot_top1') is None


def test_image_to_text_chance_with_several_captions():
  """3 images with 2 captions each and one without: 6 texts. Text-to-image: k / 4 images.
  Image-to-text at k=2: 1 - C(4, 2) / C(6, 2) = 0.6 for each captioned image."""
  details = {'captions_per_image': np.array([2, 2, 2, 0])}
  assert report.chance_from_details('text_to_image_R@2', details) == pytest.approx(0.5)
  assert report.chance_from_details('image_to_text_R@2', details) == pytest.approx(0.6)
  assert report.chance_from_details('image_to_text_R@1', details) == pytest.approx(2 / 6)
  assert report.chance_from_details('image_to_text_R@5', details) == pytest.approx(1.0)
  assert report.chance_from_details('text_to_image_R@10', details) == 1.0


def test_figure_axes_labels_and_baselines(workdir):
  axes = panels(report.run_figure(workdir))
  assert {title: ax.get_ylabel() for title, ax in axes.items()} == {
      'training loss': 'loss', 'learning rate': 'learning rate', 'throughput': 'examples/s',
      'digits: zero-shot': 'accuracy', 'digits_probe: linear probe': 'accuracy',
      'ret: image → text': 'recall@k', 'ret: text → image': 'recall@k'}
  assert all(ax.get_xlabel() == 'step' for ax in axes.values())

  init = eval_row(0)
  digits = lines(axes['digits: zero-shot'])
  assert set(digits) == {'top-1', 'mean per-class recall', 'top-5',
                         'chance top-1, mean per-class recall', 'chance top-5',
                         'random init top-1', 'random init mean per-class recall',
                         'random init top-5'}
  np.testing.assert_allclose(digits['chance top-1, mean per-class recall'].get_ydata(), 0.1)
  np.testing.assert_allclose(digits['chance top-5'].get_ydata(), 0.5)
  np.testing.assert_allclose(digits['random init top-1'].get_ydata(),
                             init['digits/zeroshot_top1'])
  np.testing.assert_allclose(digits['random init top-5'].get_ydata(),
                             init['digits/zeroshot_top5'])
  assert {digits[n].get_linestyle() for n in digits if n.startswith('chance')} == {':'}
  assert {digits[n].get_linestyle() for n in digits if n.startswith('random init')} == {'--'}
  np.testing.assert_allclose(digits['top-1'].get_xdata(), [0, 20, 40])
  top1, recall = digits['top-1'], digits['mean per-class recall']
  assert (top1.get_marker(), top1.get_color()) != (recall.get_marker(), recall.get_color())
  assert recall.get_markerfacecolor() == 'none'  # hollow over filled: both stay visible

  t2i = lines(axes['ret: text → image'])
  np.testing.assert_allclose(t2i['chance R@5'].get_ydata(), 5 / 50)
  np.testing.assert_allclose(t2i['random init R@10'].get_ydata(), init['ret/text_to_image_R@10'])


def test_log10_c_is_on_no_accuracy_axis(workdir):
  fig = report.run_figure(workdir)
  for title, ax in panels(fig).items():
    assert not any('log10' in label for label in lines(ax)), title
    if ax.get_ylabel() in ('accuracy', 'recall@k'):
      values = np.concatenate([line.get_ydata() for line in ax.get_lines()])
      assert values.min() >= 0 and values.max() <= 1, title
      assert ax.get_ylim()[0] == 0, title
  assert LOG10_C not in np.concatenate([l.get_ydata() for ax in fig.axes for l in ax.get_lines()])


def test_plot_run_saves_the_figure(workdir):
  path = report.plot_run(workdir)
  assert path == os.path.join(workdir, 'training_curves.png') and os.path.getsize(path) > 20_000
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_summary_table(workdir):
  report.plot_run(workdir)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 41, 'loss': 0.1, 'data/skipped': 0}) + '\n')
  results = {'loss': 0.1, 'data/skipped': 0, **{k: v for k, v in eval_row(40).items()
                                                 if k != 'step'}}
  text = report.summary_table(results, workdir)
  print(text)
  rows = {line.split()[0]: line.split() for line in text.splitlines()}
  assert rows['metric'] == ['metric', 'value', 'chance', 'random', 'init']
  assert rows['zeroshot_top1'] == ['zeroshot_top1', '0.5000', '0.1000', '0.1000']
  assert rows['zeroshot_top5'] == ['zeroshot_top5', '0.5200', '0.5000', '0.1200']
  assert rows['linear_probe_top1'] == ['linear_probe_top1', '0.5000', '0.1429', '0.3000']
  assert rows['text_to_image_R@10'] == ['text_to_image_R@10', '0.4700', '0.2000', '0.0700']
  # Blank chance, random init still in its column.
  header, log_c = text.splitlines()[0], next(l for l in text.splitlines() if 'log10_C' in l)
  assert log_c.split() == ['linear_probe_log10_C', '-2.2500', '-2.2500']
  assert log_c[header.index('chance'):header.index('random init')].strip() == ''
  assert 'loss' not in rows and 'data' not in rows  # training scalars are not eval metrics
  lines_ = text.splitlines()
  assert lines_.index('digits') < lines_.index('digits_probe') < lines_.index('ret')
  assert lines_[-2:] == [f'eval metrics: {os.path.join(workdir, "eval.json")}',
                         f'curves: {os.path.join(workdir, "training_curves.png")}']


def test_summary_table_without_history_or_details(tmp_path):
  text = report.summary_table({'digits/zeroshot_top1': 0.25, 'loss': 1.0}, str(tmp_path))
  assert text.splitlines()[1:] == ['digits', '  zeroshot_top1  0.2500']
  assert report.summary_table({'loss': 1.0}, str(tmp_path)) == 'no eval metrics'
