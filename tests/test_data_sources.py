"""Real-data readers: shard patterns, decoding and bad data, tar/ArrayRecord/CSV sources,
make_shards, and the loader over them (skip counts, process/worker split, label noise)."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipjax.data import make_shards, pipeline, shapes, sources, transforms
from clipjax.data.tokenizer import Tokenizer


def _encode(image, fmt, **kw):
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kw)
  return buf.getvalue()


def _photo(seed, size=(40, 30)):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- paths

def test_expand_urls_braces_joins_and_globs(tmp_path):
  for name in ('a-000.tar', 'a-001.tar', 'a-002.tar', 'b-x.tar', 'b-y.tar'):
    (tmp_path / name).write_bytes(b'')
  root = str(tmp_path)
  got = sources.expand_urls(f'{root}/a-{{000..002}}.tar::{root}/b-{{x,y}}.tar')
  assert got == [f'{root}/{n}' for n in ('a-000.tar', 'a-001.tar', 'a-002.tar',
                                           'b-x.tar', 'b-y.tar')]
  assert sources.expand_urls(f'{root}/b-*.tar') == [f'{root}/b-x.tar', f'{root}/b-y.tar']
  assert sources.expand_urls(f'file://{root}/a-{{001..002}}.tar') == [
      f'file://{root}/a-001.tar', f'file://{root}/a-002.tar']
  with pytest.raises(FileNotFoundError, match='a-003.tar'):
    sources.expand_urls(f'{root}/a-{{000..003}}.tar')
  with pytest.raises(FileNotFoundError, match='No files match'):
    sources.expand_urls(f'{root}/c-*.tar')
  with pytest.raises(ValueError, match='data.train is empty'):
    sources.expand_urls('')
  with pytest.raises(FileNotFoundError, match='empty shard list'):
    sources.expand_urls(f'{root}/a-{{005..002}}.tar')


# ---------------------------------------------------------------------------- decode

def test_decode_converts_odd_modes():
  photo = _photo(0)
  ref = np.asarray(photo, np.float64)
  for mode, fmt in (('CMYK', 'JPEG'), ('L', 'PNG'), ('P', 'PNG'), ('RGB', 'WEBP')):
    out = sources.decode_image(_encode(photo.convert(mode), fmt))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8, mode
  np.testing.assert_array_equal(sources.decode_image(_encode(photo, 'PNG')), ref)
  # Alpha is composited on white: a fully transparent pixel becomes white.
  rgba = np.dstack([np.asarray(photo), np.full((30, 40), 255, np.uint8)])
  rgba[0, 0, 3], rgba[1, 1, 3] = 0, 128
  out = sources.decode_image(_encode(Image.fromarray(rgba, 'RGBA'), 'PNG'))
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
  np.testing.assert_allclose(out[1, 1], (ref[1, 1] * 128 + 255 * 127) / 255, atol=1)
  np.testing.assert_array_equal(out[2:], ref[2:])
  # 16-bit greyscale is scaled to 8 bits, not clipped.
  deep = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
  out = sources.decode_image(_encode(Image.fromarray(deep), 'PNG'))
  np.testing.assert_allclose(out[..., 0], deep / 65535.0 * 255.0, atol=0.51)


@pytest.mark.parametrize('data,reason', [
    (b'not an image', 'decode_error'),
    (_encode(_photo(1, (64, 64)), 'JPEG')[:400], 'decode_error'),  # truncated
    (_encode(Image.new('RGB', (1, 1)), 'PNG'), 'image_too_small'),
    (_encode(Image.new('L', (9000, 8000)), 'PNG'), 'image_too_large'),
])
def test_decode_rejects_bad_images(data, reason):
  with pytest.raises(sources.BadSample) as e:
    sources.decode_image(data)
  assert e.value.reason == reason


def test_jpeg_draft_decodes_smaller_but_large_enough():
  data = _encode(_photo(2, (640, 480)), 'JPEG', quality=90)
  full = sources.decode_image(data)
  small = sources.decode_image(data, draft_size=100)
  assert full.shape == (480, 640, 3)
  assert small.shape == (120, 160, 3)  # 1/4 scale: smallest DCT scale with sides >= 100


def _pillow_decode(data: bytes, draft_size=None) -> np.ndarray:
  image = Image.open(io.BytesIO(data))
  if draft_size:
    image.draft('RGB', (draft_size, draft_size))
  return np.asarray(image.convert('RGB'))


def test_jpegs_decode_to_pillows_pixels(monkeypatch):
  """JPEGs go through simplejpeg: the same pixels as Pillow's own decode, draft scale
  included, for real photos (sklearn's) and every layout a writer makes."""
  from sklearn.datasets import load_sample_images
  photos = [Image.fromarray(a) for a in load_sample_images().images]
  datas = [_encode(p, 'JPEG', quality=q) for p, q in zip(photos, (95, 75))]
  base = photos[0].resize((333, 501))
  for options in (dict(quality=90), dict(quality=80, subsampling=0),
                  dict(quality=85, subsampling=1), dict(quality=85, progressive=True)):
    datas.append(_encode(base, 'JPEG', **options))
  datas.append(_encode(base.convert('L'), 'JPEG'))
  for data in datas:
    for draft_size in (None, 224, 100, 60):
      out = sources.decode_image(data, draft_size=draft_size, as_array=False)
      assert isinstance(out, np.ndarray)  # not through Pillow
      np.testing.assert_array_equal(out, _pillow_decode(data, draft_size))
  with pytest.raises(sources.BadSample, match='image_too_large'):
    sources.decode_image(datas[0], max_pixels=1000)
  with monkeypatch.context() as patch:  # Pillow's decompression-bomb limit still holds
    patch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    with pytest.raises(sources.BadSample, match='image_too_large'):
      sources.decode_image(datas[0], draft_size=50)
  assert sources.decode_image(datas[0], draft_size=50, max_pixels=100_000).shape[:2] == (54, 80)


def test_decode_text():
  assert sources.decode_text(b'  a red\n circle ') == 'a red circle'
  assert sources.decode_text('caf\u00e9'.encode()) == 'caf\u00e9'
  for data, reason in ((None, 'missing_caption'), (b' \n', 'empty_caption'),
                       (b'\xff\xfe bad', 'bad_utf8')):
    with pytest.raises(sources.BadSample) as e:
      sources.decode_text(data)
    assert e.value.reason == reason


# ------------------------------------------------------------------------ tar shards

def _write_tar(path, samples, truncate_at=None):
  writer = sources.ShardWriter(os.path.dirname(path), shard_size=10 ** 6)
  writer.paths = []
  writer._tar = tarfile.open(path, 'w', format=tarfile.USTAR_FORMAT)  # pylint: disable=protected-access
  for key, members in samples:
    writer.write(key, members)
  writer.close()
  if truncate_at:  # cut the file 100 bytes into this member's data
    with tarfile.open(path) as tar:
      offset = tar.getmember(truncate_at).offset_data
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:offset + 100])


