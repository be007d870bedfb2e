"""LexVLA on the CPU: the quickstart's shapes, a tiny Llama of our own as the LLM.

All of it, three seeds, LexVLA with and without the overuse penalty, and without it but
with InfoNCE on each vector's top 4 words too (':top_k'), against CLIP at equal steps
(clipjax/analysis/lexvla_study.py):
  python -m clipjax.analysis.lexvla_study --config configs/lexvla_quickstart.py:study \
      --workdir runs/lexvla
Or one run (DIR/llm: a Hugging Face Llama folder, e.g. the study's):
  python -m clipjax.main --config configs/lexvla_quickstart.py --workdir DIR/lexvla \
      --config.llm.path=DIR/llm
  python -m clipjax.main --config configs/lexvla_quickstart.py:clip --workdir DIR/clip

The image backbone is a tiny ViT trained from scratch (no DINOv2 here); the LLM is frozen
with rank-8 LoRA adapters on every projection, as the paper's Llama 2.
"""
from ml_collections import ConfigDict, config_dict

from clipjax import config_base as common

VARIANTS = ('lexvla', 'no_penalty', 'top_k', 'flops', 'clip')
# LoRA on every projection of every decoder layer (an output kernel [heads, dim, width]
# has two input axes).
LORA_RULES = (('layer_.*/(query|key|value|gate|up|down)/kernel', 1), ('layer_.*/out/kernel', 2))


def get_config(arg: str = 'lexvla') -> ConfigDict:
  if arg == 'study':
    return study_config()
  if arg not in VARIANTS:
    raise ValueError(f'configs/lexvla_quickstart.py:{arg}: want one of {VARIANTS} or study')
  c = common.base_config()
  c.method = 'clip' if arg == 'clip' else 'lexvla'
  c.total_steps = 1000
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.data = common.synthetic_data(train_num_samples=20_000)
  c.model = ConfigDict(dict(name='tiny', image_size=32, patch_size=8, pool='cls',
                            dtype='float32', attention_impl='xla', remat=False))
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.05
  c.evals = ConfigDict(dict(
      retrieval=dict(type='retrieval', dataset='shapes', num_samples=500, seed=1),
      shapes_colour=dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=500),
      shapes_shape=dict(type='zeroshot', dataset='shapes_heldout_shape', num_samples=500),
  ))
  if arg == 'clip':
    c.model.context_length = 24
    c.tokenizer.vocab_size = 512
    return c
  c.evals.patchdis = dict(type='patchdis', attribute='colour', num_samples=200)
  c.llm = ConfigDict(dict(path=config_dict.placeholder(str), max_length=48,
                          max_caption_tokens=20, dtype='float32'))
  c.lexvla = ConfigDict(dict(
      min_letters=2, stopwords=True,
      penalty={'lexvla': 'overuse', 'no_penalty': 'none', 'top_k': 'none', 'flops': 'flops'}[arg],
      penalty_weight=10.0, penalty_sides=('image', 'text'), overuse_stop_gradient=True,
      lora_rank=8, lora_alpha=16.0, lora_rules=LORA_RULES,
      adapter_mlp_dim=0,  # 0: the LLM's width
      pool_chunk=0,  # vocabulary chunk of the patch max-pool (0: all words at once)
      # InfoNCE on the top-k words too, k annealed from V over this share of the steps
      train_top_k=4 if arg == 'top_k' else 0, train_top_k_anneal=0.4,
      eval_threshold=config_dict.placeholder(float),  # None: 1/sqrt(V); 0: none
      eval_top_k=0, eval_batch_size=64))
  return c


def study_config() -> ConfigDict:
  # The tiny LLM: trained once on the training captions and, in the lexical prompt's own
  # form, one of each caption's content words as the next word
  # (clipjax.analysis.lexvla_study.corpus).
  language_model = dict(vocab_size=1024, width=96, layers=4, heads=4, kv_heads=2, mlp_dim=256,
                        length=64, steps=400, batch_size=32, facet_batch_size=32, lr=3e-3)
  return ConfigDict(dict(language_model=language_model, seeds=(0, 1, 2),
                         runs={v: get_config(v)
                               for v in ('lexvla', 'no_penalty', 'top_k', 'clip')}))
