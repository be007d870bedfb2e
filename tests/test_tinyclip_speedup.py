"""TinyCLIP's claim on the synthetic shapes: manual weight inheritance + affinity mimicking
gets within 5 points of the teacher's zero-shot accuracy (shape and colour) in fewer steps
than a student of the same size trained from scratch with affinity mimicking.

`benchmarks/tinyclip_speedup.py` at seed 0, each student on the benchmark's 1500-step
schedule but stopped once past the steps the three seeds measured (`stop_at_step`), so the
scratch student's steps are reached, not censored by the budget.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('tinyclip_speedup', ROOT / 'benchmarks/tinyclip_speedup.py')
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

STEPS, EVAL_EVERY = 1500, 50
# Measured (python benchmarks/tinyclip_speedup.py --seeds 0 1 2, a 2-core AMD EPYC VM;
# teacher shape 0.706, colour 0.998): steps to within 5 points on both tasks, inherited
# 200 / 250 / 100, affinity from scratch 550 / 750 / 650 (speed-up 2.8x-6.5x), InfoNCE
# from scratch 1000 / 1250 / 800. Seed 0 on a 2-core Intel Xeon VM (2026-12-01; XLA
# compiles for the host's CPU): teacher shape 0.705, inherited 300, affinity from scratch
# 550 (1.8x). Stopped past the runs' most; the speed-up asserted at the runs' least (1.83)
# less one evaluation of the inherited student (550 / 350 = 1.57).
# Each student runs to the first stop and, only if it has not reached the teacher by then,
# resumes (bit for bit) to the next: seed 0 needs the second on the Intel VM.
STOPS = {'affinity_inherited': (250, 300), 'affinity_scratch': (600, 800)}
MIN_SPEEDUP = 1.55


def _steps_to_teacher(name, folder, teacher, workdir):
  for stop in STOPS[name]:
    steps = bench.train_student(name, folder, teacher, 0, STEPS, EVAL_EVERY, workdir,
                                stop_at=stop)
    if steps <= stop:
      break
  return steps


@pytest.mark.slow(minutes=3)
def test_inherited_student_reaches_teacher_sooner(tmp_path):
  folder, teacher = bench.train_teacher(str(tmp_path / 'teacher'))
  steps = {name: _steps_to_teacher(name, folder, teacher, str(tmp_path / name))
           for name in STOPS}
  print(f'teacher {teacher}; steps to teacher-5 points on both tasks: {steps}')
  assert steps['affinity_scratch'] <= STOPS['affinity_scratch'][-1], (teacher, steps)  # finishes
  assert steps['affinity_scratch'] >= MIN_SPEEDUP * steps['affinity_inherited'], (teacher, steps)
