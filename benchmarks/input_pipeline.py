"""Input pipeline throughput: decoded-and-augmented images/s per CPU core from JPEG shards.

  python benchmarks/input_pipeline.py [--image-size 224] [--workers 0 2] \
      [--train-examples-per-sec 1500]

Writes photo-like JPEG shards (smooth colour fields plus grain, 512x384, quality 90:
about the size and decode cost of a CC3M/LAION image) to a temporary folder, then times
  decode       JPEG decode alone, full size and with the DCT-scaled fast path;
  sample       decode + random resized crop + normalise + tokenize, one core;
  stages       where a sample's CPU time goes: decode, crop and resize, float conversion
               and normalisation, tokenization (one caption, as the transform does), a
               worker's hand-over (pickling the transformed sample), batching;
  loader       the whole grain loader (tar reading, shuffle, batching) with N workers.
decode and sample are images per CPU-second (process time), i.e. per core whatever else
runs; loader rates are wall-clock, so they depend on the cores actually free.
Given the examples/s one accelerator's train step consumes (benchmarks/train_step.py),
prints how many host cores keep it fed.
"""
import argparse
import io
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clipjax.data import pipeline, sources, transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from clipjax.data.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top,wrong-import-position


def photo_like(rng, width=512, height=384) -> bytes:
  coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
  image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def write_shards(folder, num, shard_size, seed=0) -> str:
  rng = np.random.default_rng(seed)
  writer = sources.ShardWriter(folder, shard_size)
  for i in range(num):
    writer.write(f'{i:09d}', {'jpg': photo_like(rng), 'txt': f'a photo of thing number {i}'})
  writer.close()
  return writer.pattern()


def rate(fn, items) -> float:
  """Images per CPU-second of this process: per-core throughput, unaffected by other
  load on the machine (wall-clock rates are not)."""
  start = time.process_time()
  for item in items:
    fn(item)
  return len(items) / (time.process_time() - start)


def per_sample_ms(fn, items) -> float:
  start = time.process_time()
  for item in items:
    fn(item)
  return (time.process_time() - start) / len(items) * 1e3


def stages(jpegs, captions, tok, transform, size: int, batch_size: int) -> dict:
  """CPU ms per sample of each step the transform and loader take, in order."""
  rng = np.random.default_rng(0)
  out = {'decode': per_sample_ms(
      lambda d: sources.decode_image(d, draft_size=size, as_array=False), jpegs)}
  images = [sources.decode_image(d, draft_size=size, as_array=False) for d in jpegs]
  boxes = [transforms.random_resized_crop_box(im.height, im.width, rng, (0.9, 1.0),
                                              transforms.DEFAULT_AUGMENT['ratio'])
           for im in images]
  out['crop + resize'] = per_sample_ms(
      lambda ib: np.asarray(ib[0].resize((size, size), Image.BICUBIC, box=ib[1]), np.uint8),
      list(zip(images, boxes)))
  crops = [np.asarray(im.resize((size, size), Image.BICUBIC, box=b), np.uint8)
           for im, b in zip(images, boxes)]

  def normalise(crop):
    pixels = np.multiply(crop, transform.scale, dtype=np.float32)
    pixels += transform.offset
  out['normalise'] = per_sample_ms(normalise, crops)
  out['tokenize'] = per_sample_ms(lambda c: tok([c], transform.context_length), captions)
  sample = transform({'image': images[0], 'caption': captions[0]}, rng)
  out['hand-over'] = per_sample_ms(lambda _: pickle.loads(pickle.dumps(sample)), crops)
  samples = [sample] * batch_size
  out['batch'] = per_sample_ms(
      lambda _: {k: np.stack([s[k] for s in samples]) for k in sample}, crops[:8]) / batch_size
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-images', type=int, default=512)
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--workers', type=int, nargs='+', default=[0])
  parser.add_argument('--train-examples-per-sec', type=float, default=None,
                      help='examples/s of the train step on one accelerator')
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    pattern = write_shards(tmp, args.num_images, shard_size=128)
    raws = [r for url in sources.expand_urls(pattern) for r in sources.iter_tar_samples(url)]
    jpegs = [r['jpg'] for r in raws]
    size = args.image_size
    tok = Tokenizer.train([r['txt'].decode() for r in raws], vocab_size=512)
    results = {
        'decode_full': rate(sources.decode_image, jpegs),
        'decode_draft': rate(lambda d: sources.decode_image(d, draft_size=size), jpegs),
    }
    transform = transforms.ImageText(tok, 77, size, augment={'scale': (0.9, 1.0)})
    pre = pipeline.Apply(transform, decoder=sources.RecordDecoder(draft_size=size))
    rng = np.random.default_rng(0)
    results['sample'] = rate(lambda r: pre(r, rng), raws)
    breakdown = stages(jpegs, [r['txt'].decode() for r in raws], tok, transform, size,
                       args.batch_size)
    source = pipeline.make_source({'format': 'wds', 'train': pattern}, image_size=size)
    steps = max(2, args.num_images // args.batch_size)
    for workers in args.workers:
      loader = pipeline.make_train_loader(
          source, transform, global_batch_size=args.batch_size, seed=0,
          worker_count=workers, shuffle_buffer=256)
      next(loader)  # workers started, buffers warm
      start = time.perf_counter()
      for _ in range(steps):
        next(loader)
      results[f'loader_workers{workers}'] = steps * args.batch_size / (time.perf_counter() - start)
      loader.close()

  jpeg_kib = np.mean([len(j) for j in jpegs]) / 1024
  print(f'{size}px from 512x384 JPEG shards ({jpeg_kib:.0f} KiB/image), '
        f'{os.cpu_count()} CPUs visible')
  print(f'{"stage":<22} {"images/s":>10}')
  labels = {'decode_full': 'decode (full size)', 'decode_draft': 'decode (DCT fast path)',
            'sample': 'decode+augment, 1 core'}
  print('(decode/sample: per CPU-second; loader: wall clock)')
  for key, value in results.items():
    label = labels.get(key, key.replace('loader_workers', 'loader, workers='))
    print(f'{label:<22} {value:>10.0f}')
  total = sum(breakdown.values())
  print(f'\n{"stage (CPU per sample)":<24} {"ms":>7} {"share":>7}')
  for stage, ms in breakdown.items():
    print(f'{stage:<24} {ms:>7.3f} {ms / total:>7.0%}')
  print(f'{"sum":<24} {total:>7.3f}   ({1e3 / total:.0f} samples/s per core)')
  results['stages_ms'] = breakdown
  per_core = results['sample']
  if args.train_examples_per_sec:
    cores = args.train_examples_per_sec / per_core
    results['cores_per_accelerator'] = cores
    print(f'train step consumes {args.train_examples_per_sec:.0f} examples/s: '
          f'~{cores:.1f} host cores keep one accelerator fed')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == '__main__':
  main()