def test_iter_tar_samples_groups_members_and_skips(tmp_path):
  path = str(tmp_path / 'x.tar')
  samples = [(f'dir/k{i}', {'jpg': b'J%d' % i, 'txt': f'cap {i}', 'json': '{}'})
             for i in range(5)]
  _write_tar(path, samples)
  got = list(sources.iter_tar_samples(path))
  assert [g['__key__'] for g in got] == [f'dir/k{i}' for i in range(5)]
  assert got[3]['jpg'] == b'J3' and got[3]['txt'] == b'cap 3'
  assert [g['__key__'] for g in sources.iter_tar_samples(path, skip=3)] == ['dir/k3', 'dir/k4']
  assert list(sources.iter_tar_samples(path, skip=5)) == []


def test_truncated_tar_yields_one_skip_marker(tmp_path):
  path = str(tmp_path / 't.tar')
  big = bytes(range(256)) * 8
  _write_tar(path, [(f'k{i}', {'jpg': big, 'txt': 'c'}) for i in range(4)],
             truncate_at='k3.jpg')
  got = list(sources.iter_tar_samples(path))
  assert [g.get('__key__') for g in got[:3]] == ['k0', 'k1', 'k2']
  assert got[-1] == {sources.SKIP_KEY: 'truncated_tar'} and len(got) == 4


