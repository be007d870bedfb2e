"""TinyCLIP paper recipes (microsoft/Cream TinyCLIP scripts): manual and automatic inheritance.

  python -m clipjax.main --config configs/tinyclip_vit.py:vit61m32 --workdir runs/vit61m32 \
      --config.tinyclip.teacher=ckpts/ViT-B-32-laion2b_e16 --config.data.train='laion/{00000..41455}.tar'

Recipes (student towers; head width 64; teacher ViT-B/32 laion2b_e16 for the /32 models):
  vit61m32  ViT 640 wide x 12 + text 512 x 9   (stage 1, inherits from the teacher)
  vit40m32  ViT 512 wide x 12 + text 512 x 6   (stage 2, inherits from stage 1's student:
            `--config.mode=export` of the vit61m32 run writes it to runs/vit61m32/export)
  vit39m16  ViT/16 512 wide x 12 + text 512 x 6, YFCC-15M
  vit8m16   ViT/16 256 wide x 10 + text 256 x 3 (4 heads), YFCC-15M
  auto      automatic inheritance, three stages of one run (`config.stages`, each
            stage's student exported to DIR/stage_{1,2,3}): ViT-B/32 with L0 masks, sparsity 0->25%, 25->50%,
            50->75%, pruned at steps 3000 / 5000 / 8000 (model warm-up = prune_step,
            cosine after it, fresh optimizer at the prune); each stage starts from the
            previous one's pruned student put back into the masked ViT-B/32. Official
            results (LAION-400M): ViT-63M/32, ViT-45M/32, ViT-22M/32 at 63.9 / 61.4 / 53.7.
The YFCC-15M recipes' teacher is not named in the official code (a ViT-B/16 is assumed here).

Official hyperparameters: AdamW lr 1e-4 (cosine, 2000 warm-up steps), wd 0.2, betas
(0.9, 0.98), eps 1e-6, grad-norm clip 5, global batch 32,768 (4 nodes x 8 GPUs x 1024),
6 epochs of 400M samples per stage, RandomResizedCrop scale (0.9, 1), both temperatures
fixed at 1/50, no ground-truth InfoNCE. Zero-shot ImageNet (README model zoo): 62.4 / 59.8 /
63.5 / 41.1 for the four recipes above.
"""
from ml_collections import ConfigDict

from clipjax import config_base as common

RECIPES = {
    'vit61m32': dict(model='ViT-B/32', vision=dict(width=640, heads=10), text=dict(layers=9),
                     teacher='ckpts/ViT-B-32-laion2b_e16', data='laion400m'),
    'vit40m32': dict(model='ViT-B/32', vision=dict(width=512, heads=8), text=dict(layers=6),
                     teacher='ckpts/ViT-B-32-laion2b_e16', data='laion400m',
                     inherit_from='runs/vit61m32/export'),
    'vit39m16': dict(model='ViT-B/16', vision=dict(width=512, heads=8), text=dict(layers=6),
                     teacher='ckpts/ViT-B-16-yfcc15m', data='yfcc15m'),
    'vit8m16': dict(model='ViT-B/16', vision=dict(width=256, heads=4, layers=10),
                    text=dict(width=256, heads=4, layers=3),
                    teacher='ckpts/ViT-B-16-yfcc15m', data='yfcc15m'),
}
RECIPES['auto'] = dict(model='ViT-B/32', vision={}, text={}, teacher='ckpts/ViT-B-32-laion2b_e16',
                       data='laion400m')
# (start sparsity, target sparsity, prune_step) per stage; sparsity warm-up 1000 steps.
AUTO_STAGES = ((0.0, 0.25, 3000), (0.25, 0.5, 5000), (0.5, 0.75, 8000))
L0_LR = 0.02  # official --l0lr (mask logits; the multipliers ascend at the same rate)
SAMPLES_PER_EPOCH, EPOCHS, BATCH = 400_000_000, 6, 32_768


def get_config(recipe: str = 'vit61m32') -> ConfigDict:
  if recipe not in RECIPES:
    raise ValueError(f'configs/tinyclip_vit.py: unknown recipe {recipe!r}; have {sorted(RECIPES)}')
  r = RECIPES[recipe]
  c = common.base_config()
  c.method = 'tinyclip'
  c.batch_size = BATCH
  c.total_steps = EPOCHS * SAMPLES_PER_EPOCH // BATCH
  c.log_every = 100
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.model = ConfigDict(dict(name=r['model'], vision=r['vision'], text=r['text'], act='gelu',
                            context_length=77, dtype='bfloat16', remat=True))
  c.tokenizer.path = r['teacher']  # the student reads text with the teacher's tokenizer
  c.data = ConfigDict(dict(format='wds', train=f'data/{r["data"]}/{{00000..99999}}.tar',
                           train_num_samples=SAMPLES_PER_EPOCH, num_workers=16,
                           augment=dict(scale=(0.9, 1.0)), canvas_size=608))
  c.optim.update(dict(lr=1e-4, warmup_steps=2000, weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6,
                      grad_clip=5.0))
  c.tinyclip = ConfigDict(dict(
      teacher=r['teacher'], teacher_format='', inherit='manual',
      inherit_from=r.get('inherit_from', ''), logit_scale=50.0, distill_weight=1.0,
      infonce_weight=0.0))
  if recipe == 'auto':
    c.stages = [{'optim.warmup_steps': prune_step, 'tinyclip.auto': dict(
        start_sparsity=start, target_sparsity=target, sparsity_warmup=1000, prune_step=prune_step,
        lr=L0_LR)} for start, target, prune_step in AUTO_STAGES]
    c.tinyclip.auto = dict(c.stages[0]['tinyclip.auto'])
  c.evals = ConfigDict(dict(imagenet=dict(type='zeroshot', dataset='imagenet2012',
                                          data_dir='data/tfds', split='validation',
                                          templates='imagenet1k')))
  return c
