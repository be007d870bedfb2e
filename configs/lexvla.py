"""LexVLA's recipe (Li et al., NeurIPS 2024; no code released: what the paper leaves open is
chosen in clipjax/methods/lexvla.py and marked below).

  python -m clipjax.main --config configs/lexvla.py --workdir runs/lexvla \
      --config.llm.path=ckpts/Llama-2-7b-hf

The backbone is read from BACKBONE (a Hugging Face CLIP folder; edit it, or the list).

Kept from the paper: Llama 2 7B (width 4096) frozen with rank-8 LoRA on every projection
(~20M parameters, the paper's ~21M), its LM head's rows of the kept vocabulary as the
frozen text codebook and a trainable copy as the visual codebook (17,149 x 4096 = 70M for
the paper's filter), a frozen image backbone whose patch tokens pass through a trainable
adapter (one self-attention block, a 2-layer MLP 1024-1024-4096: ~17.8M, the paper's
~17M), elu+1, max over patches, L2; InfoNCE plus the overuse penalty; the last prompt
token read; threshold sparsification 1/sqrt(V) at inference; CC-12M (9.2M pairs).
Substituted: the backbone is OpenAI CLIP ViT-L/14 (the paper's "CLIP" variant) because
clipjax has no DINOv2 converter; give any ViT `init_from` reads. Chosen where the paper is
silent: batch 1024, lr 2e-4 (AdamW, cosine, 2000 warm-up steps), 5 epochs, 224 px, the
prompt (FLAME's one-word PromptEOL), the word filter, the penalty's form and weight (1.0),
the temperature (learnable, 1/0.07 at the start).
"""
from ml_collections import ConfigDict, config_dict

from clipjax import config_base as common

SAMPLES, BATCH, EPOCHS = 9_200_000, 1024, 5
BACKBONE = 'ckpts/clip-vit-large-patch14'
LORA_RULES = (('layer_.*/(query|key|value|gate|up|down)/kernel', 1), ('layer_.*/out/kernel', 2))


def get_config() -> ConfigDict:
  c = common.base_config()
  c.method = 'lexvla'
  c.batch_size = BATCH
  c.total_steps = -(-SAMPLES // BATCH) * EPOCHS
  c.log_every, c.eval_every, c.checkpoint_every = 100, 2000, 1000
  c.model = ConfigDict(dict(name='ViT-L/14', image_size=224, patch_size=14, pool='cls',
                            dtype='bfloat16', attention_impl='auto', remat=True))
  c.data = common.synthetic_data(train_num_samples=SAMPLES)
  c.data.update(dict(format='wds', train='cc12m/cc12m-train-{0000..1242}.tar', num_workers=16,
                     augment=dict(scale=(0.9, 1.0)), canvas_size=608))
  # The image tower's tokens only: its ln_post and projection are not part of LexVLA.
  c.init_from = [dict(target='visual', src=BACKBONE, subtree='visual',
                      ignore=('ln_post/.*', 'proj'))]
  c.optim.update(dict(lr=2e-4, warmup_steps=2000, weight_decay=0.1,
                      rules=(dict(match='visual/.*', frozen=True),)))  # the backbone is frozen
  c.evals = ConfigDict(dict(
      imagenet=dict(type='zeroshot', dataset='imagenet2012', data_dir='data/tfds',
                    split='validation')))
  c.llm = ConfigDict(dict(path=config_dict.placeholder(str), max_length=128,
                          max_caption_tokens=77, dtype='bfloat16', param_dtype='bfloat16'))
  c.mesh.fsdp = 8  # the frozen 7B LLM (13.5 GB in bfloat16) sharded over a host's 8 GPUs
  c.lexvla = ConfigDict(dict(
      min_letters=2, stopwords=True, penalty='overuse', penalty_weight=1.0,
      penalty_sides=('image', 'text'), overuse_stop_gradient=True,
      lora_rank=8, lora_alpha=16.0, lora_rules=LORA_RULES, adapter_mlp_dim=1024,
      pool_chunk=1024,  # [batch, 256 patches, 1024 words] at a time, never all 17k words
      train_top_k=0, train_top_k_anneal=0.4,  # the paper sparsifies at inference only
      eval_threshold=config_dict.placeholder(float), eval_top_k=0, eval_batch_size=64))
  return c
