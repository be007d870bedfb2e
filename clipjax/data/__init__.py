"""Data: sources, tokenizer and the grain training pipeline.

  shapes       synthetic captioned shapes (quickstart, tests) and zero-shot tasks
  sources      WebDataset tar shards, ArrayRecord, CSV/TSV, TFDS readers; decoding and
               bad-sample detection
  tokenizer    HF `tokenizers` BPE trained on captions, or any local tokenizer.json
  pipeline     make_source(data_config), make_train_loader(source, transform, ...) ->
               TrainLoader with exact resume state and data/skipped counts
  make_shards  `python -m clipjax.data.make_shards`: write tar shards or ArrayRecord files
  transforms   crops and normalisation; per-record transforms methods hand to the pipeline
               (`ImageText`: crop, normalise, tokenize)
  device_resize  Pillow's bicubic crop-resize planned on the host, done in the jitted step
               (`data.canvas_size`): `finish(batch)` gives the model's images
"""
