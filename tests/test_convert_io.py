"""Tensor readers: torch archives read without torch match torch's own view of them."""
import json

import ml_dtypes
import numpy as np
import pytest

from clipjax.convert.io import open_checkpoint, write_safetensors

torch = pytest.importorskip('torch')


def test_torch_zip_views_offsets_and_dtypes(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  tensors = {
      'base': base, 'rows': base[1:3], 'transposed': base.t(), 'strided': base[:, ::2],
      'scalar': torch.tensor(2.5), 'half': torch.randn(3, 2).half(),
      'bf16': torch.randn(5).bfloat16(), 'ids': torch.arange(7), 'empty': torch.zeros(0, 3),
  }
  path = str(tmp_path / 'views.pt')
  torch.save(tensors, path)
  with open_checkpoint(path) as reader:
    assert set(reader.keys()) == set(tensors)
    for name, t in tensors.items():
      ours = reader.read(name)
      ref = t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
      assert ours.dtype == ref.dtype and ours.shape == ref.shape, name
      np.testing.assert_array_equal(ours, ref, err_msg=name)


def test_safetensors_round_trip_streams_a_generator(tmp_path):
  arrays = {'w': np.arange(12, dtype=np.float32).reshape(3, 4), 'scale': np.float32(3.0),
            'b': np.ones(5, ml_dtypes.bfloat16), 'ids': np.arange(4, dtype=np.int64)}
  shapes = {k: (np.shape(v), np.asarray(v).dtype) for k, v in arrays.items()}
  path = str(tmp_path / 'x.safetensors')
  write_safetensors(path, ((k, np.asarray(v)) for k, v in arrays.items()), shapes)
  with open_checkpoint(path) as reader:
    for k, v in arrays.items():
      out = reader.read(k)
      assert out.dtype == np.asarray(v).dtype and out.ctypes.data % 64 == 0
      np.testing.assert_array_equal(out, v)
  from safetensors.numpy import load_file  # The reference implementation reads ours too.
  loaded = load_file(path)
  np.testing.assert_array_equal(loaded['w'], arrays['w'])
  assert loaded['scale'].shape == ()


def test_sharded_torch_bin_index(tmp_path):
  """Large PyTorch checkpoints split over files listed in pytorch_model.bin.index.json."""
  parts = {'pytorch_model-00001-of-00002.bin': {'a': torch.ones(2, 3)},
           'pytorch_model-00002-of-00002.bin': {'b': torch.arange(4.0)}}
  weight_map = {}
  for file, tensors in parts.items():
    torch.save(tensors, tmp_path / file)
    weight_map.update({k: file for k in tensors})
  (tmp_path / 'pytorch_model.bin.index.json').write_text(json.dumps(dict(weight_map=weight_map)))
  with open_checkpoint(str(tmp_path)) as reader:
    assert sorted(reader.keys()) == ['a', 'b'] and reader.shapes['a'] == ((2, 3), np.float32)
    np.testing.assert_array_equal(reader.read('b'), np.arange(4.0, dtype=np.float32))


def test_legacy_torch_pickle_reads_through_weights_only(tmp_path):
  path = str(tmp_path / 'old.pt')
  torch.save({'state_dict': {'module.w': torch.arange(6.0).reshape(2, 3)}}, path,
             _use_new_zipfile_serialization=False)
  with open_checkpoint(path) as reader:
    assert list(reader.keys()) == ['w']
    np.testing.assert_array_equal(reader.read('w'), np.arange(6.0, dtype=np.float32).reshape(2, 3))