# Corrupted samples the loader must skip and count, by reason.
CORRUPT = {
    'decode_error': [lambda m: m.update(jpg=b'garbage'),
                     lambda m: m.update(jpg=m['jpg'][:200])],
    'empty_caption': [lambda m: m.update(txt='   ')],
    'bad_utf8': [lambda m: m.update(txt=b'\xc3\x28 invalid')],
    'missing_caption': [lambda m: m.pop('txt')],
    'missing_image': [lambda m: m.pop('jpg')],
    'image_too_small': [lambda m: m.update(jpg=_encode(Image.new('RGB', (1, 3)), 'PNG'))],
}
# Converted, not skipped.
ODD_BUT_GOOD = [
    lambda m: m.update(jpg=_encode(_photo(9).convert('CMYK'), 'JPEG')),
    lambda m: m.update(jpg=_encode(_photo(9).convert('RGBA'), 'PNG')),
    lambda m: m.update(jpg=_encode(Image.fromarray(
        (np.arange(1200).reshape(30, 40) * 30).astype(np.uint16)), 'PNG')),
]


@pytest.fixture(scope='module')
def corrupt_shards(tmp_path_factory):
  """4 shards x 12 samples from make_shards (real JPEGs) with corruptions at positions
  1-3 of each shard (position 0 always good), plus a 5th shard truncated in its 3rd
  sample. Returns the pattern, the expected skip counts and the good samples per epoch."""
  root = tmp_path_factory.mktemp('shards')
  pattern = make_shards.main(['--out', str(root), '--synthetic', '48', '--image-size', '40',
                              '--shard-size', '12'])
  edits = [f for fs in CORRUPT.values() for f in fs] + ODD_BUT_GOOD
  slots = [(s, i) for i in (1, 2, 3) for s in range(4)]
  for (shard, pos), edit in zip(slots, edits):
    path = str(root / f'{shard:05d}.tar')
    samples = [(s['__key__'], {k: v for k, v in s.items() if not k.startswith('__')})
               for s in sources.iter_tar_samples(path)]
    edit(samples[pos][1])
    _write_tar(path, samples)
  good = _encode(_photo(3), 'JPEG')
  _write_tar(str(root / '00004.tar'),
             [(f'z{i}', {'jpg': good, 'txt': f'a photo {i}'}) for i in range(3)],
             truncate_at='z2.jpg')
  expected = {k: len(v) for k, v in CORRUPT.items()}
  expected['truncated_tar'] = 1
  good_per_epoch = 48 - sum(len(v) for v in CORRUPT.values()) + 2
  return pattern.replace('00003}', '00004}'), expected, good_per_epoch


def _tokenizer():
  return Tokenizer.train(['a photo', 'a red circle on the left'] * 10, vocab_size=300)


