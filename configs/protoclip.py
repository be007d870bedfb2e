"""ProtoCLIP's CC2.5M recipe (megvii-research/protoclip README, 8 GPUs), ViT-B/32 in place
of RN50 (clipjax has no ResNet tower; the paper's results are RN50's).

  python -m clipjax.main --config configs/protoclip.py --workdir runs/protoclip \
      --config.data.train='cc2.5m/train.csv'
  python -m clipjax.main --config configs/protoclip.py:roberta --workdir runs/protoclip_ext \
      --config.protoclip.external.features=cc2.5m/roberta_large_pca64.npy

Official settings kept: 400 episodes of 200,000 samples drawn with replacement (80M
samples, batch 512, 156,250 steps), K = 20,000 per modality, 20 K-means iterations with 3
restarts, heads Linear(1024->2048)-BatchNorm-ReLU-Linear(2048->128) (here 512 wide in: the
ViT-B/32 embedding), target temperature 0.01, PBT on, weights 1/1/1, one InfoNCE-only
episode, the last two episodes LiT (image tower at rate 0, InfoNCE only), AdamW lr 5e-4,
15,625 warm-up steps, weight decay 0.5, RN50's betas (0.9, 0.999) and eps 1e-8, gradient
norm clip 10, CLIP's random resized crop at scale (0.5, 1) (the light augmentation's crop;
its flips, colour jitter, grey and blur are not implemented).
':roberta' adds the external teacher as the official code feeds it: features precomputed
per dataset sample (RoBERTa-large, PCA to 64, a .npy of shape [dataset size, 64]).
Headline (RN50, README): ImageNet linear probe 55.22 vs CLIP 49.41, zero-shot 21.47 vs 19.46.
"""
import os

from ml_collections import ConfigDict

from clipjax import config_base as common
from clipjax.config_base import load_config

STEPS_PER_EPISODE, EPISODES, BATCH = 390, 400, 512


def get_config(variant: str = '') -> ConfigDict:
  if variant not in ('', 'roberta'):
    raise ValueError(f"configs/protoclip.py: unknown variant {variant!r}; use '' or 'roberta'")
  # The quickstart's `protoclip` block holds the official defaults; the rest is replaced.
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               'protoclip_quickstart.py'))
  c.batch_size = BATCH
  c.total_steps = STEPS_PER_EPISODE * EPISODES
  c.log_every, c.eval_every, c.checkpoint_every = 100, STEPS_PER_EPISODE * 10, STEPS_PER_EPISODE
  c.model = ConfigDict(dict(name='ViT-B/32', image_size=224, context_length=77, act='quick_gelu',
                            dtype='bfloat16'))
  c.tokenizer.vocab_size = 49408
  c.data = common.synthetic_data(train_num_samples=2_500_000)
  c.data.update(dict(format='csv', train='cc2.5m/train.csv', num_workers=16,
                     read_threads=16,  # JPEG decode releases the GIL: episodes' feature passes
                     augment=dict(scale=(0.5, 1.0)), canvas_size=608))
  c.optim.update(dict(lr=5e-4, warmup_steps=15_625, weight_decay=0.5, b1=0.9, b2=0.999,
                      eps=1e-8, grad_clip=10.0))
  c.protoclip.update(dict(episode_size=STEPS_PER_EPISODE * BATCH, k=20_000, head_hidden=2048,
                          head_dim=128, lit_episodes=2))
  if variant == 'roberta':
    c.protoclip.external.features = 'cc2.5m/roberta_large_pca64.npy'
  c.evals = ConfigDict(dict(
      imagenet=dict(type='zeroshot', dataset='imagenet2012', data_dir='data/tfds',
                    split='validation', templates='imagenet1k')))
  return c
