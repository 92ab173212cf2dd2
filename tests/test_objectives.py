"""Objectives against independent NumPy computations, closed-form values and round trips (reference §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peclr_jax import objectives as obj

# Jitted as in a training step (and op-by-op dispatch of the vmapped undo is slow on CPU).
nt_xent = jax.jit(obj.nt_xent, static_argnames="groups")
peclr_undo = jax.jit(obj.peclr_undo, static_argnames=("transforms", "translation_norm"))
peclr_loss = jax.jit(obj.peclr_loss, static_argnames=("transforms", "translation_norm"))


def _nt_xent_np(z1, z2, tau):
  """Loop-per-anchor NT-Xent in float64, written from the reference's formula."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n, b = len(z), len(z1)
  total = 0.0
  for i in range(n):
    s = z @ z[i] / tau
    others = np.array([s[j] for j in range(n) if j != i])
    total += -s[(i + b) % n] + np.log(np.sum(np.exp(others)))
  return total / n


@pytest.mark.parametrize("b,d,tau", [(1, 3, 0.5), (4, 8, 0.1), (16, 32, 0.5), (33, 16, 1.0)])
def test_nt_xent_matches_numpy(b, d, tau):
  rng = np.random.default_rng(b)
  z1, z2 = rng.normal(size=(b, d)) * 3, rng.normal(size=(b, d))
  np.testing.assert_allclose(nt_xent(z1, z2, tau), _nt_xent_np(z1, z2, tau), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_sanity_values(tau):
  b = 128
  eye = np.eye(2 * b, dtype=np.float32)
  np.testing.assert_allclose(nt_xent(eye[:b], eye[b:], tau), np.log(2 * b - 1), rtol=1e-5)  # all orthogonal
  want = np.log1p((2 * b - 2) * np.exp(-1 / tau))  # identical positives, mutually orthogonal negatives
  np.testing.assert_allclose(nt_xent(eye[:b], eye[:b], tau), want, rtol=1e-5, atol=1e-6)
  if tau == 0.5:
    assert round(float(np.log(2 * b - 1)), 2) == 5.54 and round(float(want), 2) == 3.57


def test_nt_xent_properties():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 16, 32)).astype(np.float32)
  assert nt_xent(z1, z1) < nt_xent(z1, z2)
  scale = rng.uniform(0.01, 100, size=(16, 1)).astype(np.float32)
  np.testing.assert_allclose(nt_xent(z1 * scale, z2), nt_xent(z1, z2), rtol=1e-5)
  for a, b in [(z1, z2), (z1, z1), (np.zeros_like(z1), z2)]:  # zero rows too: eps in the normalisation
    g1, g2 = jax.jit(jax.grad(obj.nt_xent, (0, 1)))(jnp.asarray(a), jnp.asarray(b))
    assert np.isfinite(g1).all() and np.isfinite(g2).all()
  # Jitted bf16 input: upcast, same value.
  bf = nt_xent(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
  assert bf.dtype == jnp.float32 and abs(float(bf) - _nt_xent_np(z1, z2, 0.5)) < 0.05


def test_nt_xent_groups_are_independent_micro_batches():
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(2, 12, 8)).astype(np.float32)
  want = np.mean([_nt_xent_np(z1[i : i + 4], z2[i : i + 4], 0.5) for i in (0, 4, 8)])
  np.testing.assert_allclose(nt_xent(z1, z2, groups=3), want, rtol=2e-5)
  assert abs(float(nt_xent(z1, z2)) - want) > 1e-2  # global batch is a different objective
  with pytest.raises(ValueError):
    obj.nt_xent(z1, z2, groups=5)


# ---------------------------------------------------------------------------------------------------------------------
# PeCLR


def _cv2_rotate(p, theta, c):
  """Points rotated by theta about c with the affine matrix cv2.getRotationMatrix2D(c, deg(theta), 1) builds."""
  a, b = np.cos(theta), np.sin(theta)
  m = np.array([[a, b, (1 - a) * c[0] - b * c[1]], [-b, a, b * c[0] + (1 - a) * c[1]]])
  return p @ m[:, :2].T + m[:, 2]


