"""The training loop: build, restore, step, run hooks, log, evaluate, checkpoint.

Method-agnostic: it reaches a method only through `clipjax.methods` (registry and
interface). The model, optimizer and compiled step are built from a config (`_build`)
once, and again at a stage boundary or when a method's hook restructures its model.
Every checkpoint carries the run's restructures (`records`), so a resume rebuilds the
model the restored state holds before reading it.
"""
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from clipjax import convert, evaluate, features, sharding
from clipjax.convert import native
from clipjax.data import pipeline
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluate import report
from clipjax.methods import Method, get_method
from clipjax.train import distributed, stages, throughput
from clipjax.train.checkpoint import Checkpointer, abstract_like
from clipjax.train.metrics import MetricWriter
from clipjax.train.optimizer import is_frozen, make_optimizer
from clipjax.train.state import TrainState, merge, split
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


def resolve_config(config, tokenizer) -> ml_collections.ConfigDict:
  """Copy of the config with the model's vocabulary taken from the tokenizer, if any.

  The embedding table is padded to a multiple of 128 rows (as Megatron and MaxText do):
  a BPE trained on few captions has an arbitrary size that the `tensor` axis may not divide.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if tokenizer is not None:
    config.model.vocab_size = -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config.model.eot_token_id = tokenizer.eot_id
  return config


def merge_config(config, updates: dict) -> ml_collections.ConfigDict:
  """Copy of `config` with nested `updates` written in (an empty dict replaces a node)."""
  config = ml_collections.ConfigDict(config.to_dict())

  def merge_into(node, tree):
    for key, value in tree.items():
      if isinstance(value, dict) and value and isinstance(node.get(key), ml_collections.ConfigDict):
        merge_into(node[key], value)
      else:
        node[key] = value
  merge_into(config, updates)
  return config


EXPORT_DIR = 'export'


class HookContext:
  """What hooks get (the interface is `clipjax.methods.HookContext`)."""

  def __init__(self, trainer: 'Trainer'):
    self._trainer = trainer

  @property
  def config(self):
    return self._trainer.config

  @property
  def mesh(self):
    return self._trainer.mesh

  @property
  def workdir(self):
    return self._trainer.workdir

  def features(self, state, fn, indices, *, transform=None, example=None, seed: int = 0):
    return self._trainer.feature_pass(state, fn, indices, transform=transform, example=example,
                                      seed=seed)

  def restructure(self, state, updates: dict, *, params, aux=None, mutables=None):
    return self._trainer.restructure(state, updates, params=params, aux=aux, mutables=mutables)


def use_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path` (MaxText's `jax_cache_dir`): a resumed,
  restarted or repeated run (a study's seeds, a notebook's ablations) loads the programs
  an earlier one compiled. A directory already given to JAX (JAX_COMPILATION_CACHE_DIR)
  is kept; an empty `path` leaves JAX as it is."""
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))


