"""Input pipeline throughput: decoded-and-augmented images/s per CPU core from JPEG shards.

  python benchmarks/input_pipeline.py [--image-size 224] [--canvas-size 608] \
      [--workers 0 2] [--train-examples-per-sec 1500]

Writes photo-like JPEG shards (smooth colour fields plus grain, 512x384, quality 90:
about the size and decode cost of a CC3M/LAION image) to a temporary folder, then times
two transforms that give the same images bit for bit: "host" crops, resizes and
normalises in the loader; "device" (`data.canvas_size`, clipjax/data/device_resize.py)
ships the pixels the crop reads with Pillow's filter taps, and the jitted step resizes.
  decode       JPEG decode alone: Pillow's, then ours (simplejpeg) at full size and with
               the DCT-scaled fast path;
  sample       decode + random resized crop (or its plan) + tokenize, one core;
  stages       where a sample's CPU time goes: decode, crop and resize, normalisation,
               tokenization (one caption, as the transform does), a worker's hand-over
               (pickling the transformed sample), batching;
  finish       the step's share of the device path on this machine's JAX device;
  loader       the whole grain loader (tar reading, shuffle, batching) with N workers.
decode and sample are images per CPU-second (process time), i.e. per core whatever else
runs; loader rates and finish are wall-clock, so they depend on the cores actually free.
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
from clipjax.data import device_resize, pipeline, sources, transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
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


def pillow_decode(data: bytes) -> np.ndarray:
  """The decode before simplejpeg: Pillow's, then its 4-byte pixels packed into numpy."""
  return np.asarray(Image.open(io.BytesIO(data)))


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


def stages(jpegs, captions, tok, transform, deferred, size: int, batch_size: int) -> tuple:
  """CPU ms per sample of each step the transform and loader take, in order: resizing on
  the host (`transform`) and on the accelerator (`deferred`, data.canvas_size)."""
  rng = np.random.default_rng(0)
  decode = per_sample_ms(lambda d: sources.decode_image(d, draft_size=size, as_array=False),
                         jpegs)
  images = [sources.decode_image(d, draft_size=size, as_array=False) for d in jpegs]
  boxes = [transforms.random_resized_crop_box(*im.shape[:2], rng, (0.9, 1.0),
                                              transforms.DEFAULT_AUGMENT['ratio'])
           for im in images]
  crops = [transforms.random_resized_crop(im, size, rng) for im in images]

  def normalise(crop):
    pixels = np.multiply(crop, transform.scale, dtype=np.float32)
    pixels += transform.offset
  tokenize = per_sample_ms(lambda c: tok([c], transform.context_length), captions)

  def loader_stages(t):
    sample = t({'image': images[0], 'caption': captions[0]}, rng)
    samples = [sample] * batch_size
    return {'tokenize': tokenize,
            'hand-over': per_sample_ms(lambda _: pickle.loads(pickle.dumps(sample)), crops),
            'batch': per_sample_ms(lambda _: {k: np.stack([s[k] for s in samples])
                                              for k in sample}, crops[:8]) / batch_size}
  host = {'decode': decode,
          'crop + resize': per_sample_ms(  # as random_resized_crop, given its box
              lambda ib: np.asarray(Image.fromarray(ib[0]).resize(
                  (size, size), Image.BICUBIC, box=ib[1]), np.uint8), list(zip(images, boxes))),
          'normalise': per_sample_ms(normalise, crops), **loader_stages(transform)}
  on_device = {'decode': decode,
               'crop box, taps, pixels to canvas': per_sample_ms(
                   lambda im: deferred.image({'image': im}, rng), images),
               **loader_stages(deferred)}
  return host, on_device


