"""ProtoCLIP (Chen et al., TNNLS 2023): prototype-level discrimination beside InfoNCE,
with Prototypical Back Translation (PBT) and an external teacher.

Official code: megvii-research/protoclip (`src/training/{loss,clustering,train,main}.py`).
Training runs in episodes of `episode_size` samples drawn with replacement from the data
(`EpisodeSource`). At each episode's start a hook embeds the episode's samples with the
current model (training augmentations, BatchNorm in eval mode, a sharded feature pass),
clusters the projected image and text features separately (`clipjax.kmeans`), and keeps
in aux each sample's cluster per modality (keyed by its episodic index, which the batch
carries) and the centroids. The loss over the global batch is

  L = w_clip L_clip + w_proto (L_i2t + L_t2i) / 2 + w_external (L_ie + L_te) / 2

with L_clip InfoNCE on the normalised embeddings, and the prototype losses on the
normalised projections P (Linear-BatchNorm-ReLU-Linear heads on the unnormalised
embeddings) at a second learnable scale s_p: for student modality a and teacher b,
scores s_p P^a C~^T against C~ = modality-a features averaged over modality-b clusters
(PBT; else C^b itself), target softmax(C^b[y_b] C^b^T / target_temperature) (hard y_b
when the temperature is <= 0). Centroids are not renormalised and empty clusters stay
zero, as officially. The external teacher (a sentence encoder through clipjax.convert, or
a features file) is clustered after PCA; only its hard labels enter, through PBT centroids.
The first `infonce_warmup_episodes` and the last `lit_episodes` train on L_clip alone;
in the LiT episodes the image tower's learning rate is 0 (its cosine ends there).

Config (`config.protoclip`): episode_size, k, kmeans (iterations, restarts, init),
head_hidden, head_dim, target_temperature, pbt, weights (clip, proto, external),
infonce_warmup_episodes, lit_episodes, external (model: a BERT-family folder, or
features: a .npy [dataset size, D]; pca_dim, context_length).

Differences from the official code, by choice or necessity: BatchNorm statistics span the
global batch (officially per GPU, 64 rows); the only augmentation is the random resized
crop (the official light augmentation adds flips, colour jitter, grey and blur); the
external teacher's features are computed per episode with its own pooling and PCA-reduced
per episode (officially RoBERTa-large, mean over 77 padded positions, one PCA over the
whole dataset, precomputed).
"""
import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax import convert, losses, sharding
from clipjax.kmeans import kmeans
from clipjax.methods.base import Hook
from clipjax.methods.clip import CLIP
from clipjax.methods.teacher import load_teacher, teacher_model
from clipjax.models.clip import MAX_LOGIT_SCALE, CLIPModel, l2_normalize

EXTERNAL_KEY = 'teacher_ids'


# ------------------------------------------------------------------ model

class ProjectionHead(nn.Module):
  """Linear - BatchNorm - ReLU - Linear (with biases), official `projection_n_layers=1`."""
  hidden: int
  dim: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden, name='fc1')(x)
    x = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name='bn')(x, use_running_average=not train)
    return nn.Dense(self.dim, name='fc2')(nn.relu(x))


class ProtoCLIPModel(nn.Module):
  """A CLIP model, a projection head per tower and the prototype temperature."""
  clip: CLIPModel
  head_hidden: int = 2048
  head_dim: int = 128

  def setup(self):
    self.image_head = ProjectionHead(self.head_hidden, self.head_dim)
    self.text_head = ProjectionHead(self.head_hidden, self.head_dim)
    self.log_logit_scale_proto = self.param(
        'log_logit_scale_proto', nn.initializers.constant(math.log(1 / 0.07)), ())

  def __call__(self, images, ids, train: bool = True):
    """Normalised embeddings (InfoNCE) and normalised projections (prototypes)."""
    image, text = self.clip.encode_image(images), self.clip.encode_text(ids)
    return dict(image_emb=l2_normalize(image), text_emb=l2_normalize(text),
                image_proj=l2_normalize(self.image_head(image, train)),
                text_proj=l2_normalize(self.text_head(text, train)))

  def encode_image(self, images):
    return self.clip.encode_image(images)

  def encode_text(self, ids):
    return self.clip.encode_text(ids)

  def logit_scales(self):
    return self.clip.logit_scale(), jnp.exp(jnp.minimum(self.log_logit_scale_proto,
                                                        math.log(MAX_LOGIT_SCALE)))


# ------------------------------------------------------------------ equations

