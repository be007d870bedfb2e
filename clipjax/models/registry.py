"""Named model sizes: one table from a CPU-sized toy to ViT-L/14 (CLIP paper, Table 20)."""
import copy

VISION = {
    # name: width, layers, heads, patch_size
    'Ti/16': dict(width=192, layers=12, heads=3, patch_size=16),
    'S/16': dict(width=384, layers=12, heads=6, patch_size=16),
    'B/32': dict(width=768, layers=12, heads=12, patch_size=32),
    'B/16': dict(width=768, layers=12, heads=12, patch_size=16),
    'L/14': dict(width=1024, layers=24, heads=16, patch_size=14),
    'tiny/8': dict(width=64, layers=2, heads=4, patch_size=8),
}

TEXT = {
    # name: width, layers, heads
    'Ti': dict(width=192, layers=12, heads=3),
    'S': dict(width=384, layers=12, heads=6),
    'B': dict(width=512, layers=12, heads=8),
    'L': dict(width=768, layers=12, heads=12),
    'tiny': dict(width=64, layers=2, heads=4),
}

# Two-tower models: vision size, text size, shared embedding dimension.
MODELS = {
    'tiny': dict(vision='tiny/8', text='tiny', embed_dim=64, image_size=32),
    'ViT-Ti/16': dict(vision='Ti/16', text='Ti', embed_dim=192, image_size=224),
    'ViT-S/16': dict(vision='S/16', text='S', embed_dim=384, image_size=224),
    'ViT-B/32': dict(vision='B/32', text='B', embed_dim=512, image_size=224),
    'ViT-B/16': dict(vision='B/16', text='B', embed_dim=512, image_size=224),
    'ViT-L/14': dict(vision='L/14', text='L', embed_dim=768, image_size=224),
}


def model_spec(name: str, **overrides) -> dict:
  """Full keyword spec for `CLIPModel` from a registered name plus overrides.

  Overrides are flat (`image_size`, `vocab_size`...) or nested under `vision` / `text`.
  """
  if name not in MODELS:
    raise KeyError(f'Unknown model {name!r}; registered: {sorted(MODELS)}')
  base = MODELS[name]
  spec = dict(embed_dim=base['embed_dim'],
              vision=dict(VISION[base['vision']], image_size=base['image_size']),
              text=dict(TEXT[base['text']], vocab_size=49408, context_length=77))
  overrides = copy.deepcopy(overrides)
  for tower in ('vision', 'text'):
    spec[tower].update(overrides.pop(tower, {}) or {})
  for key, value in overrides.items():
    if key in ('image_size', 'patch_size', 'pool'):
      spec['vision'][key] = value
    elif key in ('vocab_size', 'context_length', 'eot_token_id'):
      spec['text'][key] = value
    elif key in ('act', 'mlp_ratio', 'remat', 'attention_impl'):
      spec['vision'][key] = spec['text'][key] = value
    else:
      spec[key] = value
  return spec