def device_ms(deferred, jpegs, size: int, batch_size: int) -> float:
  """Wall ms per image of the step's `device_resize.finish` on this machine's JAX device."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rows = [deferred.image({'image': sources.decode_image(d, draft_size=size, as_array=False)},
                         rng) for d in jpegs[:batch_size]]
  batch = jax.device_put({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  finish = jax.jit(device_resize.finish)
  jax.block_until_ready(finish(batch))
  start = time.perf_counter()
  for _ in range(3):
    jax.block_until_ready(finish(batch))
  return (time.perf_counter() - start) / 3 / len(rows) * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--canvas-size', type=int, default=608,
                      help='data.canvas_size of the resize-on-the-accelerator rows')
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
        'decode_pillow': rate(pillow_decode, jpegs),
        'decode_full': rate(sources.decode_image, jpegs),
        'decode_draft': rate(lambda d: sources.decode_image(d, draft_size=size), jpegs),
    }
    augment = {'scale': (0.9, 1.0)}
    paths = {'host': transforms.ImageText(tok, 77, size, augment=augment),
             'device': transforms.ImageText(tok, 77, size, augment=augment,
                                            canvas_size=args.canvas_size)}
    decoder = sources.RecordDecoder(draft_size=size, as_array=False)  # as the wds source
    for name, transform in paths.items():
      pre = pipeline.Apply(transform, decoder=decoder)
      rng = np.random.default_rng(0)
      results[f'sample_{name}'] = rate(lambda r, pre=pre, rng=rng: pre(r, rng), raws)
    breakdown = dict(zip(paths, stages(jpegs, [r['txt'].decode() for r in raws], tok,
                                       paths['host'], paths['device'], size, args.batch_size)))
    results['device_finish_ms'] = device_ms(paths['device'], jpegs, size, args.batch_size)
    source = pipeline.make_source({'format': 'wds', 'train': pattern}, image_size=size)
    steps = max(2, args.num_images // args.batch_size)
    for name, transform in paths.items():
      for workers in args.workers:
        loader = pipeline.make_train_loader(
            source, transform, global_batch_size=args.batch_size, seed=0,
            worker_count=workers, shuffle_buffer=256)
        next(loader)  # workers started, buffers warm
        start = time.perf_counter()
        for _ in range(steps):
          next(loader)
        results[f'loader_{name}_workers{workers}'] = (
            steps * args.batch_size / (time.perf_counter() - start))
        loader.close()

  jpeg_kib = np.mean([len(j) for j in jpegs]) / 1024
  print(f'{size}px from 512x384 JPEG shards ({jpeg_kib:.0f} KiB/image), '
        f'{os.cpu_count()} CPUs visible; "device": resized in the step '
        f'(data.canvas_size={args.canvas_size})')
  labels = {'decode_pillow': 'decode (Pillow)', 'decode_full': 'decode (full size)',
            'decode_draft': 'decode (DCT fast path)',
            'sample_host': 'decode+augment, host', 'sample_device': 'decode+augment, device'}
  print(f'{"stage":<30} {"images/s":>10}   (decode/sample: per CPU-second; loader: wall clock)')
  for key, value in results.items():
    if key.startswith(('decode', 'sample', 'loader')):
      label = labels.get(key, key.replace('loader_', 'loader, ').replace('_workers', ', workers='))
      print(f'{label:<30} {value:>10.0f}')
  print(f'device_resize.finish in the jitted step, this machine\'s JAX device: '
        f'{results["device_finish_ms"]:.2f} ms wall per image')
  for name, stage_ms in breakdown.items():
    total = sum(stage_ms.values())
    print(f'\n{"CPU per sample, " + name:<34} {"ms":>7} {"share":>7}')
    for stage, ms in stage_ms.items():
      print(f'{stage:<34} {ms:>7.3f} {ms / total:>7.0%}')
    print(f'{"sum":<34} {total:>7.3f}   ({1e3 / total:.0f} samples/s per core)')
  results['stages_ms'] = breakdown
  if args.train_examples_per_sec:
    for name in paths:
      cores = args.train_examples_per_sec / results[f'sample_{name}']
      results[f'cores_per_accelerator_{name}'] = cores
      print(f'train step consumes {args.train_examples_per_sec:.0f} examples/s: '
            f'~{cores:.1f} host cores keep one accelerator fed (resize on the {name})')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == '__main__':
  main()