def _augment_points(p0, theta, jitter, side, margin, norm, ref=obj.REFERENCE_MARGIN):
  """The image pipeline's effect as the latent model assumes it: rotate, scale about the hand, shift by −jitter."""
  c = p0.mean(0)
  p = _cv2_rotate(c + (p0 - c) * ref / margin, theta, c)
  n = {"reference": 128.0, "crop": side}[norm]
  return p - jitter / n * (p.max(0) - p.min(0))  # the crop origin moves by +jitter, the hand by −jitter


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("norm", ["reference", "crop"])
@pytest.mark.parametrize(
  "transforms", [("translate", "rotate"), ("crop", "rotate", "scale"), ("rotate",), ("translate",)]
)
def test_peclr_undo_inverts_known_augmentation(norm, transforms):
  rng = np.random.default_rng(3)
  bsz = 5
  p0 = rng.normal(size=(bsz, 64, 2)) + rng.normal(size=(bsz, 1, 2))  # off-centre clouds: the centroid matters
  theta = rng.uniform(-np.pi / 4, np.pi / 4, bsz)
  jitter = rng.uniform(-14, 14, (bsz, 2))
  side = rng.uniform(80, 300, bsz)
  margin = rng.uniform(0.9, 1.5, bsz)
  names = {obj._ALIAS.get(t, t) for t in transforms}
  th = theta if "rotate" in names else np.zeros(bsz)
  ji = jitter if "translate" in names else np.zeros((bsz, 2))
  ma = margin if "scale" in names else np.full(bsz, obj.REFERENCE_MARGIN)
  z = np.stack([_augment_points(p0[i], th[i], ji[i], side[i], ma[i], norm) for i in range(bsz)]).reshape(bsz, -1)
  z *= rng.uniform(0.1, 10, (bsz, 1))  # the first normalisation removes any overall scale
  out = peclr_undo(z, theta, jitter, side, margin, transforms, translation_norm=norm)
  want = _unit(p0.reshape(bsz, -1))
  np.testing.assert_allclose(out, want, atol=2e-5)
  assert np.abs(_unit(z) - want).max() > 1e-2  # the augmentation did something


def test_peclr_rotate_then_undo_is_identity_and_identity_geo():
  rng = np.random.default_rng(4)
  z = rng.normal(size=(6, 128)).astype(np.float32)
  theta = rng.uniform(-np.pi, np.pi, 6)
  # Rotate by theta with the undo of −theta (about the same centroid), then undo theta.
  rot = peclr_undo(z, -theta, None, None, None, ("rotate",))
  np.testing.assert_allclose(peclr_undo(rot, theta, None, None, None, ("rotate",)), _unit(z), atol=2e-6)
  # Identity geometry leaves z unchanged up to normalisation, for every transform.
  zero, ref = np.zeros(6), np.full(6, obj.REFERENCE_MARGIN)
  for norm in ("reference", "crop"):
    out = peclr_undo(
      z, zero, np.zeros((6, 2)), np.full(6, 200.0), ref, ("translate", "rotate", "scale"), translation_norm=norm
    )
    np.testing.assert_allclose(out, _unit(z), atol=1e-6)


