"""Small methods that exercise the method interface as the seed methods will (named in
configs as `tests.interface_methods:<Class>`): BatchNorm state, an EMA copy in aux, an
episode hook with a sharded feature pass."""
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses
from clipjax.evaluate import EvalView
from clipjax.methods import Hook
from clipjax.methods.clip import CLIP
from clipjax.models.clip import CLIPModel, l2_normalize


class HeadedCLIP(nn.Module):
  """A CLIP model with a Linear-BatchNorm-ReLU-Linear head on both towers' embeddings
  (ProtoCLIP's projection head)."""
  clip: CLIPModel

  def setup(self):
    self.fc1 = nn.Dense(32)
    self.bn = nn.BatchNorm(momentum=0.9)
    self.fc2 = nn.Dense(16)

  def head(self, x, train):
    return l2_normalize(self.fc2(nn.relu(self.bn(self.fc1(x), use_running_average=not train))))

  def __call__(self, images, ids, train: bool = True):
    out = self.clip(images, ids)
    return dict(out, image_head=self.head(out['image_emb'], train),
                text_head=self.head(out['text_emb'], train))

  def encode_image(self, images):
    return self.clip.encode_image(images)

  def encode_text(self, ids):
    return self.clip.encode_text(ids)


class BatchNormCLIP(CLIP):
  """InfoNCE on the embeddings and on the BatchNorm head's outputs."""

  def __init__(self, config, mesh=None, tokenizer=None):
    super().__init__(config, mesh, tokenizer)
    self.clip_model = self.model
    self.model = HeadedCLIP(self.clip_model)

  def scale_and_bias(self, params):
    return {'logit_scale': self.clip_model.apply({'params': params['clip']},
                                                 method=lambda m: m.logit_scale())}

  def embed(self, variables, aux, batch, rng):
    out, mutables = self.apply(variables, batch['image'], batch['text'])
    return {k: out[k] for k in ('image_emb', 'text_emb', 'image_head', 'text_head')}, mutables

  def loss_from_embeddings(self, variables, aux, emb, batch):
    loss, metrics = super().loss_from_embeddings(variables, aux, emb, batch)
    head = losses.clip_loss(emb['image_head'], emb['text_head'], 10.0, implementation='xla')
    return loss + head, dict(metrics, head_loss=head)


class OnePieceCLIP(CLIP):
  """Computes its loss in one piece (overrides `loss`): no gradient accumulation."""

  def loss(self, variables, aux, batch, rng):
    return super().loss(variables, aux, batch, rng)


class EMACLIP(CLIP):
  """CLIP whose evaluators see an exponential moving average of the params, kept in aux
  (sharded like the params) and updated inside the jitted step."""
  decay = 0.8

  def init_aux(self, variables, rng):
    return {'ema': variables['params']}  # boxed: sharded by the params' rules

  def prepare(self, state, previous=None):
    """The EMA starts from the weights the run starts from (loaded ones included)."""
    state = super().prepare(state, previous)
    ema = jax.tree_util.tree_map(jnp.copy, state.variables()['params'])  # no shared buffers
    return state.replace(aux=dict(state.aux, ema=ema))

  def after_step(self, state):
    ema = jax.tree_util.tree_map(lambda e, p: self.decay * e + (1 - self.decay) * p,
                                 state.aux['ema'], state.variables()['params'])
    return state.replace(aux=dict(state.aux, ema=ema))

  def eval_view(self, state):
    return EvalView.of(self.model, state.aux['ema'])


class EpisodeCLIP(CLIP):
  """Every `EPISODE` steps a hook samples `SAMPLES` training indices (from the seed and the
  episode), embeds their images with the current model in a sharded feature pass, and keeps
  the mean direction in aux; the loss pulls image embeddings towards it. The hook writes
  each episode's features to the workdir (process 0), and kills its own process half-way
  through the episode named by CLIPJAX_TEST_KILL_IN_EPISODE."""
  EPISODE, SAMPLES, WEIGHT = 3, 37, 0.5

  def init_aux(self, variables, rng):
    return {'prototype': jnp.zeros(self.model.embed_dim, jnp.float32)}

  def hooks(self):
    return [Hook(self.new_episode, every=self.EPISODE)]

  def episode_indices(self, episode):
    rng = np.random.default_rng([self.config.seed, episode])
    return rng.integers(0, self.config.data.train_num_samples, self.SAMPLES)

  def image_features(self, state, batch):
    emb = self.model.apply(state.variables(), batch['image'], method='encode_image')
    return {'image': l2_normalize(emb)}

  def new_episode(self, ctx, state):
    episode = int(jax.device_get(state.step)) // self.EPISODE
    out = ctx.features(state, self.image_features, self.episode_indices(episode), seed=episode)
    if jax.process_index() == 0:
      np.savez(os.path.join(ctx.workdir, f'episode_{episode}.npz'), **out)
    if os.environ.get('CLIPJAX_TEST_KILL_IN_EPISODE') == str(episode):
      os.kill(os.getpid(), signal.SIGKILL)
    prototype = l2_normalize(jnp.asarray(out['image'][out['valid']].mean(0)))
    return state.replace(aux=dict(state.aux, prototype=jax.device_put(
        prototype, state.aux['prototype'].sharding)))

  def loss_from_embeddings(self, variables, aux, emb, batch):
    loss, metrics = super().loss_from_embeddings(variables, aux, emb, batch)
    pull = jnp.mean(1.0 - emb['image_emb'] @ aux['prototype'])
    return loss + self.WEIGHT * pull, dict(metrics, prototype_loss=pull)
