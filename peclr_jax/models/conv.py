"""The convolution as it runs fastest on XLA's CPU backend: `--config.model.conv=cpu`.

XLA's CPU convolutions leave a ResNet step at 0.3-0.45x PyTorch's on 2 cores (benchmarks/train_step.py), and
benchmarks/conv.py shows where, layer by layer:
* 1x1 convolutions (half of ResNet-50's FLOPs, the downsampling shortcuts of ResNet-18) run 1.5-8x faster as a
  matrix product over the (strided) positions; the product's input and weight gradients are matrix products too.
* The weight gradient of a larger kernel over a whole batch runs at 17-70 GFLOP/s in ResNet's early layers against
  110-280 for the forward convolution; taken over chunks of a few images (about 2,048 output positions per device)
  and summed, it runs 2-6x faster. The forward pass and the input gradient stay XLA's.

`conv_general_dilated` is a drop-in for lax's (flax `nn.Conv(conv_general_dilated=...)`) and equals it up to float
summation order (tests/test_models.py compares values and `jax.grad` against lax's). Chunk j holds images j,
j + n_chunks, j + 2 n_chunks, ... (a reshape, not a slice), so under a batch-sharded mesh every chunk spreads evenly
over the devices and each device works on its own images.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

POSITIONS = 2048  # output positions per chunk and device: the fastest here for ResNet-18/50 at 64-128 px


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


def _pointwise(lhs, rhs, padding, lhs_dilation, dn):
  """True for a 1x1 kernel without padding or input dilation, channels-last input and output, HWIO kernel."""
  n = lhs.ndim
  channels_last = tuple(dn.lhs_spec) == tuple(dn.out_spec) == (0, n - 1, *range(1, n - 1))
  hwio = tuple(dn.rhs_spec) == (n - 1, n - 2, *range(n - 2))
  unpadded = padding in ("VALID", "SAME") or all(tuple(p) == (0, 0) for p in padding)
  undilated = lhs_dilation is None or all(d == 1 for d in lhs_dilation)
  return channels_last and hwio and unpadded and undilated and all(k == 1 for k in rhs.shape[:-2])


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                           lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                           dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                           batch_group_count=batch_group_count, precision=precision,
                           preferred_element_type=preferred_element_type)
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if feature_group_count != 1 or batch_group_count != 1 or dn.lhs_spec[0] != 0 or dn.out_spec[0] != 0:
    return conv(lhs, rhs)  # grouped or batch-not-first: XLA's
  if _pointwise(lhs, rhs, padding, lhs_dilation, dn):  # a matrix product; autodiff does the rest
    x = lhs[(slice(None), *(slice(None, None, s) for s in window_strides))]
    return lax.dot_general(x, rhs.reshape(rhs.shape[-2:]), (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)

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
