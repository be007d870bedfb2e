"""FLAME's CC3M recipe (MIV-XJTU/FLAME Training.md, params.py, main.py;
FLAME-Mistral-Nemo-ViT-B-16.json).

  python -m clipjax.embed --config configs/flame.py:embed --workdir runs/flame_text \
      --config.llm.path=ckpts/Mistral-Nemo-Instruct-2407
  python -m clipjax.main --config configs/flame.py --workdir runs/flame \
      --config.llm.path=ckpts/Mistral-Nemo-Instruct-2407 --config.data.text_features=runs/flame_text

Kept: Mistral-Nemo-Instruct-2407 (12B, width 5120, 40 layers) frozen, the output of its
layer 39 (penultimate, before the final norm) at each prompt's closing token; per CC3M
sample the alt-text with the single prompt, the MiniCPM-Llama3-V-2.5 short recaption
with the 3-facet prompt and the long one with the 7-facet prompt (11 vectors), 6 drawn
per read; ViT-B/16 at 224 from scratch, projector 768-5120-5120 with LayerNorm, mean over
patch tokens; multi-positive sigmoid loss, scale ln 10 clamped to [0, ln 100], bias -10;
32 epochs of 2,905,954 pairs at batch 3072 (946 steps per epoch); AdamW lr 5e-4, betas
(0.9, 0.95), eps 1e-8, weight decay 0.5 (none on vectors), 2000 warm-up steps, cosine, no
gradient clipping, gradient checkpointing; RandomResizedCrop scale (0.9, 1), bicubic,
OpenAI normalisation. Retrieval captions use the 7-facet prompt (facets averaged),
zero-shot the single prompt.
Differences: pad tokens are masked as keys when embedding in batches (the release lets
them be attended: `clipjax.models.facets`); bfloat16 activations instead of fp16 AMP; the
recaptions (HF datasets caj/FLAME-ReCap-CC3M-MiniCPM-Llama3-V-2_5, JSON keyed by
__key__) must be merged into the shards' json as 'short' and 'long' fields first, as this
machine cannot download them; ':alt_text' embeds the alt-text alone (1 + 7 vectors from
the single and 7-facet prompts). Headline (paper, CC3M): ImageNet zero-shot +4.9 points
over the previous best; Urban-1k long-caption R@1 65.3 / 66.6 (I->T / T->I) against
CLIP's 10.7 / 9.6.
"""
from ml_collections import ConfigDict, config_dict

from clipjax import config_base as common

SAMPLES, BATCH, EPOCHS = 2_905_954, 3072, 32
STEPS_PER_EPOCH = -(-SAMPLES // BATCH)


def get_config(arg: str = 'train') -> ConfigDict:
  if arg not in ('train', 'embed', 'alt_text'):
    raise ValueError(f'configs/flame.py:{arg}: want train, embed or alt_text')
  c = common.base_config()
  c.method = 'flame'
  c.batch_size = BATCH
  c.total_steps = STEPS_PER_EPOCH * EPOCHS
  c.log_every, c.eval_every, c.checkpoint_every = 100, STEPS_PER_EPOCH, STEPS_PER_EPOCH // 2
  c.model = ConfigDict(dict(name='ViT-B/16', image_size=224, patch_size=16, pool='cls',
                            projector_dim=5120, dtype='bfloat16', attention_impl='auto',
                            remat=True))
  c.data = common.synthetic_data(train_num_samples=SAMPLES)
  c.data.update(dict(format='wds', train='cc3m/cc3m-train-{0000..0575}.tar', num_workers=16,
                     augment=dict(scale=(0.9, 1.0)), canvas_size=608))
  if arg == 'embed':  # the recaptions, read by the embedding job only
    c.data.extra_columns = ConfigDict(dict(short='json.short', long='json.long'))
  c.data.text_features = config_dict.placeholder(str)
  c.optim.update(dict(lr=5e-4, warmup_steps=2000, b1=0.9, b2=0.95, eps=1e-8,
                      weight_decay=0.5, grad_clip=0.0))
  c.evals = ConfigDict(dict(
      imagenet=dict(type='zeroshot', dataset='imagenet2012', data_dir='data/tfds',
                    split='validation')))
  c.llm = ConfigDict(dict(path=config_dict.placeholder(str), layer=39, max_length=1536,
                          max_caption_tokens=1024, dtype='bfloat16'))
  captions = [('caption', 'single'), ('short', 'short'), ('long', 'long')]
  if arg == 'alt_text':
    captions = [('caption', 'single'), ('caption', 'long')]
  c.embed = ConfigDict(dict(captions=captions, part_size=10_000, batch_size=32,
                            max_samples=config_dict.placeholder(int)))
  c.flame = ConfigDict(dict(positives=6 if arg != 'alt_text' else 4, eval_batch_size=32,
                            eval_templates=dict(captions='long', classes='single')))
  return c