def test_loader_skips_and_counts_exactly_the_corrupted_samples(corrupt_shards):
  pattern, expected, good_per_epoch = corrupt_shards
  source = pipeline.make_source({'format': 'wds', 'train': pattern}, image_size=32)
  assert len(source.shards) == 5
  # Shards read one after another, unshuffled within: one epoch plus the first sample
  # of the next (always good) reads every bad sample of the epoch exactly once.
  loader = pipeline.make_train_loader(
      source, transforms.ImageText(_tokenizer(), 16, 32, augment={}), global_batch_size=4,
      seed=0, cycle_length=1, shuffle_buffer=1)
  assert (good_per_epoch + 1) % 4 == 0
  for _ in range((good_per_epoch + 1) // 4):
    batch = next(loader)
    assert np.isfinite(batch['image']).all() and batch['image'].shape == (4, 32, 32, 3)
  assert loader.metrics() == {'data/skipped': sum(expected.values()),
                              **{f'data/skipped/{k}': v for k, v in sorted(expected.items())}}


@pytest.mark.slow
def test_shards_split_across_processes_and_workers(tmp_path):
  pattern = make_shards.main(['--out', str(tmp_path), '--synthetic', '96', '--image-size',
                              '32', '--shard-size', '12'])
  config = {'format': 'wds', 'train': pattern, 'extra_columns': {'sid': 'json.index:int'}}
  source = pipeline.make_source(config, image_size=32)
  tok = _tokenizer()
  seen = []
  for p in range(2):
    loader = pipeline.make_train_loader(
        source, transforms.ImageText(tok, 16, 32, extra_keys=config['extra_columns']),
        global_batch_size=16, seed=0, process_index=p, process_count=2, worker_count=2,
        cycle_length=2, shuffle_buffer=12)
    batches = [next(loader) for _ in range(6)]  # 48 samples: this process's epoch
    loader.close()
    assert batches[0]['sid'].dtype == np.int64
    seen.append(np.concatenate([b['sid'] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(96))


def test_array_record_and_csv_sources(tmp_path):
  pattern = make_shards.main(['--out', str(tmp_path / 'ar'), '--synthetic', '20',
                              '--image-size', '24', '--shard-size', '8', '--format',
                              'array_record', '--digit-fraction', '0.5'])
  source = pipeline.make_source({'format': 'array_record', 'train': pattern})
  assert len(source) == 20
  rec = source[13]
  assert rec['image'].shape == (24, 24, 3) and rec['index'] == 13
  assert rec['caption'] == json.loads(source.raw(13)['json'])['caption']
  # The shards hold the synthetic source's samples, digits included.
  synthetic = shapes.ShapesSource('train', 20, 24, digit_fraction=0.5)
  assert [source[i]['caption'] for i in range(20)] == synthetic.captions(20)

  folder = tmp_path / 'imgs'
  folder.mkdir()
  rows = ['filepath\ttitle\tsecond']
  for i in range(6):
    _photo(i).save(folder / f'{i}.png')
    rows.append(f'imgs/{i}.png\tphoto number {i}\tother {i}')
  rows.append('imgs/missing.png\tnot there\tx')
  (tmp_path / 'data.tsv').write_text('\n'.join(rows) + '\n')
  csv_source = pipeline.make_source({'format': 'csv', 'train': str(tmp_path / 'data.tsv'),
                                     'extra_columns': {'caption2': 'second'}})
  assert len(csv_source) == 7
  rec = csv_source[4]
  np.testing.assert_array_equal(rec['image'], np.asarray(_photo(4)))
  assert rec['caption'] == 'photo number 4' and rec['caption2'] == 'other 4'
  assert csv_source[6] == {sources.SKIP_KEY: 'missing_file'}
  with pytest.raises(KeyError, match="no column 'url'"):
    pipeline.make_source({'format': 'csv', 'train': str(tmp_path / 'data.tsv'),
                          'csv_img_key': 'url'})
  with pytest.raises(FileNotFoundError, match='nope.csv'):
    pipeline.make_source({'format': 'csv', 'train': str(tmp_path / 'nope.csv')})
  # Second caption is tokenized as text.
  loader = pipeline.make_train_loader(
      csv_source, transforms.ImageText(_tokenizer(), 12, 32, extra_keys=('caption2',)),
      global_batch_size=3, seed=0)
  batch = next(loader)
  assert batch['caption2'].shape == (3, 12) and batch['caption2'].dtype == np.int32


def test_sources_read_fsspec_urls_beyond_local_files(tmp_path):
  """Shards and CSV rows behind a non-local fsspec URL (`memory://`, in-process, as
  `gs://` or `s3://` would be with their fsspec package) read as the local copies do."""
  import fsspec  # pylint: disable=g-import-not-at-top
  pattern = make_shards.main(['--out', str(tmp_path / 'wds'), '--synthetic', '20',
                              '--image-size', '24', '--shard-size', '8'])
  local = sources.expand_urls(pattern)
  memory = fsspec.filesystem('memory')
  for url in local:
    memory.pipe(f'/bucket/{os.path.basename(url)}', Path(url).read_bytes())
  remote = sources.TarShardSource('memory://bucket/*.tar')
  assert [u.startswith('memory://') for u in remote.shards] == [True] * len(local)
  assert [os.path.basename(u) for u in remote.shards] == [os.path.basename(u) for u in local]
  assert remote.captions(20) == sources.TarShardSource(pattern).captions(20)
  loaders = [pipeline.make_train_loader(pipeline.make_source({'format': 'wds', 'train': spec}),
                                        transforms.ImageText(_tokenizer(), 12, 24),
                                        global_batch_size=4, seed=0)
             for spec in (pattern, 'memory://bucket/*.tar')]
  first = [next(loader) for loader in loaders]
  for name in first[0]:
    np.testing.assert_array_equal(first[1][name], first[0][name], err_msg=name)
  with pytest.raises(FileNotFoundError, match='memory://bucket/missing'):
    sources.TarShardSource('memory://bucket/missing-{000..001}.tar')

  memory.pipe('/bucket/imgs/0.png', _encode(_photo(0), 'PNG'))
  memory.pipe('/bucket/data.tsv', b'filepath\ttitle\nimgs/0.png\ta photo\n')
  csv_source = pipeline.make_source({'format': 'csv', 'train': 'memory://bucket/data.tsv'})
  rec = csv_source[0]
  assert rec['caption'] == 'a photo'
  np.testing.assert_array_equal(rec['image'], np.asarray(_photo(0)))


def test_make_shards_from_image_folder(tmp_path):
  images = tmp_path / 'photos'
  (images / 'sub').mkdir(parents=True)
  _photo(0).save(images / 'a.jpg')
  _photo(1).save(images / 'sub' / 'b.png')
  (images / 'a.txt').write_text('first photo')
  (images / 'sub' / 'b.txt').write_text('second photo')
  pattern = make_shards.main(['--out', str(tmp_path / 'out'), '--images', str(images)])
  got = [s for url in sources.expand_urls(pattern) for s in sources.iter_tar_samples(url)]
  assert [g['txt'] for g in got] == [b'first photo', b'second photo']
  assert got[0]['jpg'] == (images / 'a.jpg').read_bytes()  # original bytes kept
  assert json.loads(got[1]['json'])['source'] == 'sub/b.png' and 'png' in got[1]
  (tmp_path / 'caps.csv').write_text('filepath,title\nsub/b.png,from csv\n')
  pattern = make_shards.main(['--out', str(tmp_path / 'out2'), '--images', str(images),
                              '--captions', str(tmp_path / 'caps.csv')])
  got = list(sources.iter_tar_samples(sources.expand_urls(pattern)[0]))
  assert [g['txt'] for g in got] == [b'from csv']
  with pytest.raises(FileNotFoundError, match='nowhere'):
    make_shards.main(['--out', str(tmp_path / 'o3'), '--images', str(tmp_path / 'nowhere')])


def test_missing_paths_stop_with_clear_errors(tmp_path):
  (tmp_path / '00000.tar').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match='00001.tar'):
    pipeline.make_source({'format': 'wds', 'train': f'{tmp_path}/{{00000..00001}}.tar'})
  with pytest.raises(ValueError, match='data.train is empty'):
    pipeline.make_source({'format': 'wds', 'train': ''})


def test_extra_columns_from_shards(tmp_path):
  path = str(tmp_path / '00000.tar')
  samples = []
  for i in range(4):
    emb = io.BytesIO()
    np.save(emb, np.full((3,), i, np.float32))
    samples.append((f'k{i}', {'jpg': _encode(_photo(i), 'JPEG'), 'txt': f'a photo {i}',
                              'caption2.txt': f'another view {i}', 'emb.npy': emb.getvalue(),
                              'json': json.dumps({'uid': 100 + i})}))
  _write_tar(path, samples)
  extra = {'caption2': 'caption2.txt', 'text_emb': 'emb.npy', 'sid': 'json.uid:int'}
  source = pipeline.make_source({'format': 'wds', 'train': path, 'extra_columns': extra})
  tok = _tokenizer()
  loader = pipeline.make_train_loader(
      source, transforms.ImageText(tok, 10, 16, extra_keys=extra), global_batch_size=4, seed=0,
      shuffle_buffer=4)
  batch = next(loader)
  order = batch['sid'] - 100
  assert sorted(order) == [0, 1, 2, 3] and batch['sid'].dtype == np.int64
  np.testing.assert_array_equal(batch['text_emb'], np.repeat(order[:, None], 3, 1))
  np.testing.assert_array_equal(batch['caption2'],
                                tok([f'another view {i}' for i in order], 10))


# ----------------------------------------------------------------------- label noise

def test_label_noise_swaps_a_fixed_fraction_of_captions():
  from clipjax.data import shapes  # pylint: disable=g-import-not-at-top
  base = shapes.ShapesSource('train', 200, 16, seed=0)
  noisy = pipeline.NoisyCaptions(base, 0.25, seed=1)
  changed = [i for i in range(200) if noisy[i]['caption'] != base[i]['caption']]
  assert len(noisy.noisy) == 50
  assert set(changed) <= set(noisy.noisy.tolist()) and len(changed) >= 45
  # A permutation among the chosen samples: the same multiset of captions.
  assert sorted(noisy[i]['caption'] for i in noisy.noisy) == sorted(
      base[i]['caption'] for i in noisy.noisy)
  np.testing.assert_array_equal(noisy[5]['image'], base[5]['image'])
  again = pipeline.NoisyCaptions(base, 0.25, seed=1)
  np.testing.assert_array_equal(again.partner, noisy.partner)


def test_label_noise_in_shard_windows(tmp_path):
  pattern = make_shards.main(['--out', str(tmp_path), '--synthetic', '40', '--image-size',
                              '16', '--shard-size', '20'])
  source = pipeline.make_source({'format': 'wds', 'train': pattern})
  stream = pipeline._shard_stream(source, 0, 0, 1, 20, 1, 0.5)  # pylint: disable=protected-access
  it = iter(stream)
  raws = [next(it) for _ in range(40)]
  swapped = sum(json.loads(r['json'])['caption'] != r['txt'].decode() for r in raws)
  assert 16 <= swapped <= 20  # 10 chosen per window of 20; a swap can land on an equal caption


# ------------------------------------------------------------------------------ TFDS

def test_tfds_source_reads_prepared_array_record_dataset(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')

  class ClipjaxTinyColours(tfds.core.GeneratorBasedBuilder):
    """Six flat images; tfds.features.Tensor so that preparing needs no TensorFlow."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
          'label': tfds.features.ClassLabel(names=['dark', 'light'])}))

    def _split_generators(self, dl_manager):
      return {'test': self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {'image': np.full((8, 8, 3), 40 * i, np.uint8), 'label': int(i >= 3)}

  ClipjaxTinyColours(data_dir=str(tmp_path), file_format='array_record').download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))
  source = sources.TfdsSource('clipjax_tiny_colours', split='test', data_dir=str(tmp_path))
  assert len(source) == 6 and source.classnames == ['dark', 'light']
  values = sorted((int(source[i]['image'][0, 0, 0]), int(source[i]['label'])) for i in range(6))
  assert values == [(40 * i, int(i >= 3)) for i in range(6)]
  assert source[0]['image'].dtype == np.uint8 and source[0]['image'].shape == (8, 8, 3)
  with pytest.raises(KeyError, match="no split 'train'"):
    sources.TfdsSource('clipjax_tiny_colours', split='train', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    sources.TfdsSource('clipjax_tiny_colours', split='test', data_dir=str(tmp_path / 'no'))


# ---------------------------------------------------------------- training end to end

@pytest.mark.slow
def test_training_on_shards_logs_exactly_the_corrupted_samples(corrupt_shards, tmp_path):
  """`python -m clipjax.main` on make_shards output with corrupted samples completes and
  metrics.jsonl counts each corrupted sample once, by reason."""
  pattern, expected, good_per_epoch = corrupt_shards
  root = Path(__file__).resolve().parents[1]
  steps = (good_per_epoch + 1) // 4  # one epoch plus one (always good) sample, as above
  cmd = [sys.executable, '-m', 'clipjax.main', '--config', str(root / 'configs/quickstart.py'),
         '--workdir', str(tmp_path / 'run'), '--config.data.format=wds',
         f'--config.data.train={pattern}', '--config.data.cycle_length=1',
         '--config.data.shuffle_buffer=1', '--config.batch_size=4',
         f'--config.total_steps={steps}', '--config.log_every=1', '--config.eval_every=0',
         '--config.checkpoint_every=1000', '--config.tokenizer.train_captions=50']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root,
                        env={**os.environ, 'PYTHONPATH': str(root), 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  last = lines[-1]
  assert last['step'] == steps and np.isfinite(last['loss'])
  assert last['data/skipped'] == sum(expected.values())
  assert {k: last[f'data/skipped/{k}'] for k in expected} == expected
