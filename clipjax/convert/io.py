"""Read checkpoint tensors one at a time, without running code from the file.

Checkpoints are untrusted input. Safetensors files are parsed directly (no torch, no mmap:
each tensor is read into its own buffer so host memory holds one source tensor at a time).
PyTorch zip archives (`torch.save` since 1.6 and TorchScript `.pt` files such as OpenAI's)
are unpickled with a whitelist that only rebuilds tensors, dicts and module attribute trees;
any other global (a pickle that would run code) is refused with an error naming the file.
Only legacy (pre-zip) torch pickles need torch, loaded with `weights_only=True`.
"""
import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Dict, Iterable, Tuple

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the target model."""


class UnsafeCheckpointError(CheckpointError):
  """A pickle that references code outside the tensor whitelist."""


SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_, 'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
}
SAFETENSORS_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}

TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


def aligned_empty(shape, dtype, alignment=64):
  """A 64-byte aligned buffer: XLA's CPU client then adopts it without a copy."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + nbytes].view(dtype).reshape(shape)


class Reader:
  """Lazy name -> tensor view of a checkpoint: `shapes` is known up front, `read` loads one."""

  path: str
  shapes: Dict[str, Tuple[Tuple[int, ...], np.dtype]]

  def read(self, name: str) -> np.ndarray:
    raise NotImplementedError

  def keys(self):
    return self.shapes.keys()

  def __contains__(self, name):
    return name in self.shapes

  def close(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class SafetensorsReader(Reader):
  """One or more `.safetensors` files (sharded checkpoints list them in an index)."""

  def __init__(self, paths):
    self.path = paths[0] if len(paths) == 1 else os.path.dirname(paths[0])
    self.shapes, self._where = {}, {}
    for path in paths:
      with open(path, 'rb') as f:
        (size,) = struct.unpack('<Q', f.read(8))
        try:
          header = json.loads(f.read(size))
        except ValueError as e:
          raise CheckpointError(f'{path}: bad safetensors header ({e})') from None
      for name, info in header.items():
        if name == '__metadata__':
          continue
        if info['dtype'] not in SAFETENSORS_DTYPES:
          raise CheckpointError(f'{path}: tensor {name!r} has unsupported dtype {info["dtype"]}')
        dtype = np.dtype(SAFETENSORS_DTYPES[info['dtype']])
        begin, end = info['data_offsets']
        shape = tuple(info['shape'])
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
          raise CheckpointError(f'{path}: tensor {name!r} byte range does not match shape {shape}')
        self.shapes[name] = (shape, dtype)
        self._where[name] = (path, 8 + size + begin)

  def read(self, name):
    shape, dtype = self.shapes[name]
    path, offset = self._where[name]
    out = aligned_empty(shape, dtype)
    with open(path, 'rb') as f:
      f.seek(offset)
      if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
        raise CheckpointError(f'{path}: tensor {name!r} is truncated')
    return out


def write_safetensors(path: str, tensors: Iterable[Tuple[str, np.ndarray]], shapes=None,
                      metadata=None):
  """Writes named arrays; with `shapes` ({name: (shape, dtype)}) `tensors` may be a generator,
  so only one tensor is materialised at a time."""
  if shapes is None:
    tensors = list(tensors)
    shapes = {n: (a.shape, a.dtype) for n, a in tensors}
  header, offset = {}, 0
  for name, (shape, dtype) in shapes.items():
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    header[name] = dict(dtype=SAFETENSORS_NAMES[np.dtype(dtype)], shape=list(shape),
                        data_offsets=[offset, offset + nbytes])
    offset += nbytes
  if metadata:
    header['__metadata__'] = metadata
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for name, array in tensors:
      array = np.asarray(array, order='C')
      if (tuple(array.shape), array.dtype) != (tuple(shapes[name][0]), np.dtype(shapes[name][1])):
        raise CheckpointError(f'{path}: tensor {name!r} is {array.shape} {array.dtype}, '
                              f'header says {shapes[name]}')
      f.write(array.reshape(-1).view(np.uint8).data)


class _Storage(collections.namedtuple('_Storage', 'key dtype numel')):
  pass


class _LazyTensor(collections.namedtuple('_LazyTensor', 'storage offset shape stride')):
  pass


class _ScriptObject:
  """Stand-in for a TorchScript module class: keeps its attributes, runs nothing."""


def _rebuild_tensor(storage, offset, shape, stride, *unused):
  return _LazyTensor(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data, *unused):
  return data


def _identity(x, *unused):
  return x


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds tensors (lazily), dicts and module trees; refuses every other global."""
  SAFE = {
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch.jit._pickle', 'restore_type_tag'): _identity,
      ('torch.jit._pickle', 'build_intlist'): list,
      ('torch.jit._pickle', 'build_doublelist'): list,
      ('torch.jit._pickle', 'build_boollist'): list,
      ('torch.jit._pickle', 'build_tensorlist'): list,
  }

  def __init__(self, file, path):
    super().__init__(file)
    self.path = path

  def find_class(self, module, name):
    if (module, name) in self.SAFE:
      return self.SAFE[module, name]
    if module == 'torch' and name in TORCH_STORAGES:
      return np.dtype(TORCH_STORAGES[name])
    if module == '__torch__' or module.startswith('__torch__.'):
      return type(name, (_ScriptObject,), {})
    raise UnsafeCheckpointError(
        f'{self.path}: refusing to unpickle {module}.{name}; the checkpoint references code, '
        'not only tensors (it may be malicious; convert it from a trusted source)')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
      raise UnsafeCheckpointError(f'{self.path}: unexpected persistent id {pid!r}')
    _, dtype, key, _, numel = pid
    if not isinstance(dtype, np.dtype):
      raise UnsafeCheckpointError(f'{self.path}: unexpected storage type {dtype!r}')
    return _Storage(str(key), dtype, int(numel))


def _flatten_tensors(obj, prefix='', out=None):
  """{dotted name: tensor} from a state dict or a TorchScript module attribute tree."""
  out = {} if out is None else out
  items = obj.__dict__.items() if isinstance(obj, _ScriptObject) else obj.items()
  for key, value in items:
    name = f'{prefix}{key}'
    if isinstance(value, _LazyTensor):
      out[name] = value
    elif isinstance(value, (_ScriptObject, dict)):
      _flatten_tensors(value, name + '.', out)
  return out


def _unwrap_state_dict(obj):
  """Training checkpoints nest the weights (`{'state_dict': ...}`, DDP's `module.` prefix)."""
  if isinstance(obj, dict):
    for key in ('state_dict', 'model', 'module'):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  tensors = _flatten_tensors(obj)
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  return tensors


class TorchZipReader(Reader):
  """`torch.save` zip archives and TorchScript archives, read without torch."""

  def __init__(self, path):
    self.path = path
    self._zip = zipfile.ZipFile(path)
    names = self._zip.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
    if not pkl:
      raise CheckpointError(f'{path}: zip file without a data.pkl; not a PyTorch checkpoint')
    self._prefix = pkl[0][:-len('data.pkl')]
    byteorder = self._prefix + 'byteorder'
    if byteorder in names and self._zip.read(byteorder).strip() != b'little':
      raise CheckpointError(f'{path}: big-endian checkpoints are not supported')
    with self._zip.open(pkl[0]) as f:
      try:
        obj = _RestrictedUnpickler(f, path).load()
      except UnsafeCheckpointError:
        raise
      except Exception as e:  # Malformed pickle data: name the file.
        raise CheckpointError(f'{path}: cannot unpickle {pkl[0]}: {e}') from None
    self._tensors = _unwrap_state_dict(obj)
    self.shapes = {n: (t.shape, t.storage.dtype) for n, t in self._tensors.items()}

  def read(self, name):
    t = self._tensors[name]
    dtype = t.storage.dtype
    data = aligned_empty((t.storage.numel,), dtype)
    with self._zip.open(f'{self._prefix}data/{t.storage.key}') as f:
      if f.readinto(data.view(np.uint8)) != data.nbytes:
        raise CheckpointError(f'{self.path}: storage of tensor {name!r} is truncated')
    numel = int(np.prod(t.shape))
    contiguous = tuple(int(np.prod(t.shape[i + 1:])) for i in range(len(t.shape)))
    if t.offset == 0 and numel == data.size and (numel <= 1 or t.stride == contiguous):
      return data.reshape(t.shape)  # The usual case: the tensor owns its whole storage.
    if t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride) if n) >= data.size:
      raise CheckpointError(f'{self.path}: tensor {name!r} reaches past its storage')
    strides = tuple(s * dtype.itemsize for s in t.stride)
    return np.array(np.lib.stride_tricks.as_strided(data[t.offset:], t.shape, strides))

  def close(self):
    self._zip.close()


