"""Concept frequency in a real pretraining set (clipjax/analysis/frequency.py), the
paper's setting: CC3M as img2dataset wrote it, the class names (CLIP_benchmark's, shipped
in clipjax/evaluate/prompts.json) of six of the paper's 17 classification sets, and a CLIP
ViT-B/16 as the image tagger in place of RAM++. Add a TFDS set's names with
--config.concepts.cifar100="dict(dataset='cifar100', data_dir=DATA)".

  python -m clipjax.analysis.frequency --config configs/frequency.py --workdir runs/cc3m_counts \
      --config.data.train='cc3m/{00000..00331}.tar' --config.tagger.model=ckpts/clip-vit-base-patch16
  # several processes: the same command under launch/ (each counts every P-th shard)

Retrieval concepts come from a JSON list of caption lists (one per image, e.g. COCO's 5k
test images with their five captions): --config.concepts.coco=dict(captions=FILE).
The tagger's threshold is a cosine between an image and a concept's prompt ensemble; its
value below was not calibrated on ViT-B/16 (no such weights on the machine this was
written on): tag a labelled sample first and pick the threshold from its precision and
recall, as `clipjax.analysis.frequency_study` does on synthetic data. Without a tagger
model only caption frequency is counted.
"""
from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.data = ConfigDict(dict(format='wds', train='', caption_key='txt'))
  c.concepts = ConfigDict(dict(imagenet='imagenet1k', pets='pets', flowers='flowers',
                               caltech101='caltech101', eurosat='eurosat',
                               country211='country211'))
  c.part_size = 10_000  # random-access sources; tar shards are one part each
  c.max_samples = config_dict.placeholder(int)  # None: all; settable on the command line
  c.tagger = ConfigDict(dict(model='', threshold=0.3, templates='imagenet1k', batch_size=512))
  return c
