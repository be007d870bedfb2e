"""Jobs over a whole training source (counting, offline embedding) cut into parts: each
part is written whole when done, so a killed job redoes only unfinished parts, and the
job's description is kept beside them so another job's workdir is refused."""
import json
from pathlib import Path

from clipjax.evaluate import report

JOB_FILE = 'job.json'
SHARD_ID_STRIDE = 2 ** 32  # a tar sample's id: shard number * stride + position


def plan_parts(source, part_size: int, max_samples=None) -> list:
  """[(first id, index range or shard url)] covering the source in id order: index ranges
  of `part_size` for random-access sources, one part per tar shard."""
  if hasattr(source, 'shards'):
    if max_samples is not None:
      raise ValueError('max_samples needs a random-access source; tar shards are read whole')
    return [(n * SHARD_ID_STRIDE, url) for n, url in enumerate(source.shards)]
  total = len(source) if max_samples is None else min(int(max_samples), len(source))
  return [(start, range(start, min(start + part_size, total)))
          for start in range(0, total, part_size)]


def check_job(workdir, job: dict, create: bool, what: str = 'job') -> None:
  """Every process checks the workdir's job.json (and writes it when absent: the same text
  from each); a job that differs is refused, naming the keys that differ."""
  path = Path(workdir) / JOB_FILE
  job = json.loads(json.dumps(job))
  if not path.exists():
    if not create:
      raise FileNotFoundError(f'{path}: no {what} in {workdir}')
    report.atomic_write(path, json.dumps(job, indent=1))
  saved = json.loads(path.read_text())
  if saved != job:
    changed = sorted(k for k in set(saved) | set(job) if saved.get(k) != job.get(k))
    raise ValueError(f'{path}: {workdir} holds the parts of another {what} (they differ in '
                     f'{changed}); give a new --workdir')