class Trainer:
  """Everything a run needs; `train()`, `evaluate_checkpoint()` and `export_checkpoint()`
  drive it."""

  def __init__(self, config, workdir, devices=None):
    use_compilation_cache(config.get('compilation_cache_dir', ''))
    self.workdir = Path(workdir).absolute()  # orbax refuses relative checkpoint paths
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.mesh = sharding.make_mesh(**config.mesh, devices=devices)
    self.stages = stages.plan(config)
    self.total_steps = self.stages[-1].end
    self.source = pipeline.make_source(config.data, image_size=config.model.image_size)
    self.tokenizer = (load_tokenizer(config, self.workdir, self.source)
                      if get_method(config.method).text_tower else None)
    self.checkpointer = Checkpointer(self.workdir / 'checkpoints', config.keep_checkpoints)
    self.run_config = resolve_config(config, self.tokenizer)
    self.hook_context = HookContext(self)
    self.config = None
    latest = self.checkpointer.latest_step()
    self._build_at(latest or 0, self.checkpointer.restore_run(latest)['records']
                   if latest is not None else [])

  # ------------------------------------------------------------------ building

  def _build_at(self, step: int, records: list) -> None:
    """Builds the model a state after `step` steps holds, given the restructures that a
    checkpoint at `step` recorded (nothing to do when that is the model at hand)."""
    records, stage = [r for r in records if r['step'] < step], stages.holding(self.stages, step)
    if self.config is not None and (stage, records) == (self.stage, self.records):
      return
    self.records = records
    self._build_for(stage, step)

  def _build_for(self, stage, step: int) -> None:
    """Builds what `stage` trains after `step` steps: its config with the restructures
    recorded before `step` merged in."""
    config, rebuilt = resolve_config(stage.config, self.tokenizer), stage.start
    for record in self.records:
      if stage.start <= record['step'] < step:
        config, rebuilt = merge_config(config, record['config']), record['step']
    self._build(config, stage, rebuilt)

  def _build(self, config, stage, rebuilt: int) -> None:
    new_evals = self.config is None or config.get('evals') != self.config.get('evals')
    self.config, self.stage = config, stage
    self.method = get_method(config.method)(config, mesh=self.mesh, tokenizer=self.tokenizer)
    if new_evals:  # built now: a mistyped evaluator stops the run at start, not mid-run
      self._evaluators = evaluate.build_evaluators(config.get('evals') or {})
    self.model = self.method.model
    accum = config.get('grad_accum_steps', 1)
    if accum > 1 and type(self.method).loss is not Method.loss:
      raise ValueError(f'config.grad_accum_steps={accum}: method {config.method!r} computes '
                       'its loss in one piece (it overrides Method.loss); use 1')
    rules, mesh = config.sharding_rules, self.mesh
    method_rules = self.method.optim_rules()
    frozen_rule = is_frozen(config.optim, method_rules)
    rng = jax.random.PRNGKey(config.seed)
    self._init_rngs = jax.random.split(rng, 3)

    def init_boxed(rng_init, rng_aux):
      variables = self.method.init(rng_init)
      return variables, self.method.init_aux(variables, rng_aux)

    boxed_vars, boxed_aux = jax.eval_shape(init_boxed, *self._init_rngs[:2])
    var_shardings = sharding.logical_to_sharding(boxed_vars, mesh, rules)
    param_sh, frozen_sh = split(var_shardings['params'], frozen_rule)
    trainable, _ = split(nn.unbox(boxed_vars)['params'], frozen_rule)
    if not trainable:
      raise ValueError(f'config.optim.rules {list(config.optim.get("rules") or [])} freeze '
                       'every parameter')
    self.tx, schedule = make_optimizer(config.optim, trainable, stage.end - stage.start,
                                       method_rules=method_rules, offset=rebuilt - stage.start)

    def init_state(rng_init, rng_aux, rng_state, step):
      variables, aux = nn.unbox(init_boxed(rng_init, rng_aux))
      params, frozen = split(variables.pop('params'), frozen_rule)
      return TrainState(step=step, params=params, frozen=frozen, mutables=variables, aux=aux,
                        opt_state=self.tx.init(params), rng=rng_state)

    abstract = jax.eval_shape(init_state, *self._init_rngs, jnp.int32(0))
    repl = sharding.replicated(mesh)
    self.state_sharding = TrainState(
        step=repl, params=param_sh, frozen=frozen_sh,
        mutables={k: v for k, v in var_shardings.items() if k != 'params'},
        aux=sharding.logical_to_sharding(boxed_aux, mesh, rules),
        opt_state=sharding.like_params(abstract.opt_state, abstract.params, param_sh, repl),
        rng=repl)
    self.abstract_state = abstract_like(abstract, self.state_sharding)
    self._init_state = jax.jit(init_state, out_shardings=self.state_sharding)
    self.learning_rate = lambda step: schedule(step - stage.start)
    self.train_step = jax.jit(
        sharding.with_rules(make_train_step(self.method, self.tx, self.learning_rate, accum),
                            mesh, rules),
        in_shardings=(self.state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(self.state_sharding, repl), donate_argnums=0)
    self._encoder = None
    self._step_flops = None
    self._feature_fns = {}
    self._expected_batch = {k: (v.shape[1:], v.dtype)
                            for k, v in self.method.example_batch(1).items()}

  def initial_state(self, step: int = 0, previous=None):
    """A fresh state at `step`; `config.init_from` entries then overwrite parts of the model
    from checkpoints, and the method prepares it (from `previous` params, or the native
    folder `config.previous_stage`)."""
    state = self._init_state(*self._init_rngs, jnp.int32(step))
    if previous is None and self.config.get('init_from'):
      merged_sharding = merge(self.state_sharding.params, self.state_sharding.frozen)
      state = state.with_params(convert.init_params(
          state.variables()['params'], self.config.init_from, merged_sharding))
    if previous is None and self.config.get('previous_stage'):
      previous = native.load_native(self.config.previous_stage)[1]
    return self.method.prepare(state, previous)

  def restructure(self, state, updates: dict, *, params, aux=None, mutables=None):
    """A method's change of model (TinyCLIP's prune): a rebuilt model, optimizer and step
    from the config with `updates`, holding `params` and `aux`/`mutables` (None: the new
    model's initial values, unprepared), with a fresh optimizer state; recorded in the
    next checkpoints, so a resume past it rebuilds the same model."""
    step = int(jax.device_get(state.step))
    self.records = self.records + [dict(step=step, config=updates)]
    self._build_for(self.stage, step + 1)
    fresh = self._init_state(*self._init_rngs, jnp.int32(step))
    try:
      new = fresh.with_params(params).replace(rng=state.rng)
      for name, value in (('aux', aux), ('mutables', mutables)):
        if value is not None:
          new = new.replace(**{name: sharding.place_like(value, getattr(fresh, name))})
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f'{type(self.method).__name__} restructured at step {step} into '
                       f'something that does not fit the model {updates}: {e}') from e
    log.info('Restructured at step %d: %s', step, updates)
    return new

  def next_stage(self, state):
    """At the end of a stage: export its model, then build the next stage from it."""
    step = int(jax.device_get(state.step))
    done = self.stage
    model, params = self.method.export(state)
    folder = self.write_export(model, params, self.workdir / f'stage_{done.index}')
    self._build_for(stages.training(self.stages, step), step)
    log.info('Stage %d finished at step %d (exported to %s); stage %d begins', done.index,
             step, folder, self.stage.index)
    return self.initial_state(step, previous=params)

  def run_hooks(self, state):
    """Stage boundary and the method's hooks due at `state.step` -> (state, whether any ran)."""
    step = int(jax.device_get(state.step))
    ran = False
    if step == self.stage.end < self.total_steps:
      state, ran = self.next_stage(state), True
    method = self.method
    for hook in method.hooks():
      if hook.due(step - self.stage.start):
        state, ran = hook.fn(self.hook_context, state), True
        if self.method is not method:  # it restructured: the old method's hooks are done
          break
    return state, ran

  def feature_pass(self, state, fn, indices, *, transform=None, example=None, seed: int = 0):
    """`HookContext.features`: fn jitted once per build, under the activation rules, reading
    with the training loader's `data.read_threads`."""
    if fn not in self._feature_fns:
      self._feature_fns[fn] = sharding.with_rules(fn, self.mesh, self.config.sharding_rules)
    if example is None:
      example = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self._expected_batch.items()}
    return features.feature_pass(
        self._feature_fns[fn], (state,), self.method.source(self.source),
        transform or self.method.transform(), indices, mesh=self.mesh,
        batch_size=self.config.get('eval_batch_size', 256), example=example, seed=seed,
        read_threads=self.config.data.get('read_threads') or 0)

  # ------------------------------------------------------------------ outputs

  def write_export(self, model, params, folder) -> Path:
    """A model, its spec and the tokenizer as a native folder (what `clipjax.convert` and
    teachers read), written beside `folder` and renamed into place. Every process calls it."""
    folder = Path(folder).absolute()
    if jax.process_index() == 0:
      tmp = folder.with_name(folder.name + '.tmp')
      shutil.rmtree(tmp, ignore_errors=True)
      native.save(model, params, str(tmp), self.tokenizer)
      shutil.rmtree(folder, ignore_errors=True)
      tmp.rename(folder)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'export {folder}')
    return folder

  def restore(self, step=None):
    """(state, data position) of the checkpoint at `step` (default latest), on the model
    it holds."""
    step = self.checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.workdir / "checkpoints"}')
    self._build_at(step, self.checkpointer.restore_run(step)['records'])
    return self.checkpointer.restore(self.abstract_state, step)

  def export_checkpoint(self, folder=None, step=None) -> Path:
    """`--config.mode=export`: the latest (or given) checkpoint's model to `folder`
    (default `workdir/export`)."""
    state, _ = self.restore(step)
    return self.write_export(*self.method.export(state), folder or self.workdir / EXPORT_DIR)

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
    self.checkpointer.save(step, state, loader.get_state(), {'records': self.records})

  def evaluate(self, state) -> tuple:
    """Runs the configured evaluators on the method's view -> (flat `name/metric`, arrays)."""
    if not self._evaluators:
      return {}, {}
    t0 = time.perf_counter()
    log.info('Evaluating step %d: %s ...', int(jax.device_get(state.step)),
             ', '.join(self.config.evals))
    view = self.method.eval_view(state)
    if self._encoder is None:
      batch_size = self.config.get('eval_batch_size', 256)
      sharded = batch_size % self.mesh.size == 0
      if sharded:  # the towers' activation constraints apply to whole batches only
        wrap = lambda fn: sharding.with_rules(fn, self.mesh, self.config.sharding_rules)
        view = dataclasses.replace(
            view, encode_image=wrap(view.encode_image), encode_text=wrap(view.encode_text),
            encode_patches=view.encode_patches and wrap(view.encode_patches))
      # Evaluation normalises images as training does (data.mean / data.std, e.g. ImageNet's).
      norm = {k: tuple(self.config.data[k]) for k in ('mean', 'std')
              if self.config.data.get(k) is not None}
      self._encoder = evaluate.Encoder(
          view, self.tokenizer, context_length=self.config.model.get('context_length', 0),
          image_size=self.config.model.image_size, batch_size=batch_size, **norm,
          batch_sharding=sharding.batch_sharding(self.mesh) if sharded else None)
    self._encoder.variables = view.variables
    details = {}
    results = evaluate.run_evaluators(self._evaluators, self._encoder, details)
    log.info('Evaluated in %.1f s', time.perf_counter() - t0)
    return results, details

  def evaluate_checkpoint(self, step=None) -> dict:
    """`--config.mode=eval`: the latest (or given) checkpoint's evals, written to eval.json."""
    state, _ = self.restore(step)
    step = int(jax.device_get(state.step))
    results, details = self.evaluate(state)
    MetricWriter(self.workdir, enabled=jax.process_index() == 0).write_eval(
        step, results, details, history=False)
    return dict(results, step=step)

  # ------------------------------------------------------------------ the loop

  def make_loader(self):
    c = self.config
    return pipeline.make_train_loader(
        self.method.source(self.source), self.method.transform(), global_batch_size=c.batch_size,
        seed=c.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        **pipeline.loader_kwargs(c.data))

  def global_batch(self, local: dict) -> dict:
    """The process's rows as one global array per key, checked against the keys, shapes
    and dtypes the method declares (`Method.example_batch`)."""
    got = {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in local.items()}
    if got != self._expected_batch:
      raise ValueError(f'{type(self.method).__name__}.transform made batches {got}, but the '
                       f'method declares {self._expected_batch} (example_batch)')
    return sharding.global_batch(local, self.mesh)

  def step_flops(self, state, batch) -> float:
    """Model FLOPs of one step on the global batch (`clipjax.train.throughput`): the
    step lowered without accumulation or remat, once per build."""
    if self._step_flops is None:
      config, step = self.config, self.train_step  # its lowering is cached for the call
      if config.get('grad_accum_steps', 1) > 1 or config.model.get('remat'):
        plain = merge_config(config, {'grad_accum_steps': 1, 'model': {'remat': False}})
        method = get_method(config.method)(plain, mesh=self.mesh, tokenizer=self.tokenizer)
        step = jax.jit(sharding.with_rules(make_train_step(method, self.tx, self.learning_rate),
                                           self.mesh, config.sharding_rules))
      self._step_flops = throughput.lowered_flops(step, state, batch)
    return self._step_flops

  def restore_or_init(self, loader):
    step = self.checkpointer.latest_step()
    if step is None:
      return self.initial_state()
    state, data_state = self.restore(step)
    loader.set_state(data_state)
    return state

  def banner(self, start: int) -> None:
    """What the run is and where its outputs go, before the first (slow, compiling) step."""
    c, state = self.config, self.abstract_state
    params = sum(x.size for x in jax.tree_util.tree_leaves((state.params, state.frozen)))
    devices = jax.devices()
    log.info('%s %s: %s, %.3gM parameters, %d steps of %d examples on %d %s device(s) '
             '(mesh %s)', f'Resuming at step {start}' if start else 'Training', c.method,
             c.model.get('name', ''), params / 1e6, self.total_steps, c.batch_size,
             len(devices), devices[0].platform, dict(self.mesh.shape))
    evals = f'eval.json every {c.eval_every} steps, ' if c.eval_every and c.get('evals') else ''
    log.info('Writing to %s: metrics.jsonl, %scheckpoints/ every %d steps, %s and tensorboard/'
             ' (Ctrl-C saves and stops; the same command resumes)', self.workdir, evals,
             c.checkpoint_every, report.CURVES_PNG)

  def train(self) -> dict:
    """Trains to `total_steps` from the latest checkpoint -> the last metrics and evals."""
    writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0)
    if jax.process_index() == 0:
      (self.workdir / 'config.json').write_text(self.run_config.to_json_best_effort(indent=2))
    loader = self.make_loader()
    state = self.restore_or_init(loader)
    start = int(jax.device_get(state.step))
    end = min(self.run_config.get('stop_at_step') or self.total_steps, self.total_steps)
    if start >= end:
      log.info('Already complete (%d/%d steps) in %s; --config.%s=N trains on', start, end,
               self.workdir, 'stop_at_step' if end < self.total_steps else 'total_steps')
      self.state = state
      saved = self.workdir / report.EVAL_JSON
      return json.loads(saved.read_text()) if saved.exists() else {}
    writer.truncate_after(start)
    self.banner(start)
    evals = {}
    if start == 0 and self.config.eval_every and self.config.get('eval_at_start'):  # random init
      evals, details = self.evaluate(state)
      writer.write_eval(0, evals, details)
    preemption = distributed.PreemptionWatch()
    peak, peak_source = throughput.peak_flops(jax.devices()[0],
                                              self.config.get('peak_flops_per_device', 0.0))
    log.info('MFU against %.3g TFLOP/s per device (%s)', peak / 1e12, peak_source)
    it = iter(loader)
    last = {}
    progress = writer.progress(start, end)
    t0, n0, waited = time.perf_counter(), start, 0.0
    first_step = start + 1  # throughput excludes compilation, also after a rebuild
    try:
      for step in range(start + 1, end + 1):
        state, ran = self.run_hooks(state)
        if ran:
          first_step = step
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          fetch = time.perf_counter()
          host_batch = next(it)
          waited += time.perf_counter() - fetch
          batch = self.global_batch(host_batch)
          flops = self.step_flops(state, batch)  # before the step donates the state
          state, metrics = self.train_step(state, batch)
        c, stage_end = self.config, step == self.stage.end  # the stage's settings
        preempted = preemption.reached(step)
        stopping = preempted or step == end < self.total_steps
        if step % c.log_every == 0 or stage_end or stopping:
          last = {k: float(v) for k, v in jax.device_get(metrics).items()}
          dt = time.perf_counter() - t0
          last['examples_per_sec'] = (step - n0) * c.batch_size / dt
          per_device = flops * (step - n0) / dt / jax.device_count()
          last['tflops_per_device'] = per_device / 1e12
          if peak:
            last['mfu'] = per_device / peak
          # Share of the interval process 0 spent getting batches (open_clip logs this
          # data time per batch). Steps are dispatched asynchronously, so a loader that
          # keeps up leaves it near 0; without workers the loader also takes the cores
          # the step would use, so a run can be input-bound well below 1.
          last['input_wait'] = waited / dt
          last.update(loader.metrics(reduce=distributed.sum_counts))  # all processes
          t0, n0, waited = time.perf_counter(), step, 0.0
          writer.write(step, last)
          progress.update(step, last, last['examples_per_sec'] / c.batch_size)
          self.check_finite(step, last)
        if c.eval_every and (step % c.eval_every == 0 or stage_end):
          jax.block_until_ready(state)  # steps still running are training time
          paused = time.perf_counter()
          evals, details = self.evaluate(state)
          writer.write_eval(step, evals, details)
          t0 += time.perf_counter() - paused  # rates are of training, not evaluation
        if step % c.checkpoint_every == 0 or stage_end or stopping:
          self.save(state, loader, metrics)
        if preempted:
          log.warning('Stopped at step %d with a checkpoint; the same command resumes.', step)
          break
        if stopping:
          log.info('Stopped at step %d of %d (stop_at_step) with a checkpoint; a larger '
                   '--config.stop_at_step resumes.', step, self.total_steps)
        if step == first_step:
          jax.block_until_ready(metrics)
          t0, n0, waited = time.perf_counter(), step, 0.0
    finally:
      loader.close()  # stops grain's workers and unlinks the shared memory of queued batches
      self.checkpointer.wait()
      preemption.close()
      progress.close()
      writer.close()
    if len(self.stages) > 1 and int(jax.device_get(state.step)) == self.total_steps:
      self.write_export(*self.method.export(state), self.workdir / f'stage_{self.stage.index}')
    if jax.process_index() == 0 and (self.workdir / 'metrics.jsonl').exists():
      report.plot_run(str(self.workdir))
    self.state = state
    return {**last, **evals}


def train(config, workdir) -> dict:
  """Python API for notebooks: trains (or resumes) and returns the last metrics and evals."""
  return Trainer(config, workdir).train()


def train_and_export(config, workdir) -> Path:
  """Python API for studies: trains (or finishes) a run and exports its model -> the
  export folder. A run already exported is read back, not repeated."""
  export = Path(workdir) / EXPORT_DIR
  if not (export / native.SPEC_FILE).exists():
    trainer = Trainer(config, workdir)
    trainer.train()
    trainer.export_checkpoint()
  return export
