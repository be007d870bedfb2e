"""The training loop: build, restore, step, log, evaluate, checkpoint. Method-agnostic."""
import json
import logging
import math
import shutil
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from clipjax import convert, evaluate, sharding
from clipjax.convert import native
from clipjax.evaluate import report
from clipjax.data import pipeline
from clipjax.data.tokenizer import Tokenizer
from clipjax.methods import get_method
from clipjax.train import distributed
from clipjax.train.checkpoint import Checkpointer, abstract_like
from clipjax.train.metrics import MetricWriter
from clipjax.train.optimizer import make_optimizer
from clipjax.train.state import TrainState
from clipjax.train.step import make_train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  pass


def load_tokenizer(config, workdir: Path, source) -> Tokenizer:
  """A configured tokenizer.json, else a BPE trained on training captions, kept in the workdir."""
  saved = workdir / 'tokenizer.json'
  if config.tokenizer.get('path'):
    return Tokenizer.load(config.tokenizer.path)
  if saved.exists():
    return Tokenizer.load(saved)
  captions = pipeline.sample_captions(source, config.tokenizer.get('train_captions', 5000))
  tok = Tokenizer.train(captions, config.tokenizer.vocab_size)
  if jax.process_index() == 0:
    tok.save(saved)
  return tok


VOCAB_MULTIPLE = 128


