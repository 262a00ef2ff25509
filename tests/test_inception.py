"""The FID Inception-v3 and its weight files, with random weights this test writes itself.

No weights can be downloaded here, so the test writes random weights in the formats users bring
(pytorch-fid's torch.save state dict, zip and legacy layouts, written without torch; the JAX FID
ports' numpy pickle), loads them, and checks the tree against the arrays it wrote. The resize is
checked against PIL, the pools against slow loops, the network's size against torchvision's.
"""

import collections
import io
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax.nets import inception
from diffusion_jax.nets.inception import InceptionFeatures, InceptionV3
from experiments.evaluate import inception_weights

# ---------------------------------------------------------------------------------------------
# Random weights in torch's naming and layout, and writers of the three file formats.


def _torch_name(key: str) -> str:
  """'Mixed_5b/branch1x1/conv/kernel' -> 'Mixed_5b.branch1x1.conv.weight' (torchvision's names)."""
  *module, leaf = key.split("/")
  rename = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}
  return ".".join(module + [rename[leaf]])


def _random_state_dict(seed: int = 0) -> collections.OrderedDict:
  """A torch-layout state dict (OIHW convs, (out, in) fc) with activations of order one.

  Kernels N(0, 2 / fan_in) (He et al. 2015) keep ReLU activations O(1) through the 94 layers, so
  features are neither tiny nor huge and the parity numbers mean something.
  """
  rng = np.random.default_rng(seed)
  shapes = {k: v.shape for k, v in inception_weights._flatten(inception.param_shapes()["params"])}
  state = collections.OrderedDict()
  for key, shape in shapes.items():
    leaf = key.split("/")[-1]
    if leaf == "kernel" and len(shape) == 4:  # HWIO -> OIHW
      h, w, i, o = shape
      value = rng.normal(0, np.sqrt(2 / (h * w * i)), (o, i, h, w))
    elif leaf == "kernel":  # fc: (in, out) -> (out, in)
      value = rng.normal(0, np.sqrt(1 / shape[0]), shape[::-1])
    elif leaf in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # BN shift and mean, fc bias
      value = rng.normal(0, 0.1, shape)
    state[_torch_name(key)] = value.astype(np.float32)
    if leaf == "var":
      state[_torch_name(key).replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
  return state


def _linen_tree(state: dict) -> dict:
  """The linen params the loader must return: OIHW -> HWIO, (out, in) -> (in, out), renamed."""
  rename = {("conv", "weight"): "kernel", ("bn", "weight"): "scale", ("bn", "bias"): "bias",
            ("bn", "running_mean"): "mean", ("bn", "running_var"): "var",
            ("fc", "weight"): "kernel", ("fc", "bias"): "bias"}
  tree: dict = {}
  for name, value in state.items():
    if name.endswith("num_batches_tracked"):
      continue
    *path, kind, leaf = name.split(".")
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
      value = value.T
    node = tree
    for part in path + [kind]:
      node = node.setdefault(part, {})
    node[rename[kind, leaf]] = value
  return tree


class _Global:
  """A module.name global written by name: torch need not be importable."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name


class _Storage:

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, np.ascontiguousarray(array)


class _Tensor:

  def __init__(self, storage: _Storage):
    self.storage = storage


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _TorchPickler(pickle._Pickler):
  """torch.save's pickle without torch: tensors as ``_rebuild_tensor_v2``, storages as ids.

  The pure-Python Pickler is used because its ``save`` can write a GLOBAL opcode for a module
  that is not importable (the C Pickler looks the global up and would need torch).
  """

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)  # torch.save's DEFAULT_PROTOCOL
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    kind = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
    if self.legacy:  # ('storage', type, root key, location, numel, view metadata)
      return ("storage", kind, obj.key, "cpu", obj.array.size, None)
    return ("storage", kind, obj.key, "cpu", obj.array.size)

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
    elif isinstance(obj, _Tensor):
      a = obj.storage.array
      stride = tuple(s // a.itemsize for s in a.strides)
      self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
      self.save((obj.storage, 0, a.shape, stride, False, collections.OrderedDict()))
      self.write(pickle.REDUCE)
    else:
      super().save(obj, save_persistent_id)


def _tensors(state: dict) -> tuple[collections.OrderedDict, list[_Storage]]:
  storages = [_Storage(str(i), v) for i, v in enumerate(state.values())]
  return collections.OrderedDict(zip(state, map(_Tensor, storages))), storages


def _little_endian(a: np.ndarray) -> bytes:
  return a.astype(a.dtype.newbyteorder("<")).tobytes()


def write_torch_zip(path, state: dict) -> None:
  """torch >= 1.6's layout: archive/data.pkl, archive/data/<key> raw little-endian bytes."""
  tensors, storages = _tensors(state)
  buffer = io.BytesIO()
  _TorchPickler(buffer, legacy=False).dump(tensors)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", buffer.getvalue())
    zf.writestr("archive/byteorder", "little")
    for s in storages:
      zf.writestr(f"archive/data/{s.key}", _little_endian(s.array))
    zf.writestr("archive/version", "3\n")


def write_torch_legacy(path, state: dict) -> None:
  """torch < 1.6's stream: magic, protocol, sys info, pickle, storage keys, then (numel, bytes)."""
  tensors, storages = _tensors(state)
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
      pickle.dump(header, f, protocol=2)
    _TorchPickler(f, legacy=True).dump(tensors)
    pickle.dump(sorted(s.key for s in storages), f, protocol=2)
    for s in sorted(storages, key=lambda s: s.key):
      f.write(struct.pack("<q", s.array.size) + _little_endian(s.array))


def write_numpy_pickle(path, tree: dict, numpy1_names: bool = False) -> None:
  """The JAX FID ports' pickle: nested dicts of arrays (optionally with NumPy 1's module names)."""
  data = pickle.dumps(tree, protocol=2)
  if numpy1_names:  # protocol 2 writes globals as text lines, so renaming them is safe
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
  with open(path, "wb") as f:
    f.write(data)


# ---------------------------------------------------------------------------------------------
# Fixtures: one random state dict, one compiled network.


@pytest.fixture(scope="module")
def state():
  return _random_state_dict()


@pytest.fixture(scope="module")
def expected(state):
  return _linen_tree(state)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, state, expected):
  d = tmp_path_factory.mktemp("inception_weights")
  write_torch_zip(d / "pt_inception.pth", state)
  write_torch_legacy(d / "pt_inception_legacy.pth", state)
  write_numpy_pickle(d / "inception_v3_weights_fid.pickle", expected, numpy1_names=True)
  return d