def test_peclr_stop_gradients():
  """Jacobian wrt the points is block-diagonal (no flow into centroid or extent); the true derivative is not."""
  rng = np.random.default_rng(5)
  p = jnp.asarray(rng.normal(size=(64, 2)) + 1.0, jnp.float32)
  theta, jit, m = 0.7, jnp.array([9.0, -5.0]), 1.4
  f = lambda p: obj._undo_points(p, theta, jit, 150.0, m, frozenset(obj._GEOMETRIC), "crop", 128, 1.25)
  jac = np.asarray(jax.jit(jax.jacobian(f))(p))  # [64, 2, 64, 2]
  a, b = np.cos(-theta), np.sin(-theta)
  lin = np.array([[a, b], [-b, a]]) * m / 1.25
  np.testing.assert_allclose(jac, np.einsum("ij,kl->ikjl", np.eye(64), lin), atol=1e-6)
  # Central differences see the centroid and extent: a case where stop_gradient changes the gradient.
  e = 1e-2 * np.eye(128, dtype=np.float32)[:4].reshape(4, 64, 2)  # perturb points 0 and 1
  num = (jax.jit(jax.vmap(f))(p + e) - jax.jit(jax.vmap(f))(p - e)) / 2e-2
  auto = np.moveaxis(jac.reshape(64, 2, 128)[:, :, :4], -1, 0)
  assert np.abs(num - auto).max() > 1e-3
  # Full loss: finite gradients.
  z1, z2 = rng.normal(size=(2, 8, 128)).astype(np.float32)
  geo = {
    "angle": rng.uniform(-1, 1, 8),
    "jitter_px": rng.uniform(-14, 14, (8, 2)),
    "side": np.full(8, 150.0),
    "margin": rng.uniform(0.9, 1.5, 8),
  }
  grad = jax.jit(jax.grad(obj.peclr_loss), static_argnames="transforms")
  g = grad(z1, z2, geo, geo, transforms=("translate", "rotate", "scale"))
  assert np.isfinite(g).all()


def test_peclr_loss_sees_equivariance():
  """A view pair that differs only by the recorded geometry is a perfect positive after undoing it."""
  rng = np.random.default_rng(6)
  p0 = rng.normal(size=(8, 64, 2))
  theta, jitter = rng.uniform(-0.8, 0.8, 8), rng.uniform(-14, 14, (8, 2))
  z2 = np.stack([_augment_points(p0[i], theta[i], jitter[i], 128.0, 1.25, "reference") for i in range(8)])
  g1 = {"angle": np.zeros(8), "jitter_px": np.zeros((8, 2))}
  g2 = {"angle": theta, "jitter_px": jitter}
  z1 = p0.reshape(8, -1)
  z2 = z2.reshape(8, -1)
  np.testing.assert_allclose(peclr_loss(z1, z2, g1, g2), nt_xent(z1, z1), rtol=1e-5)
  assert peclr_loss(z1, z2, g1, g2) < nt_xent(z1, z2) - 0.1


def test_peclr_argument_errors():
  z = np.ones((2, 4))
  with pytest.raises(ValueError, match="unknown"):
    obj.peclr_undo(z, None, None, None, None, ("flip",))
  with pytest.raises(ValueError, match="side"):
    obj.peclr_undo(z, None, np.zeros((2, 2)), None, None, ("translate",), translation_norm="crop")
  with pytest.raises(ValueError, match="even"):
    obj.peclr_undo(np.ones((2, 3)), np.zeros(2), None, None, None, ("rotate",))


# ---------------------------------------------------------------------------------------------------------------------
# Relative


