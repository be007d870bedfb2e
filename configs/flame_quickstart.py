"""FLAME on the CPU: long synthetic captions, a tiny Llama of our own as the frozen LLM.

All of it, three seeds, FLAME against CLIP at equal steps (clipjax/analysis/flame_study.py):
  python -m clipjax.analysis.flame_study --config configs/flame_quickstart.py:study \
      --workdir runs/flame
Or step by step (DIR/llm: a Hugging Face Llama folder, e.g. the study's):
  python -m clipjax.embed --config configs/flame_quickstart.py:embed --workdir DIR/text \
      --config.llm.path=DIR/llm
  python -m clipjax.main --config configs/flame_quickstart.py --workdir DIR/flame \
      --config.llm.path=DIR/llm --config.data.text_features=DIR/text
  python -m clipjax.main --config configs/flame_quickstart.py:clip --workdir DIR/clip

Captions (`data.caption_style='long'`) name two to four objects' colours, shapes and
positions after an opening sentence, 30-60 tokens: CLIP's 32-token text tower reads the
first objects only; the LLM reads them all.
"""
from ml_collections import ConfigDict, config_dict

from clipjax import config_base as common


def get_config(arg: str = 'flame') -> ConfigDict:
  if arg == 'study':
    return study_config()
  if arg not in ('flame', 'embed', 'clip'):
    raise ValueError(f'configs/flame_quickstart.py:{arg}: want flame, embed, clip or study')
  c = common.base_config()
  c.method = 'clip' if arg == 'clip' else 'flame'
  c.total_steps = 1500
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 1500
  c.checkpoint_every = 500
  c.data = common.synthetic_data(train_num_samples=20_000)
  c.data.caption_style = 'long'
  c.data.text_features = config_dict.placeholder(str)  # the embedding job's workdir
  c.model = ConfigDict(dict(name='tiny', image_size=32, patch_size=8, pool='cls',
                            dtype='float32', attention_impl='xla', remat=False))
  if arg == 'clip':
    c.model.context_length = 32
    c.tokenizer.vocab_size = 512
  else:
    c.model.projector_dim = 0  # 0: the LLM's width
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.05
  c.evals = ConfigDict(dict(
      long_retrieval=dict(type='retrieval', dataset='shapes_long', num_samples=500, seed=1),
      shapes_colour=dict(type='zeroshot', dataset='shapes_heldout_colour', num_samples=500),
  ))
  # The frozen LLM: a Hugging Face Llama-family folder; layer = the decoder layer whose
  # output is read (None: the penultimate, as FLAME's 39 of Mistral-Nemo's 40).
  c.llm = ConfigDict(dict(path=config_dict.placeholder(str), layer=config_dict.placeholder(int),
                          max_length=256, max_caption_tokens=96, dtype='float32'))
  # Per sample: the caption with the single prompt and with the 7-facet one (8 vectors).
  c.embed = ConfigDict(dict(captions=[('caption', 'single'), ('caption', 'long')],
                            part_size=2000, batch_size=64, max_samples=config_dict.placeholder(int)))
  # All 8 stored vectors are positives every read (the release draws 6 of its 11).
  c.flame = ConfigDict(dict(positives=8, eval_batch_size=64,
                            eval_templates=dict(captions='long', classes='single')))
  return c


def study_config() -> ConfigDict:
  # The tiny LLM: trained once on the training captions and one-word facet answers read
  # off each scene (clipjax.analysis.flame_study.corpus).
  language_model = dict(vocab_size=1024, width=96, layers=4, heads=4, kv_heads=2, mlp_dim=256,
                        length=128, steps=400, batch_size=32, facet_batch_size=16, lr=3e-3)
  return ConfigDict(dict(language_model=language_model, embed=get_config('embed'),
                         flame=get_config('flame'), clip=get_config('clip'), seeds=(0, 1, 2)))