@pytest.fixture(scope="module")
def extractor(weights_dir):
  return InceptionFeatures(inception_weights.load(weights_dir / "pt_inception.pth"), batch_size=2)


def _assert_trees_equal(got: dict, want: dict) -> None:
  flat_got = dict(inception_weights._flatten(got))
  flat_want = dict(inception_weights._flatten(want))
  assert sorted(flat_got) == sorted(flat_want)
  for key, value in flat_want.items():
    assert flat_got[key].dtype == np.float32, key
    np.testing.assert_array_equal(flat_got[key], value, err_msg=key)  # a copy: exact


# ---------------------------------------------------------------------------------------------
# The network.


def test_parameter_count_matches_torchvision():
  # torchvision.models.inception_v3(num_classes=1008, aux_logits=False, init_weights=False) has
  # 23,850,960 parameters (counted with torch 2.13 / torchvision 0.28); its 94 BatchNorms add
  # 17,216 running means and as many variances, which this network holds as parameters.
  flat = dict(inception_weights._flatten(inception.param_shapes()["params"]))
  sizes = {k: int(np.prod(v.shape)) for k, v in flat.items()}
  assert sum(v for k, v in sizes.items() if k.endswith("/mean")) == 17_216
  assert sum(sizes.values()) == 23_850_960 + 2 * 17_216
  assert len([k for k in flat if k.endswith("conv/kernel")]) == 94
  assert flat["fc/kernel"].shape == (2048, 1008)