def test_relative_targets_sign_and_wrap():
  deg = np.deg2rad
  p1 = {
    "angle": deg(np.array([170.0, 10.0, -180.0])),
    "jitter_px": np.array([[4.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
    "side": np.array([100.0, 200.0, 50.0]),
    "margin": np.array([1.5, 1.0, 1.2]),
    "color": np.array([[0.5, 0.2, 1.0, 20.0], [0.1, 0.1, 0.5, 5.0], [0.0, 0.0, 0.0, 0.0]]),
  }
  p2 = {
    "angle": deg(np.array([-170.0, 30.0, 0.0])),
    "jitter_px": np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
    "side": np.array([50.0, 100.0, 50.0]),
    "margin": np.array([1.0, 1.0, 1.2]),
    "color": np.array([[0.25, 0.2, 0.5, 5.0], [0.1, 0.1, 0.5, 5.0], [0.0, 0.0, 0.0, 0.0]]),
  }
  t = obj.relative_targets(p1, p2, ("rotate", "crop", "scale", "color_jitter"))
  assert {k: v.shape for k, v in t.items()} == {
    "rotate": (3, 1),
    "crop": (3, 2),
    "scale": (3, 1),
    "color_jitter": (3, 4),
  }
  assert {k: v.shape[1] for k, v in t.items()} == {k: obj.RELATIVE_DIMS[k] for k in t}
  # 170° − (−170°) = 340° wraps to −20°; 10° − 30° = −20°; −180° is π (the interval is (−π, π]).
  np.testing.assert_allclose(t["rotate"][:, 0], [-0.349066, -0.349066, np.pi], atol=1e-6)
  np.testing.assert_allclose(
    obj.relative_targets(p2, p1, ("rotate",))["rotate"][:2, 0], [0.349066, 0.349066], atol=1e-6
  )
  np.testing.assert_allclose(t["crop"], [[0.0, 0.0], [0.0, 0.01], [0.0, 0.0]], atol=1e-7)  # fractions of the crop
  np.testing.assert_allclose(t["scale"][:, 0], [np.log(1.5), 0.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(t["color_jitter"][0], [0.25, 0.0, 1.0, 1.0], atol=1e-7)  # bias 15 / 15
  raw = obj.relative_targets(p1, p2, ("color_jitter",), color_scale=1.0)["color_jitter"]
  np.testing.assert_allclose(raw[0], [0.25, 0.0, 0.5, 15.0], atol=1e-6)
  # Nested {"geo": ..., "params": ...} views work the same.
  nested = lambda p: {"geo": {k: v for k, v in p.items() if k != "color"}, "params": {"color": p["color"]}}
  tn = obj.relative_targets(nested(p1), nested(p2), ("rotate", "translate", "color_jitter"))
  np.testing.assert_allclose(tn["translate"], t["crop"])
  np.testing.assert_allclose(tn["color_jitter"], t["color_jitter"])


def test_relative_loss_uncertainty_weighting():
  rng = np.random.default_rng(7)
  targets = {
    "rotate": np.deg2rad([[-179.0], [10.0]]),
    "crop": rng.normal(size=(2, 2)),
    "color_jitter": rng.normal(size=(2, 4)),
  }
  preds = {
    "rotate": np.deg2rad([[179.0], [13.0]]),
    "crop": rng.normal(size=(2, 2)),
    "color_jitter": rng.normal(size=(2, 4)),
  }
  s = {"rotate": 0.3, "crop": -0.2, "color_jitter": 0.0}
  total, losses = jax.jit(obj.relative_loss)(preds, targets, s)
  want = {
    "rotate": np.deg2rad(2.5),  # 179° vs −179° is a 2° error, 13° vs 10° a 3° one
    "crop": np.abs(targets["crop"] - preds["crop"]).mean(),
    "color_jitter": np.abs(targets["color_jitter"] - preds["color_jitter"]).mean(),
  }
  for k in want:
    np.testing.assert_allclose(losses[k], want[k], rtol=1e-5)
  np.testing.assert_allclose(total, sum(want[k] / np.exp(s[k]) + s[k] for k in want), rtol=1e-5)
  # Optimum over s is s = log L: zero gradient there, non-zero elsewhere.
  opt = {k: jnp.log(v) for k, v in losses.items()}
  grad = jax.jit(jax.grad(obj.uncertainty_weighting, 1))
  g = grad(losses, opt)
  np.testing.assert_allclose([g[k] for k in want], 0.0, atol=1e-6)
  g = grad(losses, {k: v + 0.5 for k, v in opt.items()})
  assert all(abs(float(g[k])) > 0.1 for k in want)
  # Gradients reach the predictions.
  gp = jax.jit(jax.grad(lambda p: obj.relative_loss(p, targets, s)[0]))(preds)
  assert all(np.isfinite(v).all() and np.abs(v).max() > 0 for v in gp.values())


def test_combine():
  losses = {"nt_xent": jnp.float32(2.0), "relative": jnp.float32(3.0)}
  assert float(obj.combine(losses)) == 5.0
  assert float(obj.combine(losses, {"relative": 0.1})) == pytest.approx(2.3)
  with pytest.raises(ValueError):
    obj.combine(losses, {"peclr": 1.0})
