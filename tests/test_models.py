"""ResNet encoders and heads: shapes, parameter counts, output stride, BatchNorm modes and running averages."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peclr_jax import models
from peclr_jax.models import onednn

# RBG keys compile far faster than threefry on CPU (Flax init draws one key per parameter); values don't matter here.
KEY = jax.random.key(0, impl="unsafe_rbg")


def _shapes(model, x, **kw):
  """Abstract variables and output of `model` on `x`, traced only (no compilation)."""
  v = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"], **kw), v, x)
  return v, out


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _named(tree, name):
  """Leaves whose last path entry is `name` (e.g. every BN `scale`)."""
  return [x for path, x in jax.tree_util.tree_leaves_with_path(tree) if path[-1].key == name]


@pytest.mark.parametrize("name,dim", [("resnet18", 64), ("resnet34", 64), ("resnet50", 256), ("resnet101", 256)])
def test_feature_dim_and_output_stride(name, dim):
  # width 8 = 1/8 of the standard nets: 512/8 and 2048/8 features; 128 px → 4×4 before pooling (stride 32).
  model = models.create(name, width=8)
  _, (feats, st) = _shapes(model, jnp.zeros((2, 128, 128, 3)))
  assert feats.shape == (2, dim) and feats.dtype == jnp.float32 and model.features == dim
  assert st["intermediates"]["feature_map"][0].shape == (2, 4, 4, dim)


def test_bottleneck_strides_in_the_3x3_conv():
  # v1.5: the first block of a stage keeps the resolution through its 1×1 conv and halves it in the 3×3 conv.
  model, x = models.create("resnet50", width=8), jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  _, st = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=True), v, x)
  b = st["intermediates"]["layer2_0"]
  assert [b[c]["__call__"][0].shape[1] for c in ("conv1", "conv2", "conv3", "downsample_conv")] == [16, 8, 8, 8]


def test_small_stem_output_stride():
  _, (feats, st) = _shapes(models.ResNet(depth=18, width=8, small_stem=True), jnp.zeros((2, 32, 32, 3)))
  assert feats.shape == (2, 64) and st["intermediates"]["feature_map"][0].shape == (2, 4, 4, 64)


@pytest.mark.parametrize("name,count,dim", [("resnet18", 11_176_512, 512), ("resnet50", 23_508_032, 2048)])
def test_param_count_matches_torchvision(name, count, dim):
  # torchvision's resnet18 / resnet50 have 11,689,512 / 25,557,032 parameters, minus fc (dim·1000 + 1000).
  v, (feats, _) = _shapes(models.create(name), jnp.zeros((1, 224, 224, 3)))
  assert _count(v["params"]) == count
  assert feats.shape == (1, dim)
  # BN running statistics (mean, var per channel) are state, not parameters, as torch's buffers.
  assert _count(v["batch_stats"]) == 2 * _count(_named(v["params"], "scale"))


def test_batchnorm_train_eval_and_running_average():
  model = models.ResNet(depth=18, width=8)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = jax.jit(functools.partial(model.init, train=False))(KEY, x)
  evaluate = jax.jit(functools.partial(model.apply, train=False))
  # Train mode normalises with batch statistics; the stem conv output is captured for the NumPy check.
  step = jax.jit(
    functools.partial(
      model.apply,
      train=True,
      capture_intermediates=lambda m, _: m.name == "conv1",
      mutable=["batch_stats", "intermediates"],
    )
  )
  # Default init (torchvision): every BN scale is 1, including the blocks' last.
  assert all(np.all(s == 1.0) for s in _named(v["params"], "scale"))
  out_eval = evaluate(v, x)
  out_train, _ = step(v, x)
  assert not np.allclose(out_eval, out_train, atol=1e-3)

  # Two steps of the stem BN's running averages against NumPy: momentum 0.9 (PyTorch's 0.1), biased variance.
  mean, var = np.zeros(8), np.ones(8)
  variables = v
  for i in range(2):
    _, st = step(variables, x * (1.0 + i) + i)  # different batch statistics on each step
    h = np.asarray(st["intermediates"]["conv1"]["__call__"][0], np.float64).reshape(-1, 8)
    mean, var = 0.9 * mean + 0.1 * h.mean(0), 0.9 * var + 0.1 * h.var(0)
    np.testing.assert_allclose(st["batch_stats"]["bn1"]["mean"], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st["batch_stats"]["bn1"]["var"], var, rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(st["batch_stats"]) == jax.tree.structure(v["batch_stats"])
    variables = {"params": v["params"], "batch_stats": st["batch_stats"]}
  # Eval mode follows the running statistics.
  assert not np.allclose(out_eval, evaluate(variables, x), atol=1e-3)


@pytest.mark.parametrize("depth,last", [(18, "bn2"), (50, "bn3")])
def test_zero_init_last_bn(depth, last):
  model = models.ResNet(depth=depth, width=8, zero_init_last_bn=True)
  params = jax.jit(functools.partial(model.init, train=False))(KEY, jnp.zeros((1, 32, 32, 3)))["params"]
  blocks = [p for k, p in params.items() if k.startswith("layer")]
  assert len(blocks) == sum(models.resnet.STAGES[depth])
  for p in blocks:
    assert np.all(p[last]["scale"] == 0.0)
    others = [m["scale"] for k, m in p.items() if k != last and "scale" in m]  # bn1, bn2, downsample_bn
    assert len(others) >= 1 and all(np.all(s == 1.0) for s in others)
  assert np.all(params["bn1"]["scale"] == 1.0)


def test_heads():
  h1, h2 = jnp.ones((3, 64)), jnp.zeros((3, 64))
  proj = models.ProjectionHead()
  v = jax.jit(functools.partial(proj.init, train=False))(KEY, h1)
  assert v["params"]["fc1"]["kernel"].shape == (64, 512)  # input size inferred
  assert "bias" in v["params"]["fc1"] and "bias" not in v["params"]["fc2"]
  assert set(v["batch_stats"]["bn"]) == {"mean", "var"}
  z, _ = proj.apply(v, jnp.arange(3 * 64.0).reshape(3, 64), train=True, mutable=["batch_stats"])
  assert z.shape == (3, 128)

  rel = models.RelativeHead(out=2)
  v = jax.jit(functools.partial(rel.init, train=False))(KEY, h1, h2)
  assert v["params"]["mlp"]["fc1"]["kernel"].shape == (128, 1024)
  assert v["params"]["mlp"]["fc2"]["kernel"].shape == (1024, 2) and "bias" not in v["params"]["mlp"]["fc2"]
  assert rel.apply(v, h1, h2, train=False).shape == (3, 2)

  probe = models.LinearProbe(out=63)
  v = probe.init(KEY, h1)
  assert probe.apply(v, h1).shape == (3, 63)
  g = jax.grad(lambda x: probe.apply(v, x).sum())(h1)
  assert np.all(g == 0)  # stop_gradient: the probe never trains the encoder
  g = jax.grad(lambda x: models.LinearProbe(63, stop_gradient=False).apply(v, x).sum())(h1)
  assert np.any(g != 0)


def test_create_and_errors():
  assert set(models.MODELS) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
  assert models.create("resnet152", width=8).depth == 152
  with pytest.raises(ValueError):
    models.create("resnet20")


# ---------------------------------------------------------------------------------------------------------------
# The latent 2.5-D hourglass.
# ---------------------------------------------------------------------------------------------------------------
def test_soft_argmax_finds_a_peak_and_reads_its_depth():
  from peclr_jax.models.hourglass import soft_argmax

  h = np.full((1, 8, 8, 2), -50.0, np.float32)
  h[0, 2, 5, 0] = 50.0  # joint 0 peaks at row 2, column 5 of a stride-4 map
  depth = np.zeros((1, 8, 8, 2), np.float32)
  depth[0, 2, 5, 0] = 1.7
  uv, z, p = soft_argmax(jnp.asarray(h), jnp.asarray(depth), stride=4)
  np.testing.assert_allclose(uv[0, 0], [(5 + 0.5) * 4, (2 + 0.5) * 4], atol=1e-4)  # pixel centre, input pixels
  np.testing.assert_allclose(z[0, 0], 1.7, atol=1e-5)
  np.testing.assert_allclose(uv[0, 1], [16, 16], atol=1e-4)  # a flat heatmap: the image centre
  np.testing.assert_allclose(p.sum((1, 2)), 1.0, atol=1e-5)


@pytest.mark.parametrize("size", [32, 64])
def test_hourglass_outputs_a_vectorised_pose_from_every_stack(size):
  m = models.Hourglass25D(width=4, stacks=2)
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  v = m.init(KEY, x, train=False)
  out, st = m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
  assert out.shape == (2, 63) and m.features == 63
  stacks = st["intermediates"]["stacks"]
  assert len(stacks) == 2 and np.allclose(stacks[-1], out)
  uv = np.asarray(out[:, :42])
  assert np.isfinite(out).all() and (np.abs(uv) <= 1).all()  # soft-argmax stays inside the image
  # The pose depends on the image (gradients reach the stem).
  g = jax.grad(lambda x: m.apply(v, x, train=False).sum())(x)
  assert np.abs(np.asarray(g)).max() > 0


def test_hourglass_cpu_conv_gradients_equal_xla():
  """model.conv reaches the hourglass: at 16 px its 2x2 and 1x1 levels run as matmuls, with the same gradients."""
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  grads, convs = {}, {}
  for mode in ("xla", "cpu"):
    m = models.Hourglass25D(width=2, stacks=1, conv=mode)
    v = m.init(KEY, x[:2], train=False)

    def loss(p, m=m, v=v):  # eval-mode BatchNorm: batch statistics of 4 values would amplify summation order
      return jnp.sum(jnp.sin(m.apply({**v, "params": p}, x, train=False)))

    grads[mode] = jax.jit(jax.grad(loss))(v["params"])
    convs[mode] = str(jax.make_jaxpr(loss)(v["params"])).count("conv_general_dilated")
  assert convs["cpu"] < convs["xla"], convs
  for a, b in zip(jax.tree.leaves(grads["cpu"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
  # Mixed precision reaches it too (traced only): float32 parameters, every convolution (as a conv or a matmul, rank
  # 4 out; the soft-argmax's float32 einsums are rank 2) in bf16, and a float32 pose out.
  m = models.Hourglass25D(width=2, stacks=1, conv="cpu", dtype=jnp.bfloat16)
  v = jax.eval_shape(lambda: m.init(KEY, x, train=False))
  assert {a.dtype for a in jax.tree.leaves(v["params"])} == {jnp.dtype(jnp.float32)}
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=False))(v, x)
  eqns = [
    e
    for e in jaxpr.jaxpr.eqns
    if e.primitive.name in ("conv_general_dilated", "dot_general") and e.outvars[0].aval.ndim == 4
  ]
  assert eqns and {a.aval.dtype for e in eqns for a in e.invars} == {jnp.dtype(jnp.bfloat16)}
  assert jaxpr.out_avals[0].dtype == jnp.float32


def test_encoder_factory():
  from ml_collections import ConfigDict

  base = dict(width=4, small_stem=True, zero_init_last_bn=False)
  h = models.encoder(ConfigDict(dict(name="hourglass", stacks=1, conv="cpu", **base)))
  assert isinstance(h, models.Hourglass25D) and h.conv == "cpu"
  r = models.encoder(ConfigDict(dict(name="resnet18", **base)), name="enc")
  assert isinstance(r, models.ResNet) and r.small_stem and r.name == "enc"


# ---------------------------------------------------------------------------------------------------------------
# The CPU convolution (model.conv="cpu": 1x1 and tiny outputs as matmuls, chunked weight gradients) against lax's
# and jax.grad.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "batch, size, cin, cout, k, stride",
  [
    (8, 12, 3, 8, 7, 2),
    (6, 9, 5, 4, 3, 1),
    (4, 10, 4, 4, 3, 2),
    (8, 8, 4, 6, 1, 2),
    (6, 7, 5, 3, 1, 1),
    (4, 9, 4, 6, 1, 2),
    (4, 2, 6, 5, 3, 1),
    (4, 4, 5, 6, 3, 2),
    (3, 3, 4, 4, 3, 2),
    (2, 1, 4, 3, 3, 1),
  ],
)
def test_cpu_conv_values_and_gradients_equal_lax(batch, size, cin, cout, k, stride, monkeypatch):
  from jax import lax

  from peclr_jax.models import conv

  monkeypatch.setattr(conv, "POSITIONS", 1)  # one image per chunk and device: as many chunks as possible
  x = jax.random.normal(jax.random.key(1), (batch, size, size, cin))
  w = jax.random.normal(jax.random.key(2), (k, k, cin, cout))
  t = jax.random.normal(jax.random.key(3), (batch, -(-size // stride), -(-size // stride), cout))
  args = ((stride, stride), "SAME" if stride == 1 else [(k // 2, k // 2)] * 2)  # flax passes "SAME" as it is
  dn = ("NHWC", "HWIO", "NHWC")

  def loss(f, x, w):
    return jnp.sum(jnp.sin(f(x, w, *args, dimension_numbers=dn)) * t)

  # 1x1 kernels and outputs of at most 2x2 positions are matrix products, the rest XLA's convolution with the
  # weight gradient in chunks.
  matmul = k == 1 or -(-size // stride) <= conv.SMALL
  assert matmul or conv.num_chunks(batch, (size // stride) ** 2) > 1
  jaxpr = str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, *args, dimension_numbers=dn))(x, w))
  assert ("conv_general_dilated" not in jaxpr) == matmul, jaxpr
  np.testing.assert_allclose(
    conv.conv_general_dilated(x, w, *args, dimension_numbers=dn),
    lax.conv_general_dilated(x, w, *args, dimension_numbers=dn),
    rtol=1e-5,
    atol=1e-5,
  )
  want = jax.grad(functools.partial(loss, lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.jit(jax.grad(functools.partial(loss, conv.conv_general_dilated), (0, 1)))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * float(jnp.abs(b).max()))


def test_cpu_conv_resnet_gradients_equal_xla_on_a_sharded_batch(monkeypatch):
  """The config switch (model.conv): same gradients, with the batch split over 2 devices as in training."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from peclr_jax import sharding
  from peclr_jax.models import conv

  monkeypatch.setattr(conv, "POSITIONS", 64)
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))  # stages at 16, 8, 4 and 2 px: every form of conv.py
  mesh = sharding.mesh(jax.devices()[:2])
  x = jax.device_put(x, NamedSharding(mesh, P("data")))
  grads = {}
  for mode in ("xla", "cpu"):
    m = models.create("resnet18", width=8, small_stem=True, conv=mode)
    v = m.init(KEY, x[:2], train=True)

    def loss(p, m=m, v=v):
      h, _ = m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(h))

    grads[mode] = jax.jit(jax.grad(loss))(v["params"])
  for a, b in zip(jax.tree.leaves(grads["cpu"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))

  # cpu's forward pass leaves the 1x1 and 2x2-output convolutions to matmuls; auto on this CPU backend is onednn
  # (its custom calls, the 1x1 convolutions as cpu's matmuls) when the extension loads, else cpu.
  def count(mode):
    m = models.create("resnet18", width=8, small_stem=True, conv=mode)
    return str(jax.make_jaxpr(lambda x: m.init_with_output(KEY, x, train=True)[0])(x[:2])).count("conv_general_dilated")

  convs = {mode: count(mode) for mode in ("xla", "cpu", "onednn", "auto")}
  assert convs["cpu"] < convs["xla"], convs
  assert convs["auto"] == convs["onednn" if onednn.available() is None else "cpu"], convs
  with pytest.raises(ValueError, match="conv"):
    models.create("resnet18", width=8, conv="fast").init(KEY, x[:2], train=True)
