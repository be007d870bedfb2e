"""TL;DR's CC3M recipe (showlab/datacentric.vlp, `vq_compress_model/configs/codebook_cc3m.yaml`,
`codebook_cluster.py`; choices where the release is silent or incomplete: the module
docstring of clipjax/analysis/tldr.py).

  python -m clipjax.analysis.tldr --config configs/tldr.py --workdir runs/tldr_cc3m

Kept from the release: a ViT-B/16 at 224 px, every one of its 197 tokens quantised by a
1,024 x 768 codebook (legacy VQ loss, beta 0.25, not normalised), a 12-layer, 768-wide
decoder cross-attending to them, captions of at most 30 tokens, AdamW lr 3e-4, weight
decay 0.05, 3,000 warm-up steps, 20 epochs of the 2,690,757 downloaded CC3M pairs at a
global batch of 2,400 (75 per GPU on 32), the token-ordered code ids as each image's
vector, PCA-whitening to 256 dims, 1,000 K-means clusters (20 iterations), half of each
cluster by stride intersected with the better-aligned half: ~25% kept, and
'original; generated' captions by beam search (3 beams; BLIP's min_length 5 and
max_length 20, here counted as tokens before eot and the whole sequence with sot).
Substituted: the ViT starts from OpenAI CLIP ViT-B/16's image tower (the release's from
DeiT-B, which `clipjax.convert` does not read), the same CLIP scores alignment (for
BLIP's ITM head, whose scores the release does not publish), the decoder starts from
scratch with BERT's tokenizer (the release's is BERT-base; its layout is post-norm), and
the learning rate follows a cosine (the release's decays 0.9x per epoch).
Each CC3M sample must be in ArrayRecord shards (`python -m clipjax.data.make_shards
--format array_record ...`); the reduction reads them by index.
"""
from ml_collections import ConfigDict

from clipjax import config_base as common

SAMPLES, BATCH, EPOCHS = 2_690_757, 2400, 20
CLIP = 'ckpts/clip-vit-base-patch16'  # a Hugging Face CLIP folder
BERT = 'ckpts/bert-base-uncased'      # its tokenizer.json


def data_config() -> ConfigDict:
  data = common.synthetic_data(train_num_samples=0)
  data.update(dict(format='array_record', train='data/cc3m/{00000..00269}.array_record',
                   num_workers=16, read_threads=16,  # JPEG decode releases the GIL
                   augment=dict(scale=(0.2, 1.0)), canvas_size=608))
  return data


def captioner_config() -> ConfigDict:
  c = common.base_config()
  c.method = 'tldr_captioner'
  c.batch_size = BATCH
  c.total_steps = -(-SAMPLES // BATCH) * EPOCHS
  c.log_every, c.eval_every, c.checkpoint_every = 100, 0, 2000
  c.model = ConfigDict(dict(vision='B/16', image_size=224, context_length=30,
                            decoder_width=768, decoder_layers=12, decoder_heads=12,
                            num_codes=1024, code_dim=768, vq_beta=0.25, vq_legacy=True,
                            vq_normalize=False, label_smoothing=0.1, dtype='bfloat16', attention_impl='auto',
                            remat=True))
  c.captioner = ConfigDict(dict(num_beams=3, max_length=20, min_length=5, length_penalty=1.0))
  c.tokenizer.path = BERT
  c.optim.update(dict(lr=3e-4, warmup_steps=3000, weight_decay=0.05, b2=0.999, eps=1e-8))
  c.mesh = ConfigDict(dict(data=-1, fsdp=8, tensor=1, dcn_data=1))
  c.data = data_config()
  return c


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.data = data_config()
  c.captioner = captioner_config()
  c.alignment = ConfigDict(dict(model=CLIP, train=ConfigDict()))
  c.vision_from_alignment = True
  c.part_size = 65_536
  c.batch_size = 512
  c.selection = ConfigDict(dict(representation='ids', pca_dim=256, clusters=1000,
                                iterations=20, init='random', seed=0, per_cluster='stride',
                                keep_fraction=0.25, align_fraction=0.5))
  c.recaption = ConfigDict(dict(enabled=True, format='array_record', shard_size=10_000,
                                separator='; '))
  return c
