"""2.5-D representation and root-depth recovery (reference §4) on synthetic hands and random point clouds."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from peclr_jax import geometry as g
from peclr_jax.data.synthetic import sample_hand

CASES = [(b, r) for b in g.BONES for r in g.ROOTS]


def _hands(n, start=0):
  hs = [sample_hand(np.random.default_rng(i)) for i in range(start, start + n)]
  return np.stack([h["xyz"] for h in hs]), np.stack([h["K"] for h in hs])


def _cloud(rng, n=64):
  """Random 21-point clouds at 0.3-0.8 m inside a FreiHAND-like frustum, and their K."""
  z = rng.uniform(0.3, 0.8, (n, 21))
  xy = rng.uniform(-0.25, 0.25, (n, 21, 2)) * z[..., None]
  K = np.tile(np.array([[390.0, 0, 112], [0, 390, 112], [0, 0, 1]]), (n, 1, 1))
  K[:, :2, :2] *= rng.uniform(0.9, 1.1, (n, 1, 1))
  return np.concatenate([xy, z[..., None]], -1), K


def test_project_unproject_inverse():
  xyz, K = _hands(8)
  np.testing.assert_allclose(g.unproject(g.project(xyz, K), xyz[..., 2], K), xyz, atol=1e-6)
  # Principal point maps to the optical axis.
  np.testing.assert_allclose(g.normalise(K[:, None, :2, 2], K), 0, atol=1e-6)


@pytest.mark.parametrize("bone,root", CASES)
def test_round_trip_float64(bone, root):
  xyz, K = _hands(300)
  with jax.enable_x64(True):
    uv, z_rel, s = g.to_25d(xyz, K, bone, root)
    assert uv.shape == (300, 21, 2) and z_rel.shape == (300, 21) and s.shape == (300,)
    np.testing.assert_allclose(g.root_point(z_rel[..., None], root)[..., 0], 0, atol=1e-12)
    rec = g.from_25d(uv, z_rel, K, bone, root, scale=s)
    assert np.abs(rec - xyz).max() < 1e-5
    # Without `scale` the pose is normalised: the reference bone has length 1.
    n, m = g.BONES[bone]
    unit = g.from_25d(uv, z_rel, K, bone, root)
    np.testing.assert_allclose(np.linalg.norm(unit[:, n] - unit[:, m], axis=-1), 1, atol=1e-9)


@pytest.mark.parametrize("bone,root", CASES)
def test_round_trip_float32(bone, root):
  # float32 loses accuracy when the bone points nearly along the viewing ray (a -> 0), hence a looser bound here.
  xyz, K = _hands(300)
  uv, z_rel, s = g.to_25d(xyz, K, bone, root)
  err = np.abs(g.from_25d(uv, z_rel, K, bone, root, scale=s) - xyz).max((1, 2))
  assert err.max() < 1e-4 and np.median(err) < 1e-5


def test_single_hand_and_numpy_inputs():
  h = sample_hand(np.random.default_rng(0))
  uv, z_rel, s = g.to_25d(h["xyz"], h["K"])
  assert uv.shape == (21, 2) and z_rel.shape == (21,) and s.shape == ()
  np.testing.assert_allclose(g.from_25d(np.asarray(uv), np.asarray(z_rel), h["K"], scale=float(s)), h["xyz"], atol=1e-4)


@pytest.mark.parametrize("bone,root", CASES)
def test_invariant_to_global_scale(bone, root):
  xyz, K = _hands(50)
  uv, z_rel, s = g.to_25d(xyz, K, bone, root)
  for lam in (0.5, 1.7, 3.0):
    uv2, z_rel2, s2 = g.to_25d(xyz * lam, K, bone, root)
    np.testing.assert_allclose(uv2, uv, atol=1e-3)  # pixels
    np.testing.assert_allclose(z_rel2, z_rel, atol=1e-4)
    np.testing.assert_allclose(s2, s * lam, rtol=1e-5)


def _bone_residual(Z, xy, z_rel):
  """|P_n − P_m|² − 1 at normalised root depth(s) Z, from the bone's normalised xy [2, 2] and z_rel [2]."""
  Z = np.asarray(Z, np.float64)[..., None] + z_rel  # [..., 2]
  p = np.concatenate([xy * Z[..., None], Z[..., None]], -1)  # [..., 2, 3]
  return np.sum((p[..., 0, :] - p[..., 1, :]) ** 2, -1) - 1


