"""oneDNN's convolutions as XLA custom calls: `--config.model.conv=onednn` (what `auto` picks on a CPU when it loads).

The same kernels PyTorch runs on a CPU, called through jax.ffi (onednn.cc): forward, input gradient and weight
gradient, tied together by a `jax.custom_vjp`. Channels-last activations and HWIO kernels, any stride, explicit or
SAME padding, float32 and bfloat16, no dilation or groups; any other convolution, and a dtype for which this
machine's oneDNN has only its reference kernels, is left to models/conv.py's `cpu` formulation (`try_conv` returns
None for it).

Sharding: each call is wrapped in `custom_partitioning`, so under a mesh that shards the batch it runs on each
device's own images (the batch factor is shared by activations and outputs; the weight gradient reduces it with a
psum), never on gathered activations.

Build: the extension is compiled on first use with the machine's C++ compiler against jax's FFI headers
(`jax.ffi.include_dir()`) and oneDNN's headers and library from PyPI's `onednn-devel-cpu-gomp` (installed with this
package on x86-64 Linux), into a cache folder (`$PECLR_JAX_CACHE`, else `~/.cache/peclr_jax`) keyed by the source
and the versions, so later runs load it at once. Where it cannot be built or loaded (no compiler, no oneDNN, not a
CPU backend), `available()` says why and models/conv.py uses its `cpu` formulation.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn.cc")
TARGETS = {
  "forward": "PeclrOnednnConvForward",
  "backward_data": "PeclrOnednnConvBackwardData",
  "backward_weights": "PeclrOnednnConvBackwardWeights",
}
DTYPES = {np.dtype("float32"): 0, np.dtype(jax.numpy.bfloat16): 1}


def _prefixes():
  """Where pip puts the oneDNN wheels' include/ and lib/: this environment's prefix, then the user's."""
  import site

  return list(dict.fromkeys([sys.prefix, sys.base_prefix, site.getuserbase()]))


def find_onednn():
  """(include dir, lib dir) of oneDNN (the onednn-devel-cpu-gomp wheel's layout), or None."""
  for prefix in _prefixes():
    inc, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    if os.path.isfile(os.path.join(inc, "oneapi", "dnnl", "dnnl.hpp")) and os.path.isfile(
      os.path.join(lib, "libdnnl.so.3")
    ):
      return inc, lib
  return None


def cache_dir():
  return os.environ.get("PECLR_JAX_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peclr_jax"
  )