def prototype_loss(student, translated, teacher_centroids, labels, scale, temperature):
  """Official `ProtoLoss`: cross-entropy of scores `scale * student @ translated^T` [B, K]
  against softmax(teacher_centroids[labels] @ teacher_centroids^T / temperature), or the
  hard `labels` when temperature <= 0. Centroids and labels carry no gradient."""
  translated, teacher_centroids = jax.lax.stop_gradient((translated, teacher_centroids))
  logp = jax.nn.log_softmax(scale * student @ translated.T, axis=-1)
  if temperature > 0:
    target = jax.nn.softmax(teacher_centroids[labels] @ teacher_centroids.T / temperature, -1)
    return -jnp.mean(jnp.sum(target * logp, axis=-1))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def back_translate(labels, features, k: int) -> np.ndarray:
  """PBT (official `Clustering.PBT`): row j is the mean of `features` over the samples
  of cluster j of `labels` (another modality's clustering); empty clusters stay zero."""
  labels, features = np.asarray(labels), np.asarray(features, np.float64)
  order = np.argsort(labels, kind='stable')
  present, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  out = np.zeros((k, features.shape[1]))
  out[present] = np.add.reduceat(features[order], starts, axis=0) / counts[:, None]
  return out.astype(np.float32)


def pca(features, dim: int) -> np.ndarray:
  """Centred features projected on their top `dim` principal directions (float64)."""
  x = np.asarray(features, np.float64)
  x = x - x.mean(axis=0)
  if x.shape[1] <= dim:
    return x.astype(np.float32)
  _, vectors = np.linalg.eigh(x.T @ x)
  return (x @ vectors[:, ::-1][:, :dim]).astype(np.float32)


# ------------------------------------------------------------------ data

@functools.lru_cache(maxsize=4)
def episode_order(seed: int, episode: int, size: int) -> np.ndarray:
  """The order in which an episode's samples are read: order[q] is the episodic index read
  q-th (its own random stream: it does not depend on the dataset)."""
  return np.random.default_rng([seed, 0x9407, episode, 1]).permutation(size)


@functools.lru_cache(maxsize=4)
def episode_mapping(seed: int, episode: int, size: int, num_samples: int) -> np.ndarray:
  """Dataset index of each episodic index: `size` draws with replacement (as the official
  `np.random.choice`)."""
  return np.random.default_rng([seed, 0x9407, episode, 0]).integers(0, num_samples, size)


def episode_positions(seed: int, episode: int, size: int) -> np.ndarray:
  """Stream positions of an episode's samples, in episodic-index order."""
  return episode * size + np.argsort(episode_order(seed, episode, size))


class EpisodeSource:
  """Episodes of a random-access source, in training order: element e * E + q is the
  sample at episodic index j = order_e[q] of episode e, i.e. source[mapping_e[j]], with
  'episode_index' j. Both are functions of (seed, e)."""
  ordered = True  # the pipeline keeps this order

  def __init__(self, source, episode_size: int, episodes: int, seed: int):
    if not hasattr(source, '__len__') or hasattr(source, 'shards'):
      raise ValueError(f'protoclip needs a random-access training source (data.format '
                       f'synthetic, csv or array_record), got {source!r}')
    self.source, self.size, self.episodes, self.seed = source, episode_size, episodes, seed

  def __len__(self):
    return self.size * self.episodes

  def mapping(self, e: int) -> np.ndarray:
    return episode_mapping(self.seed, e, self.size, len(self.source))

  def __getitem__(self, position: int) -> dict:
    e, q = divmod(int(position), self.size)
    j = int(episode_order(self.seed, e, self.size)[q])
    record = dict(self.source[int(self.mapping(e)[j])])
    record['episode_index'] = np.int32(j)
    return record

  def __repr__(self):
    return f'EpisodeSource({self.source!r}, {self.episodes} x {self.size})'


class WithEpisodeIndex:
  """A record transform plus the sample's episodic index (picklable)."""

  def __init__(self, transform):
    self.transform = transform

  def __call__(self, record, rng):
    return dict(self.transform(record, rng), episode_index=np.int32(record['episode_index']))


class WithTeacherTokens:
  """A record transform plus the caption in the external teacher's tokens (picklable)."""

  def __init__(self, transform, tokenizer, context_length: int):
    self.transform, self.tokenizer, self.context_length = transform, tokenizer, context_length

  def __call__(self, record, rng):
    return dict(self.transform(record, rng),
                **{EXTERNAL_KEY: self.tokenizer([record['caption']], self.context_length)[0]})


# ------------------------------------------------------------------ the method