@pytest.mark.parametrize("bone", list(g.BONES))
def test_quadratic_matches_numeric_roots(bone):
  """Both roots against bracketing + Brent on |P_n(Z) − P_m(Z)|² − 1 built directly from unprojected points."""
  rng = np.random.default_rng(1)
  xyz, K = _cloud(rng, 40)
  n, m = g.BONES[bone]
  with jax.enable_x64(True):
    uv, z_rel, _ = g.to_25d(xyz, K, bone)
    hi, lo = map(np.asarray, g.root_depth(uv, z_rel, K, bone))
    xy, z_rel = np.asarray(g.normalise(uv, K)), np.asarray(z_rel)
  grid = np.linspace(-2000, 2000, 40001)
  for i in range(len(xyz)):
    f = lambda Z, i=i: _bone_residual(Z, xy[i, [n, m]], z_rel[i, [n, m]])
    roots = [brentq(f, grid[j], grid[j + 1], xtol=1e-13) for j in np.nonzero(np.diff(np.sign(f(grid))))[0]]
    assert len(roots) == 2
    np.testing.assert_allclose([hi[i], lo[i]], sorted(roots, reverse=True), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("bone,root", CASES)
def test_one_root_reconstructs_random_clouds(bone, root):
  rng = np.random.default_rng(2)
  xyz, K = _cloud(rng, 500)
  with jax.enable_x64(True):
    uv, z_rel, s = g.to_25d(xyz, K, bone, root)
    errs = [
      np.abs(g.from_25d(uv, z_rel, K, bone, root, scale=s, z_root=z) - xyz).max((1, 2))
      for z in g.root_depth(uv, z_rel, K, bone)
    ]
  assert np.minimum(*errs).max() < 1e-6
  assert (errs[1] < errs[0]).any()  # the cloud includes cases where the larger root is wrong (reference §4.2)


def test_degenerate_inputs_stay_finite():
  # Coincident bone joints in the image (a = 0) and z_rel with no real root (negative discriminant).
  uv = np.full((2, 21, 2), 112.0)
  z_rel = np.zeros((2, 21))
  z_rel[1, 10] = 0.1
  K = np.array([[390.0, 0, 112], [0, 390, 112], [0, 0, 1]])
  for bone in g.BONES:
    assert np.isfinite(np.asarray(g.root_depth(uv, z_rel, K, bone))).all()
    assert np.isfinite(np.asarray(g.from_25d(uv, z_rel, K, bone))).all()


def _refiner_inputs(n=16):
  xyz, K = _hands(n)
  return g.to_25d(xyz, K)[:2] + (K,)


def test_root_refiner_shapes_and_train_mode():
  uv, z_rel, K = _refiner_inputs()
  model = g.RootRefiner()
  v = model.init(jax.random.key(0), uv, z_rel, K, train=False)
  shapes = jax.tree.map(jnp.shape, flax.core.unfreeze(v["params"]))
  assert shapes["fc1"]["kernel"] == (64, 128) and shapes["fc2"]["kernel"] == (128, 128)
  assert shapes["fc3"]["kernel"] == (128, 1)
  assert model.apply(v, uv, z_rel, K, train=False).shape == (16,)
  out, upd = model.apply(v, uv, z_rel, K, train=True, mutable=["batch_stats"])
  assert out.shape == (16,) and "bn1" in upd["batch_stats"]
  # Extra leading dims are batched too.
  assert model.apply(v, uv.reshape(4, 4, 21, 2), z_rel.reshape(4, 4, 21), K.reshape(4, 4, 3, 3), train=False).shape == (
    4,
    4,
  )


def test_root_refiner_zero_init_is_closed_form_and_detached():
  uv, z_rel, K = _refiner_inputs()
  closed = jnp.clip(g.root_depth(uv, z_rel, K)[0], *g.DEPTH_RANGE)
  model = g.RootRefiner(zero_init=True)
  v = model.init(jax.random.key(0), uv, z_rel, K, train=False)
  np.testing.assert_allclose(model.apply(v, uv, z_rel, K, train=False), closed, rtol=1e-6)
  # Zeroing the last layer of a default-initialised refiner does the same.
  v2 = g.RootRefiner().init(jax.random.key(1), uv, z_rel, K, train=False)
  v2 = {**v2, "params": {**v2["params"], "fc3": jax.tree.map(jnp.zeros_like, v2["params"]["fc3"])}}
  np.testing.assert_allclose(g.RootRefiner().apply(v2, uv, z_rel, K, train=False), closed, rtol=1e-6)
  # The closed-form depth is detached: with a zero residual no gradient reaches z_rel.
  grad = jax.grad(lambda z: model.apply(v, uv, z, K, train=False).sum())(z_rel)
  assert np.all(np.asarray(grad) == 0)
  # Depths outside [4, 50] are clamped.
  far = g.RootRefiner(zero_init=True).apply(v, uv, z_rel * 0, K, train=False)
  assert np.all((np.asarray(far) >= 4) & (np.asarray(far) <= 50))
