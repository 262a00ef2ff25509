"""Read the FID Inception-v3 weights from a file the user supplies, without torch or TensorFlow.

No package ships these weights and this machine cannot download them, so the evaluation asks
for a path. Two formats are read, each converted to the variables of
``diffusion_jax.nets.inception.InceptionV3`` (``{'params': ...}``):

- pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: a ``torch.save`` of the state dict, in
  the zip layout of torch >= 1.6 (``<name>/data.pkl`` + ``<name>/data/<key>`` raw storages) or
  the older single-stream layout (magic number, protocol, system info, the pickle, the storage
  keys, then each storage as an int64 element count followed by its bytes). The pickle is read
  by an unpickler that knows only the globals a state dict uses (``collections.OrderedDict``,
  ``torch._utils._rebuild_tensor_v2``, the ``torch.*Storage`` types), mapped onto NumPy; any
  other global is refused, so a checkpoint cannot run code. Layouts: conv OIHW -> HWIO, fc
  (out, in) -> (in, out); BN weight / bias / running_mean / running_var -> scale / bias / mean /
  var.
- the numpy pickle of the JAX FID ports (matthias-wright/jax-fid's and fidjax's
  ``inception_v3_weights_fid.pickle``): nested dicts already in the linen layout,
  ``{'Mixed_5b': {'branch1x1': {'conv': {'kernel'}, 'bn': {'scale', 'bias', 'mean', 'var'}}},
  ..., 'fc': {'kernel', 'bias'}}``, read with an unpickler that allows NumPy's array globals only.

Every leaf is checked against the network's own shapes (``inception.param_shapes``): a missing or
unexpected key, or a shape that differs, is a ValueError naming the file, the key and the shapes.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from diffusion_jax.nets import inception

# torch.save's legacy stream starts with this integer, then the protocol (torch/serialization.py).
TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001

FORMATS = ("a torch.save state dict (pytorch-fid's pt_inception-2015-12-05-6726825d.pth; zip or "
           "legacy layout)", "a pickle of nested dicts of NumPy arrays (the JAX FID ports' "
           "inception_v3_weights_fid.pickle)")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# torch state-dict leaf names -> (linen leaf name, layout change).
_TORCH_LEAVES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "conv.weight": ("conv/kernel", lambda w: np.transpose(w, (2, 3, 1, 0))),  # OIHW -> HWIO
    "bn.weight": ("bn/scale", lambda w: w),
    "bn.bias": ("bn/bias", lambda w: w),
    "bn.running_mean": ("bn/mean", lambda w: w),
    "bn.running_var": ("bn/var", lambda w: w),
    "fc.weight": ("fc/kernel", lambda w: np.transpose(w)),  # (out, in) -> (in, out)
    "fc.bias": ("fc/bias", lambda w: w),
}


class _Storage:
  """A torch storage seen from the pickle: its dtype and element count; data filled in later."""

  def __init__(self, dtype: Any, numel: int, key: str):
    self.dtype, self.numel, self.key = dtype, numel, key
    self.data: np.ndarray | None = None


class _LazyTensor:
  """``_rebuild_tensor_v2(storage, offset, size, stride, ...)``, materialised once data is read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def materialise(self, source: str) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise ValueError(f"{source}: storage {self.storage.key!r} has no data in the file.")
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.size:
      raise ValueError(f"{source}: a tensor of size {self.size}, stride {self.stride} at offset "
                       f"{self.offset} overruns its storage of {data.size} elements.")
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.size, tuple(s * data.itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
  del requires_grad, hooks, rest
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("_rebuild_tensor_v2 got no storage.")
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
  return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
  del requires_grad, hooks, rest
  return data


class _StorageType:
  """Stands for ``torch.FloatStorage`` etc. inside the pickle."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _TorchUnpickler(pickle.Unpickler):
  """Knows the globals of a state dict, maps tensors onto NumPy, refuses every other global."""

  _GLOBALS = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file, storage: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module: str, name: str):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    raise pickle.UnpicklingError(f"global {module}.{name} is not part of a state dict of tensors")

  def persistent_load(self, saved_id):
    if not (isinstance(saved_id, tuple) and saved_id and _ascii(saved_id[0]) == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r}")
    return self._storage(saved_id[1:])


class _NumpyUnpickler(pickle.Unpickler):
  """Nested dicts and lists of NumPy arrays and scalars; no other global.

  NumPy 1 wrote its array globals under ``numpy.core``, NumPy 2 under ``numpy._core``; both are
  read with the installed NumPy's own module.
  """

  _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
              ("_codecs", "encode"),  # how protocol 2 spells the bytes of an array
              ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}

  def find_class(self, module: str, name: str):
    core = module.split(".")
    if len(core) == 3 and core[0] == "numpy" and core[1] in ("core", "_core"):
      key = (core[2], name)
      numpy2 = int(np.__version__.split(".")[0]) >= 2
      module = ("numpy._core." if numpy2 else "numpy.core.") + core[2]
    else:
      key = (module, name)
    if key not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"global {module}.{name} is not part of a pickle of NumPy arrays")
    return super().find_class(module, name)


def _ascii(value) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_dtype(storage_type, source: str):
  if not isinstance(storage_type, _StorageType):
    raise ValueError(f"{source}: storage of unknown type {storage_type!r}.")
  return storage_type.dtype


def _from_bytes(raw: bytes, dtype, numel: int, source: str, key: str, big_endian: bool = False):
  if dtype == "bfloat16":  # the upper half of a float32
    bits = np.frombuffer(raw, ">u2" if big_endian else "<u2", count=numel).astype(np.uint32)
    return (bits << 16).view(np.float32)
  dt = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
  if len(raw) < numel * dt.itemsize:
    raise ValueError(f"{source}: storage {key!r} holds {len(raw)} bytes, {numel} elements of "
                     f"{np.dtype(dtype).name} need {numel * dt.itemsize}.")
  return np.frombuffer(raw, dt, count=numel).astype(np.dtype(dtype))


def _materialise(tree, source: str):
  if isinstance(tree, _LazyTensor):
    return tree.materialise(source)
  if isinstance(tree, dict):
    return {k: _materialise(v, source) for k, v in tree.items()}
  return tree


def _read_torch_zip(path: str) -> dict[str, Any]:
  """torch >= 1.6: ``<archive>/data.pkl``; persistent ids ('storage', type, key, device, numel)."""
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a torch zip checkpoint has one <archive>/data.pkl; found "
                       f"{pickles or 'none'} among {names[:5]}.")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = (zf.read(prefix + "byteorder").decode().strip()
                 if prefix + "byteorder" in names else "little")
    storages: dict[str, _Storage] = {}

    def storage(args: tuple) -> _Storage:
      storage_type, key, _, numel = args[:4]
      key = _ascii(key)
      if key not in storages:
        dtype = _storage_dtype(storage_type, path)
        entry = f"{prefix}data/{key}"
        if entry not in names:
          raise ValueError(f"{path}: the pickle names storage {key!r}, but {entry} is missing.")
        record = _Storage(dtype, int(numel), key)
        record.data = _from_bytes(zf.read(entry), dtype, int(numel), path, key,
                                  big_endian=byteorder == "big")
        storages[key] = record
      return storages[key]

    result = _TorchUnpickler(io.BytesIO(zf.read(pickles[0])), storage).load()
  return _materialise(result, path)


def _read_torch_legacy(file, path: str) -> dict[str, Any]:
  """torch < 1.6 (or ``_use_new_zipfile_serialization=False``): a stream of pickles, then data."""
  protocol = pickle.Unpickler(file).load()
  if protocol != TORCH_PROTOCOL_VERSION:
    raise ValueError(f"{path}: torch legacy protocol version {protocol!r}, expected "
                     f"{TORCH_PROTOCOL_VERSION}.")
  _NumpyUnpickler(file).load()  # system info: a dict of plain values
  storages: dict[str, _Storage] = {}
  views: list[tuple[_Storage, _Storage, int]] = []

  def storage(args: tuple) -> _Storage:
    storage_type, root_key, _, numel, view = args[:5]
    root_key = _ascii(root_key)
    if root_key not in storages:
      storages[root_key] = _Storage(_storage_dtype(storage_type, path), int(numel), root_key)
    root = storages[root_key]
    if view is None:
      return root
    view_key, offset, size = view
    record = _Storage(root.dtype, int(size), _ascii(view_key))
    views.append((record, root, int(offset)))
    return record

  result = _TorchUnpickler(file, storage).load()
  keys = [_ascii(k) for k in pickle.Unpickler(file).load()]
  for key in keys:
    if key not in storages:
      raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it.")
    record = storages[key]
    header = file.read(8)
    if len(header) < 8:
      raise ValueError(f"{path}: the file ends before the data of storage {key!r}.")
    (numel,) = struct.unpack("<q", header)
    itemsize = 2 if record.dtype == "bfloat16" else np.dtype(record.dtype).itemsize
    record.data = _from_bytes(file.read(numel * itemsize), record.dtype, numel, path, key)
  for record, root, offset in views:
    if root.data is not None:
      record.data = root.data[offset:offset + record.numel]
  return _materialise(result, path)


def _torch_to_linen(state: dict[str, Any], path: str) -> dict[str, Any]:
  """Dotted torch names (``Mixed_5b.branch1x1.conv.weight``) -> nested linen params."""
  if not isinstance(state, dict):
    raise ValueError(f"{path}: the torch checkpoint holds a {type(state).__name__}, expected a "
                     f"state dict (name -> tensor).")
  params: dict[str, Any] = {}
  for name, value in state.items():
    if not isinstance(name, str):
      raise ValueError(f"{path}: state-dict key {name!r} is not a string.")
    if _ignored(name):
      continue
    for suffix, (leaf, layout) in _TORCH_LEAVES.items():
      if name == suffix or name.endswith("." + suffix):
        module = name[:-len(suffix)].rstrip(".")
        break
    else:
      raise ValueError(f"{path}: unexpected key {name!r} in the torch state dict (expected "
                       f"'<block>.<branch>.conv.weight', '...bn.running_mean', 'fc.weight', ...).")
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: state-dict entry {name!r} is a {type(value).__name__}, not a "
                       f"tensor.")
    node = params
    for part in [p for p in module.split(".") if p] + leaf.split("/")[:-1]:
      node = node.setdefault(part, {})
    node[leaf.split("/")[-1]] = layout(value)
  return params


def _check_against_network(params: dict[str, Any], path: str, fmt: str) -> dict[str, Any]:
  """Same keys and shapes as ``InceptionV3``'s params, as float32; else ValueError on the first."""
  expected = _expected_shapes()
  if not isinstance(params, dict):
    raise ValueError(f"{path}: {fmt} holds a {type(params).__name__}, expected a dict of weights.")
  found = {k: v for k, v in _flatten(params) if not _ignored(k)}
  for key, spec in expected.items():
    if key not in found:
      raise ValueError(f"{path}: {fmt} has no weight {key!r} (shape {spec.shape}) that "
                       f"InceptionV3 needs; found {len(found)} weights, e.g. {sorted(found)[:3]}.")
    value = found[key]
    if not isinstance(value, np.ndarray) or value.shape != spec.shape:
      shape = getattr(value, "shape", type(value).__name__)
      raise ValueError(f"{path}: {fmt}: weight {key!r} has shape {shape}, InceptionV3 expects "
                       f"{spec.shape}.")
  extra = sorted(k for k in found if k not in expected)
  if extra:
    raise ValueError(f"{path}: {fmt} has weight {extra[0]!r} that InceptionV3 does not have "
                     f"({len(extra)} unexpected in all).")
  tree: dict[str, Any] = {}
  for key in expected:
    node = tree
    *parents, leaf = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(found[key], np.float32)
  return {"params": tree}


def _expected_shapes() -> dict[str, Any]:
  return dict(_flatten(inception.param_shapes()["params"]))


def _ignored(key: str) -> bool:
  """Entries a FID checkpoint may carry that the network does not use (BN step counts, aux head)."""
  return key.endswith("num_batches_tracked") or key.startswith("AuxLogits")


def _flatten(tree, prefix: str = ""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f"{prefix}{k}/")
  else:
    yield prefix[:-1], tree


def load(path: str | os.PathLike) -> dict[str, Any]:
  """``{'params': ...}`` of ``InceptionV3`` from pytorch-fid's .pth or the JAX FID ports' pickle.

  The format is detected from the file's first bytes (zip; pickle whose first object is torch's
  magic number; pickle of a dict). Returns float32 NumPy leaves, checked key by key and shape by
  shape against the network; raises FileNotFoundError for a missing path and ValueError for a
  file in neither format or with mismatching weights.
  """
  path = os.fspath(path)
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"Inception weights file {path!r} does not exist; expected one of: "
                            f"{'; '.join(FORMATS)}.")
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(b"PK\x03\x04"):
    try:
      state = _read_torch_zip(path)
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError) as e:
      raise ValueError(f"{path}: not a readable torch zip checkpoint ({e}).") from e
    return _check_against_network(_torch_to_linen(state, path), path, "the torch state dict")
  if not head.startswith(b"\x80"):
    raise ValueError(f"{path}: neither a zip nor a pickle (first bytes {head!r}); expected one of: "
                     f"{'; '.join(FORMATS)}.")
  with open(path, "rb") as f:
    try:
      first = _NumpyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
      raise ValueError(f"{path}: a pickle that is neither format ({e}); expected one of: "
                       f"{'; '.join(FORMATS)}.") from e
    if isinstance(first, int) and first == TORCH_MAGIC_NUMBER:
      try:
        state = _read_torch_legacy(f, path)
      except (pickle.UnpicklingError, EOFError, struct.error) as e:
        raise ValueError(f"{path}: not a readable legacy torch checkpoint ({e}).") from e
      return _check_against_network(_torch_to_linen(state, path), path, "the torch state dict")
  if isinstance(first, dict):
    return _check_against_network(first, path, "the numpy pickle")
  raise ValueError(f"{path}: a pickle of a {type(first).__name__}; expected one of: "
                   f"{'; '.join(FORMATS)}.")
