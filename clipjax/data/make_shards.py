"""Writes WebDataset tar shards (img2dataset layout) or ArrayRecord files.

  python -m clipjax.data.make_shards --out data/shards --images photos/ \\
      --captions captions.csv [--img-key filepath --caption-key title]
  python -m clipjax.data.make_shards --out data/shapes --synthetic 10000 --image-size 64 \\
      [--digit-fraction 0.4]   # the quickstart's mix of shapes and drawn digits
      [--misaligned 0.2 --duplicates 0.1]   # injected noise (TL;DR's study)

Each sample becomes KEY.jpg|png|webp (original bytes, not re-encoded), KEY.txt and
KEY.json ({'key', 'caption', 'source'}). Without --captions, an image's caption is
read from a .txt file of the same name beside it. Prints the shards' brace pattern as a
quoted flag, ready to paste: '--config.data.train=data/shapes/{00000..00009}.tar'.
"""
import argparse
import csv
import io
import json
import os
import shlex
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipjax.data import sources

_EXT_ALIASES = {'jpeg': 'jpg'}


def folder_samples(images: str, captions: str | None, img_key: str, caption_key: str):
  """(relative image path, caption) pairs from a captions CSV/TSV, else sidecar .txt."""
  if not os.path.isdir(images):
    raise FileNotFoundError(f'--images folder {images!r} does not exist')
  if captions:
    if not os.path.isfile(captions):
      raise FileNotFoundError(f'--captions file {captions!r} does not exist')
    sep = '\t' if captions.endswith('.tsv') else ','
    with open(captions, newline='', encoding='utf-8') as f:
      reader = csv.DictReader(f, delimiter=sep)
      for key in (img_key, caption_key):
        if key not in (reader.fieldnames or []):
          raise KeyError(f'{captions}: no column {key!r}; columns are {reader.fieldnames}')
      return [(row[img_key], row[caption_key]) for row in reader]
  pairs = []
  for root, _, files in os.walk(images):
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower().lstrip('.') not in sources.IMAGE_EXTS:
        continue
      txt = os.path.join(root, stem + '.txt')
      caption = ''
      if os.path.exists(txt):
        with open(txt, encoding='utf-8') as f:
          caption = f.read()
      pairs.append((os.path.relpath(os.path.join(root, name), images), caption))
  return sorted(pairs)


def folder_members(images: str, pairs):
  for i, (path, caption) in enumerate(pairs):
    ext = os.path.splitext(path)[1].lower().lstrip('.')
    with open(os.path.join(images, path), 'rb') as f:
      data = f.read()
    yield f'{i:09d}', {_EXT_ALIASES.get(ext, ext): data, 'txt': caption,
                       'json': json.dumps({'key': f'{i:09d}', 'caption': caption,
                                           'source': path})}