class ProtoCLIP(CLIP):

  def __init__(self, config, mesh=None, tokenizer=None):
    super().__init__(config, mesh, tokenizer)
    p = self.p = config.protoclip
    self.clip_model = self.model
    self.model = ProtoCLIPModel(self.clip_model, p.head_hidden, p.head_dim)
    size, batch = p.episode_size, config.batch_size
    if size % batch:
      raise ValueError(f'protoclip.episode_size={size} is not a multiple of batch_size={batch}:'
                       ' an episode must divide into whole batches')
    if not 0 < p.k <= size:
      raise ValueError(f'protoclip.k={p.k} must be in [1, protoclip.episode_size={size}]')
    self.steps_per_episode = size // batch
    self.episodes = -(-config.total_steps // self.steps_per_episode)
    self.lit_start = self.episodes - p.get('lit_episodes', 0)
    ext = p.external
    if ext.get('model') and ext.get('features'):
      raise ValueError('protoclip.external: give model or features, not both')
    for key in ('model', 'features'):
      if ext.get(key) and not os.path.exists(ext[key]):
        raise FileNotFoundError(f'protoclip.external.{key}={ext[key]!r}: no such file or folder')
    self.teacher = teacher_model(ext.model, kind='bert') if ext.get('model') else None
    self.teacher_tokenizer = convert.load_tokenizer(ext.model) if ext.get('model') else None
    if self.teacher is not None and self.teacher_tokenizer is None:
      raise FileNotFoundError(f'protoclip.external.model={ext.model!r}: no tokenizer.json')
    self.external = bool(ext.get('model') or ext.get('features'))
    self.episode_source = None

  # ---------------------------------------------------------------- data

  def source(self, source):
    self.episode_source = EpisodeSource(source, self.p.episode_size, self.episodes + 1,
                                        self.config.seed)
    return self.episode_source

  def transform(self):
    return WithEpisodeIndex(super().transform())

  def example_batch(self, batch_size: int = 1) -> dict:
    return dict(super().example_batch(batch_size),
                episode_index=np.zeros((batch_size,), np.int32))

  # ---------------------------------------------------------------- state

  def init_aux(self, variables, rng):
    del variables, rng
    size, k, dim = self.p.episode_size, self.p.k, self.p.head_dim
    labels, centroids = jnp.zeros(size, jnp.int32), jnp.zeros((k, dim), jnp.float32)
    aux = dict(episode=jnp.zeros([], jnp.int32), img_labels=labels, text_labels=labels,
               img_centroids=centroids, text_centroids=centroids, img_from_text=centroids,
               text_from_img=centroids)
    if self.external:
      aux.update(ext_labels=labels, img_from_ext=centroids, text_from_ext=centroids)
    if self.teacher is not None:  # zeros shaped (and sharded) like it: `prepare` loads it
      ids = jnp.zeros((1, self.p.external.context_length), jnp.int32)
      shapes = jax.eval_shape(lambda: self.teacher.init(jax.random.PRNGKey(0), ids))['params']
      aux['teacher'] = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return aux

  def optim_rules(self):
    """Official groups: no weight decay on the heads; the image tower's cosine ends where
    the LiT episodes begin (its rate is 0 after), the rest runs to the end."""
    rules = [dict(match='(image|text)_head/.*', decay_mult=0.0)]
    if self.lit_start < self.episodes:
      rules.append(dict(match='clip/visual/.*',
                        decay_steps=max(self.lit_start * self.steps_per_episode, 1)))
    return rules

  def prepare(self, state, previous=None):
    """`previous`: CLIP params (an export) the run starts its towers from."""
    if previous is not None:
      state = state.with_params(dict(state.variables()['params'], clip=previous))
    if self.teacher is not None:
      teacher = sharding.place_like(load_teacher(self.p.external.model), state.aux['teacher'])
      state = state.replace(aux=dict(state.aux, teacher=teacher))
    return state

  # ---------------------------------------------------------------- the step

  def embed(self, variables, aux, batch, rng):
    del aux, rng
    return self.apply(variables, batch['image'], batch['text'])

  def loss_from_embeddings(self, variables, aux, emb, batch):
    p, w = self.p, self.p.weights
    scale, proto_scale = self.model.apply({'params': variables['params']},
                                          method=ProtoCLIPModel.logit_scales)
    clip = losses.clip_loss(emb['image_emb'], emb['text_emb'], scale, **self.loss_kwargs())
    index = batch['episode_index']
    img_target = aux['img_from_text'] if p.pbt else aux['text_centroids']
    text_target = aux['text_from_img'] if p.pbt else aux['img_centroids']
    i2t = prototype_loss(emb['image_proj'], img_target, aux['text_centroids'],
                         aux['text_labels'][index], proto_scale, p.target_temperature)
    t2i = prototype_loss(emb['text_proj'], text_target, aux['img_centroids'],
                         aux['img_labels'][index], proto_scale, p.target_temperature)
    proto = 0.5 * (i2t + t2i)
    # Official switches: InfoNCE alone in the warm-up and LiT episodes.
    on = (aux['episode'] >= p.infonce_warmup_episodes) & (aux['episode'] < self.lit_start)
    loss = jnp.where(on, w.clip, 1.0) * clip + jnp.where(on, w.proto, 0.0) * proto
    metrics = dict(clip_loss=clip, proto_loss=proto, logit_scale=scale,
                   logit_scale_proto=proto_scale, episode=aux['episode'])
    if self.external:
      labels = aux['ext_labels'][index]
      external = 0.5 * (prototype_loss(emb['image_proj'], aux['img_from_ext'], None, labels,
                                       proto_scale, -1.0) +
                        prototype_loss(emb['text_proj'], aux['text_from_ext'], None, labels,
                                       proto_scale, -1.0))
      loss = loss + jnp.where(on, w.external, 0.0) * external
      metrics['external_loss'] = external
    return loss, metrics

  def after_step(self, state):
    """Both temperatures clamped to [0, ln 100] after every step, as officially."""
    clamp = lambda x: jnp.clip(x, 0.0, math.log(MAX_LOGIT_SCALE))
    params = dict(state.params)
    if 'log_logit_scale_proto' in params:
      params['log_logit_scale_proto'] = clamp(params['log_logit_scale_proto'])
    clip = params.get('clip', {})
    if 'log_logit_scale' in clip:
      params['clip'] = dict(clip, log_logit_scale=clamp(clip['log_logit_scale']))
    return state.replace(params=params)

  # ---------------------------------------------------------------- episodes

  def hooks(self):
    return [Hook(self.new_episode, every=self.steps_per_episode)]

  def episode_features(self, state, batch):
    """Projected features (BatchNorm on running statistics) and the teacher's embedding."""
    out = self.model.apply(state.variables(), batch['image'], batch['text'], train=False)
    features = {'image': out['image_proj'], 'text': out['text_proj']}
    if EXTERNAL_KEY in batch:
      ids = batch[EXTERNAL_KEY]
      features['external'] = self.teacher.apply(
          {'params': state.aux['teacher']}, ids, ids != self.teacher_tokenizer.pad_id,
          method='encode')
    return features

  def new_episode(self, ctx, state):
    """Features of the episode's samples -> K-means per modality (and the teacher) -> PBT."""
    episode = int(jax.device_get(state.step)) // self.steps_per_episode
    transform, example = self.transform(), {k: v[0] for k, v in self.example_batch(1).items()}
    if self.teacher is not None:
      context = self.p.external.context_length
      transform = WithTeacherTokens(transform, self.teacher_tokenizer, context)
      example[EXTERNAL_KEY] = np.zeros(context, np.int32)
    positions = episode_positions(self.config.seed, episode, self.p.episode_size)
    out = ctx.features(state, self.episode_features, positions, transform=transform,
                       example=example, seed=episode)
    k, km = self.p.k, self.p.kmeans

    def cluster(features, salt):
      features = np.nan_to_num(features)  # as officially
      return kmeans(features, k, iterations=km.iterations, restarts=km.restarts, init=km.init,
                    seed=(self.config.seed * 1000 + episode) * 3 + salt, mesh=ctx.mesh)
    image, text = (np.nan_to_num(out[m]) for m in ('image', 'text'))
    img, txt = cluster(image, 0), cluster(text, 1)
    aux = dict(episode=np.int32(episode), img_labels=img.labels, text_labels=txt.labels,
               img_centroids=img.centroids, text_centroids=txt.centroids,
               img_from_text=back_translate(txt.labels, image, k),
               text_from_img=back_translate(img.labels, text, k))
    if self.external:
      features = out['external'] if self.teacher is not None else self.external_features(episode)
      ext = cluster(pca(features, self.p.external.pca_dim), 2)
      aux.update(ext_labels=ext.labels, img_from_ext=back_translate(ext.labels, image, k),
                 text_from_ext=back_translate(ext.labels, text, k))
    placed = {name: sharding.place_like(value, state.aux[name]) for name, value in aux.items()}
    return state.replace(aux=dict(state.aux, **placed))

  def external_features(self, episode: int) -> np.ndarray:
    """Rows of the external features file (one per dataset sample) of the episode."""
    features = np.load(self.p.external.features, mmap_mode='r')
    num_samples = len(self.episode_source.source)
    if len(features) != num_samples:
      raise ValueError(f'protoclip.external.features={self.p.external.features!r} has '
                       f'{len(features)} rows for {num_samples} training samples')
    return features[self.episode_source.mapping(episode)]

  # ---------------------------------------------------------------- outputs

  def export(self, state):
    """The CLIP model (the heads serve training only)."""
    return self.clip_model, sharding.fetch(state.variables()['params']['clip'])


METHOD = ProtoCLIP