def resolve_config(config, tokenizer: Tokenizer) -> ml_collections.ConfigDict:
  """Copy of the config with the model's vocabulary taken from the tokenizer.

  The embedding table is padded to a multiple of 128 rows (as Megatron and MaxText do):
  a BPE trained on few captions has an arbitrary size that the `tensor` axis may not divide.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.vocab_size = -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  config.model.eot_token_id = tokenizer.eot_id
  return config


def merge_config(config, updates: dict) -> ml_collections.ConfigDict:
  """Copy of `config` with nested `updates` written in (an empty dict replaces a node)."""
  config = ml_collections.ConfigDict(config.to_dict())

  def merge(node, tree):
    for key, value in tree.items():
      if isinstance(value, dict) and value and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        node[key] = value
  merge(config, updates)
  return config


RESTRUCTURE_FILE = 'restructure.json'


class Trainer:
  """Everything a run needs; `train()` and `evaluate()` drive it.

  The model, optimizer and compiled step are built from the config (`_build`) once, and
  again if the method restructures its model mid-run (`restructure`); the workdir's
  `restructure.json` records the change so a resume past it rebuilds the same model.
  """

  def __init__(self, config, workdir, devices=None):
    self.workdir = Path(workdir).absolute()  # orbax refuses relative checkpoint paths
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.mesh = sharding.make_mesh(**config.mesh, devices=devices)
    self.source = pipeline.make_source(config.data, image_size=config.model.image_size)
    self.tokenizer = load_tokenizer(config, self.workdir, self.source)
    self.checkpointer = Checkpointer(self.workdir / 'checkpoints', config.keep_checkpoints)
    config = resolve_config(config, self.tokenizer)
    self.restructured_at = None
    record_path = self.workdir / RESTRUCTURE_FILE
    latest = self.checkpointer.latest_step()
    if record_path.exists() and latest is not None:
      record = json.loads(record_path.read_text())
      if latest > record['step']:
        config = merge_config(config, record['config'])
        self.restructured_at = record['step']
    self._evaluators = None
    self._build(config)

  def _build(self, config) -> None:
    self.config = config
    self.method = get_method(config.method)(config, mesh=self.mesh)
    self.model = self.method.model

    rng = jax.random.PRNGKey(config.seed)
    init_rng, aux_rng, state_rng = jax.random.split(rng, 3)
    boxed = jax.eval_shape(self.method.init_variables, init_rng)['params']
    param_sharding = sharding.logical_to_sharding(boxed, self.mesh, config.sharding_rules)
    abstract_params = nn.unbox(boxed)
    self.tx, self.lr_schedule = make_optimizer(config.optim, abstract_params, config.total_steps,
                                               start_step=self.restructured_at or 0)

    def init_state(rng_init, rng_aux, rng_state):
      params = nn.unbox(self.method.init_variables(rng_init)['params'])
      return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                        opt_state=self.tx.init(params),
                        aux=self.method.init_aux(params, rng_aux), rng=rng_state)

    abstract = jax.eval_shape(init_state, init_rng, aux_rng, state_rng)
    repl = sharding.replicated(self.mesh)
    opt_sharding = sharding.like_params(abstract.opt_state, abstract.params, param_sharding, repl)
    self.state_sharding = TrainState(
        step=repl, params=param_sharding, opt_state=opt_sharding,
        aux=jax.tree_util.tree_map(lambda _: repl, abstract.aux), rng=repl)
    self.abstract_state = abstract_like(abstract, self.state_sharding)
    self._init_state = jax.jit(init_state, out_shardings=self.state_sharding)
    self._init_rngs = (init_rng, aux_rng, state_rng)
    self.train_step = jax.jit(
        make_train_step(self.method, self.tx, self.lr_schedule, config.get('grad_accum_steps', 1)),
        in_shardings=(self.state_sharding, sharding.batch_sharding(self.mesh)),
        out_shardings=(self.state_sharding, repl), donate_argnums=0)
    self._encoder = None

  def restructure(self, state):
    """The method's change of model at `method.restructure_step` (TinyCLIP's prune): its
    new params and aux, a rebuilt model and step, and a fresh optimizer state."""
    step = int(jax.device_get(state.step))
    params, aux, updates = self.method.restructure(distributed.fetch(state.params), state.aux)
    if jax.process_index() == 0:
      report.atomic_write(self.workdir / RESTRUCTURE_FILE,
                          json.dumps(dict(step=step, config=updates), indent=2))
    self.restructured_at = step
    self._build(merge_config(self.config, updates))
    abstract = self.abstract_state
    for name, tree, like in (('params', params, abstract.params), ('aux', aux, abstract.aux)):
      got = jax.tree_util.tree_map(np.shape, tree)
      want = jax.tree_util.tree_map(lambda a: a.shape, like)
      if got != want:
        raise ValueError(f'{type(self.method).__name__}.restructure returned {name} that do not '
                         f'fit the restructured model {updates}: {got} vs {want}')
    params = sharding.place_like(params, abstract.params)
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
    log.info('Restructured at step %d: %s', step, updates)
    return TrainState(step=state.step, params=params, opt_state=opt_state,
                      aux=sharding.place_like(aux, abstract.aux), rng=state.rng)

  def export(self, params, folder) -> Path:
    """The model, its spec and tokenizer as a native folder (what `clipjax.convert` and
    teachers read), written beside `folder` and renamed into place. Every process calls it."""
    folder = Path(folder).absolute()
    params = distributed.fetch(params)
    if jax.process_index() == 0:
      tmp = folder.with_name(folder.name + '.tmp')
      shutil.rmtree(tmp, ignore_errors=True)
      native.save(self.model, params, str(tmp), self.tokenizer)
      shutil.rmtree(folder, ignore_errors=True)
      tmp.rename(folder)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'export {folder}')
    return folder

  def initial_state(self):
    """Fresh state; `config.init_from` entries then overwrite towers from checkpoints."""
    state = self._init_state(*self._init_rngs)
    if self.config.get('init_from'):
      state = state.replace(params=convert.init_params(
          state.params, self.config.init_from, self.state_sharding.params))
    return self.method.prepare(state)

  def make_loader(self):
    c = self.config
    return pipeline.make_train_loader(
        self.source, tokenizer=self.tokenizer, context_length=c.model.context_length,
        image_size=c.model.image_size, global_batch_size=c.batch_size, seed=c.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        **pipeline.loader_kwargs(c.data))

  def restore_or_init(self, loader):
    step = self.checkpointer.latest_step()
    if step is None:
      return self.initial_state()
    log.info('Resuming from %s step %d', self.checkpointer.manager.directory, step)
    state, data_state = self.checkpointer.restore(self.abstract_state, step)
    loader.set_state(data_state)
    return state

  def check_finite(self, step: int, metrics: dict) -> None:
    """Stops the run, naming the step, when the loss or the parameters went non-finite."""
    bad = {k: float(v) for k, v in metrics.items()
           if k in ('loss', 'param_norm') and not math.isfinite(float(v))}
    if bad:
      raise NonFiniteLossError(
          f'Non-finite {bad} at step {step} (config.optim.lr={self.config.optim.lr}); not '
          f'checkpointing. Last good checkpoint: step {self.checkpointer.latest_step()} in '
          f'{self.workdir / "checkpoints"}')

  def save(self, state, loader, metrics) -> None:
    """Checkpoints unless the newest loss or parameters are non-finite (keeping the last good one)."""
    step = int(jax.device_get(state.step))
    self.check_finite(step, jax.device_get(metrics))
    self.checkpointer.save(step, state, loader.get_state())

  def evaluate(self, state) -> tuple:
    """Runs the configured evaluators on `state.params` -> (flat `name/metric` values, arrays)."""
    if not self.config.get('evals'):
      return {}, {}
    if self._evaluators is None:
      self._evaluators = evaluate.build_evaluators(self.config.evals)
    model, params = self.method.eval_view(state.params)
    if self._encoder is None:
      self._encoder = evaluate.Encoder(
          model, params, self.tokenizer, context_length=self.config.model.context_length,
          image_size=self.config.model.image_size, batch_sharding=sharding.batch_sharding(self.mesh)
          if self.config.get('eval_batch_size', 256) % self.mesh.size == 0 else None,
          batch_size=self.config.get('eval_batch_size', 256))
    self._encoder.params = params
    details = {}
    return evaluate.run_evaluators(self._evaluators, self._encoder, details), details

  def evaluate_checkpoint(self, step=None) -> dict:
    """`--config.mode=eval`: the latest (or given) checkpoint's evals, written to eval.json."""
    step = self.checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint to evaluate in {self.workdir / "checkpoints"}')
    if self.restructured_at is not None and step <= self.restructured_at:
      raise ValueError(f'Checkpoint {step} precedes the restructure at step '
                       f'{self.restructured_at} ({self.workdir / RESTRUCTURE_FILE}): it holds '
                       'the model before it; evaluate a later step')
    state, _ = self.checkpointer.restore(self.abstract_state, step)
    results, details = self.evaluate(state)
    MetricWriter(self.workdir, enabled=jax.process_index() == 0).write_eval(
        step, results, details, history=False)
    return results

  def train(self) -> dict:
    c = self.config
    writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0)
    if jax.process_index() == 0:
      (self.workdir / 'config.json').write_text(c.to_json_best_effort(indent=2))
    loader = self.make_loader()
    state = self.restore_or_init(loader)
    start = int(jax.device_get(state.step))
    writer.truncate_after(start)
    preemption = distributed.PreemptionWatch()
    it = iter(loader)
    last, evals = {}, {}
    progress = writer.progress(start, c.total_steps)
    t0, n0 = time.perf_counter(), start
    first_step = start + 1  # throughput excludes compilation, also after a restructure
    try:
      for step in range(start + 1, c.total_steps + 1):
        if self.method.restructure_step == step - 1:
          state, first_step = self.restructure(state), step
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = sharding.global_batch(next(it), self.mesh)
          state, metrics = self.train_step(state, batch)
        final = step == c.total_steps
        preempted = preemption.reached(step)
        if step % c.log_every == 0 or final or preempted:
          last = {k: float(v) for k, v in jax.device_get(metrics).items()}
          dt = time.perf_counter() - t0
          last['examples_per_sec'] = (step - n0) * c.batch_size / dt
          last.update(loader.metrics(reduce=distributed.sum_counts))  # all processes
          t0, n0 = time.perf_counter(), step
          writer.write(step, last)
          progress.update(step, last)
          self.check_finite(step, last)
        if c.eval_every and (step % c.eval_every == 0 or final):
          evals, details = self.evaluate(state)
          writer.write_eval(step, evals, details)
          t0 = time.perf_counter()
        if step % c.checkpoint_every == 0 or final or preempted:
          self.save(state, loader, metrics)
        if preempted:
          log.warning('SIGTERM: checkpoint saved at step %d, exiting.', step)
          break
        if step == first_step:
          jax.block_until_ready(metrics)
          t0, n0 = time.perf_counter(), step
    finally:
      self.checkpointer.wait()
      preemption.close()
      progress.close()
      writer.close()
    if jax.process_index() == 0 and (self.workdir / 'metrics.jsonl').exists():
      report.plot_run(str(self.workdir))
    self.state = state
    return {**last, **evals}


def train(config, workdir) -> dict:
  """Python API for notebooks: trains (or resumes) and returns the last metrics and evals."""
  return Trainer(config, workdir).train()
