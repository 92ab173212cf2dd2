"""The convolution as it runs fastest on XLA's CPU backend: `--config.model.conv=cpu` (what `auto`, the default, picks
on a CPU).

XLA's CPU convolutions leave a ResNet step at 0.3-0.45x PyTorch's on 2 cores (benchmarks/train_step.py), and
benchmarks/conv.py shows where, layer by layer:
* 1x1 convolutions (half of ResNet-50's FLOPs, the downsampling shortcuts of ResNet-18) run 1.5-8x faster as a
  matrix product over the (strided) positions; the product's input and weight gradients are matrix products too.
* The weight gradient of a larger kernel over a whole batch runs at 17-70 GFLOP/s in ResNet's early layers against
  110-280 for the forward convolution; taken over chunks of a few images (about 2,048 output positions per device)
  and summed, it runs 2-6x faster. The forward pass and the input gradient stay XLA's.
* A larger kernel whose output is at most 2x2 (ResNet's last stage at 64 px) runs 10-50x slower in XLA's forward
  pass and input gradient than as one matrix product over its taps (im2col: 9 shifted slices concatenated), which
  at that size costs next to no memory (`python benchmarks/conv.py --size 64`: ResNet-18's 2x2 last stage).

`conv_general_dilated` is a drop-in for lax's (flax `nn.Conv(conv_general_dilated=...)`) and equals it up to float
summation order (tests/test_models.py compares values and `jax.grad` against lax's). Chunk j holds images j,
j + n_chunks, j + 2 n_chunks, ... (a reshape, not a slice), so under a batch-sharded mesh every chunk spreads evenly
over the devices and each device works on its own images.
"""

import functools
import itertools
import logging
import math

import jax
import jax.numpy as jnp
from jax import lax

from peclr_jax.models import onednn

POSITIONS = 2048  # output positions per chunk and device: the fastest here for ResNet-18/50 at 64-128 px
SMALL = 2  # outputs with at most this many positions a side are computed over their taps (im2col)
MODES = ("auto", "xla", "cpu", "onednn")  # config.model.conv


def impl(mode):
  """flax `nn.Conv`'s conv_general_dilated for a config's model.conv: None (lax's) for xla, this module's for cpu,
  oneDNN's custom calls (models/onednn.py) with this module's for what they do not cover for onednn. auto is onednn
  on XLA's CPU backend when the extension loads, else cpu, and xla on accelerators; onednn that cannot load is cpu,
  with one warning saying why."""
  if mode not in MODES:
    raise ValueError(f"conv must be one of {MODES}, got {mode!r}")
  if mode == "auto":
    mode = AUTO_CPU if jax.default_backend() == "cpu" else "xla"
  if mode == "onednn" and _onednn_missing():
    mode = "cpu"
  return {"xla": None, "cpu": conv_general_dilated, "onednn": onednn_or_cpu}[mode]


AUTO_CPU = "onednn"  # what auto means on a CPU backend (falls to cpu when the extension cannot load)


@functools.cache
def _onednn_missing():
  """Why the oneDNN extension is not loaded (warned once), or None."""
  why = onednn.available()
  if why is not None:
    logging.warning("model.conv: oneDNN convolutions are unavailable (%s); using model.conv=cpu", why)
  return why


def onednn_or_cpu(lhs, rhs, *args, **kwargs):
  """oneDNN's convolution where it applies, this module's elsewhere: 1x1 kernels stay matrix products here, which
  run faster than oneDNN's strided 1x1 convolutions (benchmarks/conv.py)."""
  y = None if rhs.shape[0] == rhs.shape[1] == 1 else onednn.try_conv(lhs, rhs, *args, **kwargs)
  return conv_general_dilated(lhs, rhs, *args, **kwargs) if y is None else y


def num_chunks(batch, positions_per_image, devices=None):
  """Chunks (a divisor of `batch`) with about POSITIONS output positions per device in each."""
  devices = jax.device_count() if devices is None else devices
  per_chunk = max(1, round(POSITIONS * devices / max(positions_per_image, 1)))  # images per chunk
  n = max(1, batch // per_chunk)
  while batch % n:
    n -= 1
  return n


def weight_grad(conv, x, w, g):
  return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]


def _plain(lhs, dn, *dilations):
  """Channels-last input and output, an HWIO kernel, no dilation: the layouts the matrix-product forms take."""
  n = lhs.ndim
  channels_last = tuple(dn.lhs_spec) == tuple(dn.out_spec) == (0, n - 1, *range(1, n - 1))
  hwio = tuple(dn.rhs_spec) == (n - 1, n - 2, *range(n - 2))
  return channels_last and hwio and all(d is None or all(i == 1 for i in d) for d in dilations)


def _taps(x, kernel, strides, pads, out):
  """Each kernel tap's strided view of x (N, *spatial, C), padded, concatenated on channels in HWIO order."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  return jnp.concatenate(
    [
      x[(slice(None), *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(tap, strides, out)))]
      for tap in itertools.product(*(range(k) for k in kernel))
    ],
    -1,
  )


def conv_general_dilated(
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
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if feature_group_count != 1 or batch_group_count != 1 or dn.lhs_spec[0] != 0 or dn.out_spec[0] != 0:
    return conv(lhs, rhs)  # grouped or batch-not-first: XLA's
  if _plain(lhs, dn, lhs_dilation, rhs_dilation):  # matrix products where they are faster; autodiff does the rest
    kernel = rhs.shape[:-2]  # (N, *spatial, C) input and HWIO kernel from here on
    pads = (
      lax.padtype_to_pads(lhs.shape[1:-1], kernel, window_strides, padding)
      if isinstance(padding, str)
      else [tuple(p) for p in padding]
    )
    out = [(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(lhs.shape[1:-1], pads, kernel, window_strides)]
    matmul = functools.partial(
      lax.dot_general,
      dimension_numbers=(((lhs.ndim - 1,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
    if all(k == 1 for k in kernel) and all(p == (0, 0) for p in pads):  # 1x1: over the strided positions
      return matmul(lhs[(slice(None), *(slice(None, None, s) for s in window_strides))], rhs.reshape(rhs.shape[-2:]))
    if max(out) <= SMALL:  # a tiny output: over the taps
      return matmul(_taps(lhs, kernel, window_strides, pads, out), rhs.reshape(-1, rhs.shape[-1]))

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    (dx,) = jax.vjp(lambda x: conv(x, w), x)[1](g)
    n = num_chunks(x.shape[0], math.prod(g.shape[i] for i in dn.out_spec[2:]))
    xs, gs = x.reshape(-1, n, *x.shape[1:]), g.reshape(-1, n, *g.shape[1:])
    dw = sum(weight_grad(conv, xs[:, j], w, gs[:, j]).astype(jnp.float32) for j in range(n))
    return dx, dw.astype(w.dtype)

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)