def build():
  """The compiled extension's path, compiling it first when the cache has none; OSError says what failed."""
  found = find_onednn()
  if found is None:
    raise OSError(f"no oneDNN headers and library under {', '.join(_prefixes())} (pip install onednn-devel-cpu-gomp)")
  inc, lib = found
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise OSError("no C++ compiler (g++ or c++) on PATH")
  with open(SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([source, jax.__version__.encode(), inc.encode(), cxx.encode()])).hexdigest()[:16]
  path = os.path.join(cache_dir(), f"onednn-{key}.so")
  if os.path.isfile(path):
    return path
  os.makedirs(cache_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
  os.close(fd)
  cmd = [
    cxx,
    "-O2",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-w",
    f"-I{jax.ffi.include_dir()}",
    f"-I{inc}",
    SOURCE,
    f"-L{lib}",
    "-l:libdnnl.so.3",
    f"-Wl,-rpath,{lib}",
    "-o",
    tmp,
  ]
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
      raise OSError(f"compiling {SOURCE} failed: {r.stderr.strip()[-2000:]}")
    os.replace(tmp, path)  # atomic: processes building at once each write their own file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def _load():
  """(library, None) once the targets are registered, or (None, why not)."""
  if jax.default_backend() != "cpu":
    return None, f"the backend is {jax.default_backend()}, not cpu"
  try:
    lib = ctypes.CDLL(build())
  except (OSError, subprocess.SubprocessError) as e:
    return None, str(e)
  for name in TARGETS.values():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  lib.peclr_onednn_fast.restype = ctypes.c_int
  return lib, None


def available():
  """None when the extension is loaded, else the reason it is not."""
  return _load()[1]


@functools.cache
def fast(dtype):
  """Whether oneDNN has an optimised (not reference) convolution for `dtype` on this machine."""
  lib, _ = _load()
  return lib is not None and np.dtype(dtype) in DTYPES and bool(lib.peclr_onednn_fast(DTYPES[np.dtype(dtype)]))


# ---------------------------------------------------------------------------------------------------------------
# The three custom calls, each partitioned over the batch.
# ---------------------------------------------------------------------------------------------------------------
def _call(kind, a, b, out_shape, strides, pads):
  """One custom call (onednn.cc) on this device's operands."""
  return jax.ffi.ffi_call(TARGETS[kind], jax.ShapeDtypeStruct(out_shape, a.dtype))(
    a, b, strides=np.asarray(strides, np.int64), pads=np.asarray(pads, np.int64).reshape(-1)
  )


def _batch_axes(sharding):
  spec = getattr(sharding, "spec", None)
  return spec[0] if spec else None


def _partitioned(kind, rule, reduce_batch):
  """`kind`'s call under custom_partitioning: operand 0 keeps its batch sharding (and operand 1 too when it has a
  batch: the weight gradient), the kernel is replicated, the weight gradient is summed over the batch's axes."""

  @functools.partial(custom_partitioning, static_argnums=(2, 3, 4))
  def f(a, b, out_shape, strides, pads):
    return _call(kind, a, b, out_shape, strides, pads)

  def shardings(mesh, arg_shapes):
    batch = _batch_axes(arg_shapes[0].sharding)
    ranks = [len(s.shape) for s in arg_shapes]
    args = (
      NamedSharding(mesh, P(batch, *[None] * (ranks[0] - 1))),
      NamedSharding(mesh, P(batch, *[None] * (ranks[1] - 1)) if reduce_batch else P()),
    )
    out = NamedSharding(mesh, P() if reduce_batch else P(batch))
    return batch, args, out

  def infer(out_shape, strides, pads, mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[2]

  def partition(out_shape, strides, pads, mesh, arg_shapes, result_shape):
    batch, args, out = shardings(mesh, arg_shapes)
    n_local = arg_shapes[0].shape[0] // _size(mesh, batch)
    local_shape = out_shape if reduce_batch else (n_local, *out_shape[1:])

    def lower(a, b):
      y = _call(kind, a, b, local_shape, strides, pads)
      return lax.psum(y, batch) if reduce_batch and batch is not None else y

    return mesh, lower, out, args

  f.def_partition(
    partition=partition,
    infer_sharding_from_operands=infer,
    sharding_rule=rule,
    reduction_factors=("n",) if reduce_batch else (),
  )
  return f


def _size(mesh, axes):
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


_forward = _partitioned("forward", "n h w c, k l c o -> n p q o", False)
_backward_data = _partitioned("backward_data", "n p q o, k l c o -> n h w c", False)
_backward_weights = _partitioned("backward_weights", "n h w c, n p q o -> k l c o", True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return _forward(x, w, _out_shape(x.shape, w.shape, strides, pads), strides, pads)


def _out_shape(x, w, strides, pads):
  n, h, wd, _ = x
  kh, kw, _, o = w
  return (
    n,
    (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1,
    (wd + pads[1][0] + pads[1][1] - kw) // strides[1] + 1,
    o,
  )


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, g):
  x, w = res
  dx = _backward_data(g, w, x.shape, strides, pads)
  dw = _backward_weights(x, g, w.shape, strides, pads)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def try_conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """lax.conv_general_dilated's result through oneDNN, or None where this path does not apply (another layout,
  dilation or groups, mixed dtypes, a dtype without fast kernels here, or the extension not loaded)."""
  del precision  # oneDNN's kernels compute in the operands' dtype with float32 accumulation
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (
    lhs.ndim == 4
    and tuple(dn.lhs_spec) == tuple(dn.out_spec) == (0, 3, 1, 2)
    and tuple(dn.rhs_spec) == (3, 2, 0, 1)
    and feature_group_count == batch_group_count == 1
    and all(d is None or all(i == 1 for i in d) for d in (lhs_dilation, rhs_dilation))
  )
  if (
    not plain
    or available() is not None
    or lhs.dtype != rhs.dtype
    or not fast(lhs.dtype)
    or preferred_element_type not in (None, lhs.dtype)
  ):
    return None
  kernel = rhs.shape[:2]
  pads = lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding) if isinstance(padding, str) else padding
  # oneDNN wants the exact extent: trailing rows or columns no output reads leave the right pad, then the input.
  exact, crop = [], []
  for n, (lo, hi), k, s in zip(lhs.shape[1:3], pads, kernel, window_strides):
    excess = (n + lo + hi - k) % s
    exact.append((int(lo), int(hi - min(excess, hi))))
    crop.append(n - max(excess - hi, 0))
  if tuple(crop) != lhs.shape[1:3]:
    lhs = lhs[:, : crop[0], : crop[1]]
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), tuple(exact))