class DictReader(Reader):
  """In-memory tensors (legacy torch pickles, tests)."""

  def __init__(self, tensors: Dict[str, np.ndarray], path='<memory>'):
    self.path, self._tensors = path, tensors
    self.shapes = {n: (tuple(a.shape), np.dtype(a.dtype)) for n, a in tensors.items()}

  def read(self, name):
    return np.asarray(self._tensors[name])


def _legacy_torch_reader(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CheckpointError(f'{path}: legacy (non-zip) PyTorch pickle; install torch to read it '
                          '(pip install clipjax[torch])') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise UnsafeCheckpointError(f'{path}: refused by torch weights_only loading: {e}') from None
  if isinstance(obj, dict):
    for key in ('state_dict', 'model', 'module'):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  tensors = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      v = v.float() if v.dtype == torch.bfloat16 else v
      tensors[k[len('module.'):] if k.startswith('module.') else k] = v.numpy()
  return DictReader(tensors, path)


WEIGHT_FILES = ('model.safetensors.index.json', 'model.safetensors', 'pytorch_model.bin.index.json',
                'pytorch_model.bin', 'open_clip_model.safetensors', 'open_clip_pytorch_model.bin')


def find_weights(folder: str) -> str:
  for name in WEIGHT_FILES:
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise CheckpointError(f'{folder}: no weights found (looked for {", ".join(WEIGHT_FILES)})')


def open_checkpoint(path: str) -> Reader:
  """A lazy `Reader` for a weights file, a sharded index `.json`, or a model folder."""
  if os.path.isdir(path):
    path = find_weights(path)
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such checkpoint')
  if path.endswith('.index.json'):
    with open(path) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
    paths = [os.path.join(os.path.dirname(path), p) for p in files]
    if path.endswith('.safetensors.index.json'):
      return SafetensorsReader(paths)
    readers = [open_checkpoint(p) for p in paths]
    return _ChainReader(readers, path)
  if path.endswith('.safetensors'):
    return SafetensorsReader([path])
  if zipfile.is_zipfile(path):
    return TorchZipReader(path)
  with open(path, 'rb') as f:
    magic = f.read(2)
  if magic[:1] == b'\x80':  # Pickle protocol >= 2: legacy torch.save format.
    return _legacy_torch_reader(path)
  return SafetensorsReader([path])


class _ChainReader(Reader):
  """Sharded `.bin` checkpoints: several readers seen as one."""

  def __init__(self, readers, path):
    self.path, self._readers = path, readers
    self._owner = {n: r for r in readers for n in r.keys()}
    self.shapes = {n: r.shapes[n] for n, r in self._owner.items()}

  def read(self, name):
    return self._owner[name].read(name)

  def close(self):
    for r in self._readers:
      r.close()

