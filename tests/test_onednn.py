"""model.conv=onednn: oneDNN's convolutions through jax.ffi, against jax.grad of lax's convolution for every shape the
ResNets and the hourglass use, sharded over 2 devices without gathering, and the fallback when it cannot load."""

import functools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from peclr_jax import models
from peclr_jax.models import conv, onednn

pytestmark = pytest.mark.skipif(onednn.available() is not None, reason=f"oneDNN extension: {onednn.available()}")
DN = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _ours(x, w, strides, padding):
  y = onednn.try_conv(x, w, strides, padding, dimension_numbers=DN)
  assert y is not None, "the oneDNN path was not taken"
  return y


def _rel(a, b):
  return float(jnp.abs(a - b).max() / jnp.maximum(jnp.abs(a).max(), 1e-30))


# (batch, side, in, out, kernel, stride, padding): the stem (7x7/2), 3x3 and 1x1 convolutions at stride 1 and 2
# (SAME as flax pads them, explicit as the ResNets do), and outputs of 2x2 and 1x1 (ResNet's last stage at 64 px).
SHAPES = [
  (4, 16, 3, 8, 7, 2, ((3, 3), (3, 3))),
  (4, 8, 8, 8, 3, 1, ((1, 1), (1, 1))),
  (4, 8, 8, 16, 3, 2, ((1, 1), (1, 1))),
  (4, 8, 8, 16, 1, 2, ((0, 0), (0, 0))),
  (4, 8, 8, 16, 1, 1, "SAME"),
  (4, 7, 6, 6, 3, 2, "SAME"),  # odd side: the last row is padding only on one side
  (4, 2, 16, 16, 3, 1, ((1, 1), (1, 1))),
  (4, 4, 16, 16, 3, 2, ((1, 1), (1, 1))),
  (4, 1, 16, 8, 3, 1, "SAME"),
  (4, 2, 16, 8, 1, 2, ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("n, side, cin, cout, k, s, padding", SHAPES)
def test_values_and_gradients_equal_lax(n, side, cin, cout, k, s, padding):
  rng = np.random.default_rng(k * 100 + side)
  x = jnp.asarray(rng.normal(size=(n, side, side, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / k, jnp.float32)
  ref = jax.jit(_lax, static_argnums=(2, 3))(x, w, (s, s), padding)
  got = jax.jit(_ours, static_argnums=(2, 3))(x, w, (s, s), padding)
  assert got.shape == ref.shape and _rel(ref, got) < 1e-5
  g = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  grads = [
    jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w, (s, s), padding) * g), (0, 1)))(x, w) for f in (_lax, _ours)
  ]
  for a, b in zip(*grads):
    assert _rel(a, b) < 1e-5


def test_the_custom_calls_are_in_the_compiled_step():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(_ours(x, w, (1, 1), "SAME") ** 2), (0, 1)))
  text = f.lower(x, w).as_text()
  for target in onednn.TARGETS.values():
    assert target in text, target


def test_bfloat16_is_within_bfloat16_tolerance_or_left_to_the_cpu_path():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) / 3, jnp.bfloat16)
  y = onednn.try_conv(x, w, (1, 1), "SAME", dimension_numbers=DN)
  if not onednn.fast(jnp.bfloat16):
    assert y is None  # reference kernels only on this CPU: models/conv.py computes it
    return
  ref = _lax(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), "SAME")
  assert y.dtype == jnp.bfloat16 and _rel(ref, y.astype(jnp.float32)) < 2e-2


def test_resnet18_sharded_over_two_devices_equals_one_device_and_gathers_no_activation():
  assert jax.device_count() >= 2, "conftest sets 2 emulated CPU devices"
  model = models.encoder(
    ConfigDict(
      dict(name="resnet18", width=8, small_stem=False, zero_init_last_bn=False, conv="onednn", dtype="float32")
    )
  )
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  variables = model.init(jax.random.key(1), x[:2], train=True)

  def loss(params, x):
    h, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(h**2)

  step = jax.value_and_grad(loss)
  v1, g1 = jax.jit(step)(variables["params"], x)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  sharded = jax.jit(step, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  v2, g2 = sharded(variables["params"], xs)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):  # global BatchNorm: summation order moves a little
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
  hlo = sharded.lower(variables["params"], xs).compile().as_text()
  calls = [line for line in hlo.splitlines() if "PeclrOnednnConvForward" in line and "custom-call(" in line]
  assert calls and all(re.search(r"= f32\[4,", line) for line in calls), calls[:2]  # each device: 4 of 8 images
  assert "all-gather" not in hlo


def test_without_the_extension_onednn_and_auto_fall_back_to_cpu_with_one_warning(monkeypatch, caplog):
  monkeypatch.setattr(onednn, "_load", functools.cache(lambda: (None, "no compiler here")))
  monkeypatch.setattr(conv, "_onednn_missing", functools.cache(conv._onednn_missing.__wrapped__))
  monkeypatch.setattr(conv, "AUTO_CPU", "onednn")
  with caplog.at_level(logging.WARNING):
    assert conv.impl("onednn") is conv.conv_general_dilated
    assert conv.impl("auto") is conv.conv_general_dilated
  lines = [r.getMessage() for r in caplog.records if "oneDNN" in r.getMessage()]
  assert lines == ["model.conv: oneDNN convolutions are unavailable (no compiler here); using model.conv=cpu"]
  assert onednn.try_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), (1, 1), "SAME", dimension_numbers=DN) is None