def test_every_matmul_runs_at_full_precision():
  # On GPU / TPU a DEFAULT-precision float32 conv may run in TF32 / bfloat16 and move FID.
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(InceptionV3().apply)(inception.param_shapes(), x)
  ops = [e for e in jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert len(ops) == 95  # 94 convolutions and the fc layer
  highest = jax.lax.Precision.HIGHEST
  assert all(e.params["precision"] in ((highest, highest), highest) for e in ops)


def test_pools_match_slow_loops():
  # TF's average pool divides by the real pixels of each window; Mixed_7c's branch max-pools.
  x = np.random.default_rng(1).normal(size=(1, 5, 4, 2)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
  avg, mx = np.zeros_like(x), np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      window = padded[0, i:i + 3, j:j + 3]
      avg[0, i, j] = np.nanmean(window, axis=(0, 1))
      mx[0, i, j] = np.nanmax(window, axis=(0, 1))
  # float32 sums of 4-9 terms: a few ulps
  np.testing.assert_allclose(inception._avg_pool_3x3(jnp.asarray(x)), avg, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(inception._max_pool_3x3(jnp.asarray(x)), mx)


def test_batchnorm_inference_closed_form():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  p = {k: rng.uniform(0.5, 1.5, 4).astype(np.float32) for k in ("scale", "bias", "mean", "var")}
  y = inception.BatchNormInference().apply({"params": p}, jnp.asarray(x))
  want = (x - p["mean"]) / np.sqrt(p["var"] + 1e-3) * p["scale"] + p["bias"]
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)  # float32 rsqrt and fma: ~1e-7 rel


def test_network_outputs(extractor):
  # Grey 8x8 images (the digits' size) through preprocess and the network, batch 2.
  images = np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
  features, logits = extractor.features_and_logits(images)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
  assert np.all(features >= 0)  # pool3 is a mean of ReLU outputs
  assert features.std() > 1e-2  # He-scaled random weights: features of order one, not collapsed
  assert not np.allclose(features[0], features[1])
  fc = extractor.params["params"]["fc"]
  # float32 dot of 2048 terms of order one: ~1e-5 relative
  np.testing.assert_allclose(logits, features @ fc["kernel"] + fc["bias"], rtol=1e-4, atol=1e-4)
  # The last batch is padded to batch_size: one image alone gives its row of the pair.
  one = extractor(images[:1])
  np.testing.assert_allclose(one, features[:1], rtol=1e-5, atol=1e-6)  # same compiled function


# ---------------------------------------------------------------------------------------------
# Preprocessing: clean-fid's resize against PIL.


@pytest.mark.parametrize("size_in", [8, 512])
def test_resize_matches_pil_bicubic(size_in):
  # clean-fid resizes each channel as a PIL 'F' image with BICUBIC (antialiased when shrinking).
  rng = np.random.default_rng(size_in)
  x = rng.uniform(-1, 1, (1, size_in, size_in + 3, 2)).astype(np.float32)
  got = np.asarray(inception.resize_antialiased(jnp.asarray(x), 299))
  want = np.stack([np.asarray(Image.fromarray(x[0, :, :, c], mode="F").resize(
      (299, 299), Image.BICUBIC)) for c in range(2)], axis=-1)
  # Measured max |difference| 3.6e-7 (8 -> 299) and 1.8e-7 (512 -> 299): float32 rounding of
  # sums of 4-14 taps against PIL's double-precision weights.
  np.testing.assert_allclose(got[0], want, rtol=0, atol=2e-6)


def test_bicubic_weights_closed_forms():
  np.testing.assert_allclose(inception.bicubic_weights(16, 16), np.eye(16), atol=1e-15)
  # Keys' cubic (a = -0.5) reproduces linear functions: away from the edges, upsampling a ramp
  # gives the sample positions c_i - 1/2 exactly (up to float64 rounding).
  w = inception.bicubic_weights(64, 299)
  positions = (np.arange(299) + 0.5) * 64 / 299 - 0.5
  inside = (positions >= 2) & (positions <= 61)
  np.testing.assert_allclose((w @ np.arange(64.0))[inside], positions[inside], atol=1e-12)
  assert inside.sum() > 250


def test_preprocess_grey_to_rgb_and_clip():
  grey = np.random.default_rng(4).uniform(-1.2, 1.2, (1, 8, 8, 1)).astype(np.float32)
  x = np.asarray(inception.preprocess(jnp.asarray(grey)))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  assert x.min() >= -1 and x.max() <= 1
  rgb = np.clip(np.repeat(grey, 3, axis=-1), -1, 1)
  want = np.clip(inception.resize_antialiased(jnp.asarray(rgb)), -1, 1)
  np.testing.assert_array_equal(x, want)
  with pytest.raises(ValueError, match="images must be NHWC with 1 or 3 channels"):
    inception.preprocess(jnp.zeros((1, 8, 8, 2)))


def test_features_refuse_pixel_range(extractor):
  with pytest.raises(ValueError, match=r"model space \[-1, 1\]"):
    extractor(np.full((1, 8, 8, 3), 255.0, np.float32))


# ---------------------------------------------------------------------------------------------
# Weight files.


@pytest.mark.parametrize("name", ["pt_inception.pth", "pt_inception_legacy.pth",
                                  "inception_v3_weights_fid.pickle"])
def test_load_gives_the_written_arrays(weights_dir, expected, name):
  params = inception_weights.load(weights_dir / name)
  assert set(params) == {"params"}
  _assert_trees_equal(params["params"], expected)


def test_load_errors(tmp_path, state, expected):
  text = tmp_path / "notes.txt"
  text.write_text("not weights")
  with pytest.raises(ValueError, match=r"notes\.txt.*neither a zip nor a pickle.*torch\.save"):
    inception_weights.load(text)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    inception_weights.load(tmp_path / "missing.pth")

  # Small files: the first layer only, so the first key checked is the one that is wrong.
  first = {k: v for k, v in state.items() if k.startswith("Conv2d_1a_3x3.")}
  grey = dict(first, **{"Conv2d_1a_3x3.conv.weight": first["Conv2d_1a_3x3.conv.weight"][:, :1]})
  write_torch_zip(tmp_path / "grey.pth", grey)  # a network for 1-channel input
  with pytest.raises(ValueError, match=r"grey\.pth.*'Conv2d_1a_3x3/conv/kernel' has shape "
                                       r"\(3, 3, 1, 32\), InceptionV3 expects \(3, 3, 3, 32\)"):
    inception_weights.load(tmp_path / "grey.pth")

  write_numpy_pickle(tmp_path / "partial.pickle", {"Conv2d_1a_3x3": expected["Conv2d_1a_3x3"]})
  with pytest.raises(ValueError, match=r"partial\.pickle.*no weight 'Conv2d_2a_3x3/bn/bias'"):
    inception_weights.load(tmp_path / "partial.pickle")

  write_torch_legacy(tmp_path / "extra.pth", dict(first, **{
      "Mixed_5b.branch1x1.conv.bias": np.zeros(64, np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected key 'Mixed_5b\.branch1x1\.conv\.bias'"):
    inception_weights.load(tmp_path / "extra.pth")

  class Evil:
    def __reduce__(self):
      return (print, ("this must not run",))

  (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"fc": Evil()}))
  with pytest.raises(ValueError, match=r"builtins\.print is not part of a pickle of NumPy arrays"):
    inception_weights.load(tmp_path / "evil.pickle")
  data = pickle.dumps(collections.OrderedDict(fc=Evil()), protocol=2)
  with zipfile.ZipFile(tmp_path / "evil2.pth", "w") as zf:
    zf.writestr("archive/data.pkl", data)
  with pytest.raises(ValueError, match=r"print is not part of a state dict"):
    inception_weights.load(tmp_path / "evil2.pth")
