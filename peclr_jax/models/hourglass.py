"""The latent 2.5-D heatmap network of Iqbal et al. (ECCV 2018) on stacked hourglasses (Newell et al. 2016).

Each stack ends in 2J maps: J latent heatmaps and J depth maps. A spatial softmax turns heatmap j into a
distribution p_j; its expectation over pixel centres is joint j's (u, v) (soft-argmax, differentiable) and the
p_j-weighted sum of depth map j its root-relative depth z_rel. So the network's output *is* a 2.5-D pose.

As an encoder the output of the last stack is vectorised, 21 x (u, v) normalised to [-1, 1] then 21 z_rel, 63
values [B, 63], which is what the projection head sees during pretraining (seed 000 §4.5); downstream it is read
directly as the prediction (probe head "direct", trained as in Iqbal et al.). Every stack's output is sown as
`intermediates/stacks` for intermediate supervision.

Deviations (unverified details of the paper): Newell's pre-activation bottleneck residuals, `width` x 8 features
(Newell: 256), a fixed softmax temperature of 1, and nearest-neighbour upsampling; the hourglass recursion depth is
capped by the feature-map size, so 32-64 px inputs work.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from peclr_jax.models import conv as conv_lib
from peclr_jax.models.resnet import conv_init


class Residual(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-1x1(f/2)-BN-ReLU-3x3(f/2)-BN-ReLU-1x1(f), plus a 1x1 skip if needed."""

  features: int
  norm: type
  dtype: jnp.dtype = jnp.float32
  conv: str = "xla"  # config.model.conv (models/conv.py)

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name: nn.Conv(
      f,
      (k, k),
      padding="SAME",
      kernel_init=conv_init,
      dtype=self.dtype,
      name=name,
      conv_general_dilated=conv_lib.impl(self.conv),
    )
    y = conv(self.features // 2, 1, "conv1")(nn.relu(self.norm(name="bn1")(x)))
    y = conv(self.features // 2, 3, "conv2")(nn.relu(self.norm(name="bn2")(y)))
    y = conv(self.features, 1, "conv3")(nn.relu(self.norm(name="bn3")(y)))
    skip = x if x.shape[-1] == self.features else conv(self.features, 1, "skip")(x)
    return y + skip


class Hourglass(nn.Module):
  """One hourglass of `depth` halvings: skip branch + (pool -> residual -> inner -> residual -> upsample)."""

  depth: int
  features: int
  norm: type
  dtype: jnp.dtype = jnp.float32
  conv: str = "xla"

  @nn.compact
  def __call__(self, x):
    res = lambda name: Residual(self.features, self.norm, self.dtype, self.conv, name=name)
    up = res("up")(x)
    low = res("low1")(nn.max_pool(x, (2, 2), (2, 2)))
    if self.depth > 1:
      low = Hourglass(self.depth - 1, self.features, self.norm, self.dtype, self.conv, name="inner")(low)
    else:
      low = res("low2")(low)
    low = res("low3")(low)
    b, h, w, c = low.shape
    return up + jax.image.resize(low, (b, 2 * h, 2 * w, c), "nearest")


def soft_argmax(heatmaps, depthmaps, stride):
  """[B, h, w, J] logits and depth maps -> (uv [B, J, 2] in input pixels, z [B, J], p [B, h, w, J]).

  Pixel (i, j) of the stride-s map covers input pixels [s j, s (j + 1)) x [s i, s (i + 1)): its centre is
  (s (j + 0.5), s (i + 0.5)) in the continuous convention of the data pipeline.
  """
  b, h, w, n = heatmaps.shape
  p = jax.nn.softmax(heatmaps.reshape(b, h * w, n).astype(jnp.float32), axis=1).reshape(b, h, w, n)
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  u = jnp.einsum("bhwj,w->bj", p, xs)
  v = jnp.einsum("bhwj,h->bj", p, ys)
  z = jnp.einsum("bhwj,bhwj->bj", p, depthmaps.astype(jnp.float32))
  return jnp.stack([u, v], -1), z, p


class Hourglass25D(nn.Module):
  """Stacked-hourglass latent 2.5-D heatmap regressor; returns the last stack's pose as a [B, 63] vector."""

  width: int = 32  # features = 8 x width (Newell's 256 at width 32)
  stacks: int = 2
  depth: int = 4
  joints: int = 21
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32  # compute dtype; the soft-argmax and the output are float32
  conv: str = "xla"  # config.model.conv: xla, cpu or auto (models/conv.py)

  @property
  def features(self):
    return 3 * self.joints

  @nn.compact
  def __call__(self, x, train: bool):
    f = 8 * self.width
    norm = lambda name=None: nn.BatchNorm(
      use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name=name
    )
    conv = lambda f, k, name, **kw: nn.Conv(
      f, (k, k), kernel_init=conv_init, dtype=self.dtype, name=name, conv_general_dilated=conv_lib.impl(self.conv), **kw
    )
    res = lambda f, name: Residual(f, norm, self.dtype, self.conv, name=name)
    size = x.shape[1]
    x = jnp.asarray(x, self.dtype)
    # Stem to stride 4, as Newell et al.: 7x7/2 conv, residual, max-pool, two residuals.
    x = nn.relu(norm("bn1")(conv(f // 2, 7, "conv1", strides=2, padding=[(3, 3)] * 2)(x)))
    x = res(f // 2, "res1")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = res(f // 2, "res2")(x)
    x = res(f, "res3")(x)
    depth = max(1, min(self.depth, int(math.log2(min(x.shape[1:3])))))
    stride = size / x.shape[1]
    out = None
    for s in range(self.stacks):
      y = Hourglass(depth, f, norm, self.dtype, self.conv, name=f"hourglass{s}")(x)
      y = res(f, f"stack{s}_res")(y)
      y = nn.relu(norm(f"stack{s}_bn")(conv(f, 1, f"stack{s}_conv")(y)))
      maps = conv(2 * self.joints, 1, f"stack{s}_maps")(y)
      uv, z, _ = soft_argmax(maps[..., : self.joints], maps[..., self.joints :], stride)
      out = jnp.concatenate([(uv / size * 2 - 1).reshape(uv.shape[0], -1), z], -1)
      self.sow("intermediates", "stacks", out)
      if s + 1 < self.stacks:  # the next stack sees the features and the maps (Newell's re-injection)
        x = x + conv(f, 1, f"stack{s}_back_features")(y) + conv(f, 1, f"stack{s}_back_maps")(maps)
    return out.astype(jnp.float32)