def injected_noise(num: int, misaligned: float, duplicates: float, group: int,
                   seed: int) -> tuple:
  """Where samples are corrupted, as web data is -> (image_of [N], caption_of [N], noise
  [N] of 'clean' | 'misaligned' | 'duplicate'): round(duplicates * N) samples are exact
  copies (image and caption) of originals, `group` copies each; round(misaligned * N)
  other samples pass their captions one step around a cycle among themselves."""
  for name, value in (('misaligned', misaligned), ('duplicates', duplicates)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f'--{name} must be in [0, 1), got {value}')
  rng = np.random.default_rng([seed, 0x7D1])
  image_of, caption_of = np.arange(num), np.arange(num)
  noise = np.full(num, 'clean', object)
  copies = round(duplicates * num)
  originals = -(-copies // max(1, group))
  misaligned = round(misaligned * num)
  if misaligned == 1:
    raise ValueError(f'--misaligned {misaligned / num} swaps one caption, with itself: give 0 '
                     'or a share of at least two samples')
  if originals + copies + misaligned > num:
    raise ValueError(f'--duplicates {duplicates} and --misaligned {misaligned / num} leave '
                     f'no room in {num} samples')
  order = rng.permutation(num)
  copy_at, original = order[originals:originals + copies], order[:originals]
  image_of[copy_at] = caption_of[copy_at] = original[np.arange(copies) % max(1, originals)]
  noise[copy_at] = 'duplicate'
  swapped = np.sort(order[originals + copies:originals + copies + misaligned])
  caption_of[swapped] = np.roll(swapped, 1)
  noise[swapped] = 'misaligned'
  return image_of, caption_of, noise


def synthetic_members(num: int, image_size: int, seed: int, image_format: str,
                      digit_fraction: float = 0.0, misaligned: float = 0.0,
                      duplicates: float = 0.0, duplicate_group: int = 4):
  """Shapes samples; with injected noise, each json also says which ('noise', 'copy_of')."""
  from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
  source = shapes.ShapesSource('train', num, image_size, seed, digit_fraction=digit_fraction)
  image_of, caption_of, noise = injected_noise(num, misaligned, duplicates, duplicate_group,
                                               seed)
  for i in range(num):
    record = source[int(image_of[i])]
    caption = record['caption'] if caption_of[i] == image_of[i] else source.caption(caption_of[i])
    buf = io.BytesIO()
    Image.fromarray(record['image']).save(buf, format='JPEG' if image_format == 'jpg'
                                          else image_format.upper(), quality=95)
    meta = {'key': f'{i:09d}', 'caption': caption, 'index': i}
    if misaligned or duplicates:
      meta.update(noise=noise[i], copy_of=int(image_of[i]))
    yield f'{i:09d}', {image_format: buf.getvalue(), 'txt': caption, 'json': json.dumps(meta)}


def write(members, total: int, out: str, shard_size: int, fmt: str, progress=True) -> str:
  """Writes all members; returns the data.train pattern."""
  bar = tqdm(members, total=total, unit='img', desc=f'writing {fmt}', disable=not progress)
  if fmt == 'wds':
    writer = sources.ShardWriter(out, shard_size)
    for key, sample in bar:
      writer.write(key, sample)
    writer.close()
    return writer.pattern()
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  shard, count, paths = None, 0, []
  for key, sample in bar:
    if shard is None or count == shard_size:
      if shard is not None:
        shard.close()
      paths.append(os.path.join(out, f'{len(paths):05d}.array_record'))
      shard, count = array_record_module.ArrayRecordWriter(paths[-1], 'group_size:1'), 0
    shard.write(sources.pack_record({'__key__': key, **sample}))
    count += 1
  if shard is not None:
    shard.close()
  return os.path.join(out, f'{{00000..{len(paths) - 1:05d}}}.array_record')


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--images', help='image folder')
  parser.add_argument('--captions', help='CSV/TSV of image path (relative to --images) '
                      'and caption; default: sidecar .txt files')
  parser.add_argument('--img-key', default='filepath')
  parser.add_argument('--caption-key', default='title')
  parser.add_argument('--synthetic', type=int, help='write N synthetic shapes instead')
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument('--digit-fraction', type=float, default=0.0,
                      help='with --synthetic: share of samples that are drawn digits')
  parser.add_argument('--misaligned', type=float, default=0.0,
                      help='with --synthetic: share of samples given another one\'s caption')
  parser.add_argument('--duplicates', type=float, default=0.0,
                      help='with --synthetic: share of samples that are exact copies of others')
  parser.add_argument('--duplicate-group', type=int, default=4,
                      help='copies made of each duplicated original')
  parser.add_argument('--image-format', default='jpg', choices=['jpg', 'png', 'webp'])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--shard-size', type=int, default=1000)
  parser.add_argument('--format', default='wds', choices=['wds', 'array_record'])
  args = parser.parse_args(argv)
  if bool(args.images) == bool(args.synthetic):
    parser.error('give exactly one of --images or --synthetic')
  if args.synthetic:
    members = synthetic_members(args.synthetic, args.image_size, args.seed, args.image_format,
                                args.digit_fraction, args.misaligned, args.duplicates,
                                args.duplicate_group)
    total = args.synthetic
  else:
    pairs = folder_samples(args.images, args.captions, args.img_key, args.caption_key)
    if not pairs:
      raise FileNotFoundError(f'No images ({", ".join(sources.IMAGE_EXTS)}) in {args.images!r}')
    members, total = folder_members(args.images, pairs), len(pairs)
  pattern = write(members, total, args.out, args.shard_size, args.format)
  # Quoted: unquoted, the shell expands {a..b} into one flag per shard.
  print(shlex.quote(f'--config.data.train={pattern}'), file=sys.stdout)
  return pattern


if __name__ == '__main__':
  main()
