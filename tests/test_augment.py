"""On-device augmentation: geometry against markers and projection, inverse rotation, colour ops, sampling."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from peclr_jax import augment

S, OUT = 64, 48
MEAN, STD = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)


def _cfg(ops, **kw):
  cfg = augment.default_config()
  cfg.ops, cfg.out_size = tuple(ops), OUT
  cfg.update(kw)
  return cfg


_JITTED = {}  # id(cfg)[, batch] -> (cfg, jitted fn); holding cfg keeps its id from being reused


def _apply(cfg, images, uv, K, valid, params):
  if id(cfg) not in _JITTED:
    _JITTED[id(cfg)] = cfg, jax.jit(lambda *a: augment.apply(*a, cfg))
  return jax.tree.map(np.asarray, _JITTED[id(cfg)][1](images, uv, K, valid, params))


def _pixels(x):
  """Normalised output -> 0-255 floats."""
  return (np.asarray(x) * STD + MEAN) * 255


def _sample(key, b, cfg):
  """Jitted `sample` (eager vmap dispatches op by op) as writable numpy arrays."""
  if (id(cfg), b) not in _JITTED:
    _JITTED[id(cfg), b] = cfg, jax.jit(lambda k: augment.sample(k, b, cfg))
  return jax.tree.map(np.array, _JITTED[id(cfg), b][1](key))


def _params(cfg, b, **kw):
  """Sampled params for b examples with some entries overridden (broadcast to [b, ...])."""
  p = _sample(jax.random.key(0), b, cfg)
  for k, v in kw.items():
    p[k] = np.broadcast_to(np.asarray(v, p[k].dtype), p[k].shape).copy()
  return p


def _project(xyz, K):
  p = np.einsum("...ij,...kj->...ki", K, xyz)
  return p[..., :2] / p[..., 2:3]


def _smooth_image(b, size, seed=0):
  """Low-frequency colour images, so bilinear resampling loses little."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] + 0.5
  out = np.zeros((b, size, size, 3))
  for i in range(b):
    for c in range(3):
      fx, fy, ph = rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05), rng.uniform(0, 6.3)
      out[i, ..., c] = 128 + 100 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
  return out.astype(np.uint8)


def test_rotate_then_unrotate_restores_the_interior():
  # Four valid joints on a circle of radius S/2 about the image centre: with margin 1, jitter 0 and out = S the
  # crop is the whole image, so T is the pure rotation about the centre.
  cfg = _cfg(["rotate"], out_size=S)
  uv = np.zeros((2, 21, 2), np.float32)
  uv[:, :4] = [[0, S / 2], [S, S / 2], [S / 2, 0], [S / 2, S]]
  valid = np.zeros((2, 21), bool)
  valid[:, :4] = True
  K = np.tile(np.eye(3, dtype=np.float32), (2, 1, 1))
  images = _smooth_image(2, S)
  theta = np.array([0.4, -0.9], np.float32)
  x1, uv1, K1, g1 = _apply(cfg, images, uv, K, valid, _params(cfg, 2, angle=theta, jitter=0.0, margin=1.0))
  np.testing.assert_allclose(g1["side"], S, rtol=1e-5)
  x2, uv2, K2, g2 = _apply(cfg, _pixels(x1), uv1, K1, valid, _params(cfg, 2, angle=-theta, jitter=0.0, margin=1.0))
  np.testing.assert_allclose(g2["T"] @ g1["T"], np.tile(np.eye(3), (2, 1, 1)), atol=1e-4)
  np.testing.assert_allclose(uv2, uv, atol=1e-3)
  np.testing.assert_allclose(K2, K, atol=1e-4)
  yy, xx = np.mgrid[:S, :S] + 0.5
  interior = np.hypot(xx - S / 2, yy - S / 2) < 0.35 * S
  err = np.abs(_pixels(x2) - images)[:, interior]
  assert err.mean() < 2.0 and err.max() < 12.0, (err.mean(), err.max())
  # The rotated view itself differs: the round trip is not trivially the identity.
  assert np.abs(_pixels(x1) - images)[:, interior].mean() > 20


def test_positive_angle_turns_content_counter_clockwise():
  # A joint right of the centre moves up (smaller y) for a small positive angle: OpenCV's convention, y down.
  T = np.asarray(augment.rotation(jnp.float32(0.1), jnp.array([10.0, 10.0])))
  x, y, _ = T @ [20.0, 10.0, 1.0]
  assert x < 20 and y < 10


def _markers(uv, sigma=1.4):
  yy, xx = np.mgrid[:S, :S] + 0.5
  img = np.zeros((S, S))
  for u, v in uv:
    img += 255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
  return np.repeat(np.clip(img, 0, 255)[..., None], 3, -1).round().astype(np.uint8)


@pytest.mark.parametrize("mode", ["symmetric", "reference"])
def test_keypoints_follow_the_image_content(mode):
  b = 6
  pts = np.array([[32.3, 31.6], [12.7, 20.2], [51.1, 18.4], [20.5, 50.3], [47.9, 49.1]], np.float32)
  uv = np.zeros((b, 21, 2), np.float32)
  uv[:, [0, 4, 8, 12, 16]] = pts
  valid = np.zeros((b, 21), bool)
  valid[:, [0, 4, 8, 12, 16]] = True
  K = np.tile(np.eye(3, dtype=np.float32), (b, 1, 1))
  images = np.tile(_markers(pts)[None], (b, 1, 1, 1))
  cfg = _cfg(["rotate", "crop", "scale"], jitter_mode=mode)
  p = _sample(jax.random.key(3), b, cfg)
  p["angle"][0], p["jitter"][0], p["margin"][0] = 0.5, (0.07, -0.05), 1.3  # one known, large draw
  x, uv2, _, geo = _apply(cfg, images, uv, K, valid, p)
  np.testing.assert_allclose(geo["jitter_px"], p["jitter"] * geo["side"][:, None], rtol=1e-5)
  img = _pixels(x).mean(-1)
  yy, xx = np.mgrid[:OUT, :OUT] + 0.5
  checked = 0
  for i in range(b):
    for u, v in uv2[i, [0, 4, 8, 12, 16]]:
      if not (5 < u < OUT - 5 and 5 < v < OUT - 5):
        continue  # the marker may be cut by the crop border
      w = img[i] * (np.hypot(xx - u, yy - v) < 4.5)
      c = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
      assert np.hypot(*(c - (u, v))) < 0.15, (i, c, (u, v))  # measured error ~0.03 px
      checked += 1
  assert checked >= 3 * b


def test_projection_with_updated_K_matches_updated_uv():
  b, rng = 8, np.random.default_rng(1)
  xyz = np.concatenate([rng.uniform(-0.04, 0.04, (b, 21, 2)), rng.uniform(0.45, 0.6, (b, 21, 1))], -1)
  K = np.tile(np.array([[300.0, 0, S / 2], [0, 310.0, S / 2 + 1], [0, 0, 1]], np.float32), (b, 1, 1))
  uv = _project(xyz, K).astype(np.float32)
  valid = rng.uniform(size=(b, 21)) < 0.8
  cfg = _cfg(["rotate", "crop", "scale"])
  p = _sample(jax.random.key(5), b, cfg)
  _, uv2, K2, geo = _apply(cfg, _smooth_image(b, S), uv, K, valid, p)
  np.testing.assert_allclose(_project(xyz, K2.astype(np.float64)), uv2, atol=2e-3)
  np.testing.assert_allclose(K2, geo["T"] @ K, rtol=1e-5, atol=1e-4)
  # The crop side is 2 r margin about the valid joints' mean; the joint farthest out lands out / (2 margin) from
  # the centre of the un-jittered window.
  c = (uv * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
  r = np.max(np.linalg.norm(uv - c[:, None], axis=-1) * valid, 1)
  np.testing.assert_allclose(geo["side"], 2 * r * p["margin"], rtol=1e-5)
  centre = OUT / 2 - p["jitter"] * OUT
  far = np.max(np.linalg.norm(uv2 - centre[:, None], axis=-1) * valid, 1)
  np.testing.assert_allclose(far, OUT / (2 * p["margin"]), rtol=1e-4)


def test_appearance_ops_never_move_keypoints():
  b = 8
  rng = np.random.default_rng(2)
  uv = rng.uniform(16, 48, (b, 21, 2)).astype(np.float32)
  valid = np.ones((b, 21), bool)
  K = np.tile(np.eye(3, dtype=np.float32), (b, 1, 1))
  images = rng.integers(0, 256, (b, S, S, 3)).astype(np.uint8)
  on = _cfg(augment.OPS, p_sobel=1.0, p_cut_out=1.0, p_blur=1.0, p_noise=1.0, p_color_drop=1.0)
  geo_only = _cfg(["rotate", "crop", "scale"])
  p = _sample(jax.random.key(7), b, on)
  assert all(p[op].all() for op in augment.FLAG_OPS)
  xa, uva, Ka, ga = _apply(on, images, uv, K, valid, p)
  xg, uvg, Kg, gg = _apply(geo_only, images, uv, K, valid, p)
  np.testing.assert_array_equal(uva, uvg)
  np.testing.assert_array_equal(Ka, Kg)
  np.testing.assert_array_equal(ga["T"], gg["T"])
  assert xa.dtype == np.float32 and xa.shape == (b, OUT, OUT, 3) and np.isfinite(xa).all()
  assert np.abs(xa - xg).mean() > 0.1
  # The last op, colour drop, leaves grey images; values stay in [0, 255].
  px = _pixels(xa)
  np.testing.assert_allclose(px[..., 0], px[..., 2], atol=1e-3)
  assert px.min() > -1e-3 and px.max() < 255 + 1e-3
  # With every flag off and identity colour params the same config leaves the geometric output unchanged.
  off = {**p, **{op: np.zeros_like(p[op]) for op in augment.FLAG_OPS}, "color": np.tile([1.0, 1.0, 1.0, 0.0], (b, 1))}
  xo, *_ = _apply(on, images, uv, K, valid, off)
  np.testing.assert_allclose(_pixels(xo), _pixels(xg), atol=2e-3)


def test_cut_out_sits_on_its_joint():
  b = 4
  uv = np.tile(np.random.default_rng(3).uniform(12, 52, (1, 21, 2)).astype(np.float32), (b, 1, 1))
  valid = np.ones((b, 21), bool)
  valid[3, 7] = False  # unlabelled joint: the cut-out falls back to the hand centre
  K = np.tile(np.eye(3, dtype=np.float32), (b, 1, 1))
  cfg = _cfg(["rotate", "crop", "cut_out"], p_cut_out=1.0)
  p = _params(cfg, b, cut_joint=7, cut_size=0.25, cut_value=200.0)
  x, uv2, _, geo = _apply(cfg, np.zeros((b, S, S, 3), np.uint8), uv, K, valid, p)
  box = np.isclose(_pixels(x).mean(-1), 200, atol=0.5)
  assert (box.sum((1, 2)) == 12**2).all()  # int(0.25 * 48) squared
  yy, xx = np.mgrid[:OUT, :OUT] + 0.5
  centre = np.stack([(xx * box).sum((1, 2)), (yy * box).sum((1, 2))], -1) / box.sum((1, 2))[:, None]
  c = uv[3][valid[3]].mean(0)  # the hand centre: the mean of the valid joints
  target = np.concatenate([uv2[:3, 7], augment.transform_points(geo["T"][3], c)[None]])
  np.testing.assert_allclose(centre, target, atol=1.0)


def test_sobel_and_blur_match_scipy():
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 255, (OUT, OUT, 3)).astype(np.float32)
  g = x @ np.array(augment.LUMA, np.float32)
  ref = ndimage.sobel(g, axis=1, mode="mirror") + ndimage.sobel(g, axis=0, mode="mirror")
  np.testing.assert_allclose(np.asarray(jax.jit(augment.sobel)(x))[..., 1], np.clip(ref, 0, 255), atol=1e-2)
  sigma, k = 1.3, augment.blur_kernel_size(OUT)
  assert k == 5
  t = np.arange(k) - k // 2
  w = np.exp(-(t**2) / (2 * sigma**2))
  ref = ndimage.correlate1d(ndimage.correlate1d(x, w / w.sum(), 0, mode="mirror"), w / w.sum(), 1, mode="mirror")
  np.testing.assert_allclose(np.asarray(jax.jit(augment.blur)(x, sigma)), ref, atol=1e-2)
  assert augment.blur_kernel_size(128) == 13 and augment.blur_kernel_size(32) == 3


def test_hsv_matches_colorsys_and_identity_jitter_is_a_no_op():
  rng = np.random.default_rng(5)
  rgb = rng.uniform(size=(500, 3)).astype(np.float32)
  hsv = np.asarray(jax.jit(augment.rgb_to_hsv)(jnp.asarray(rgb)))
  ref = np.array([colorsys.rgb_to_hsv(*c) for c in rgb.astype(np.float64)])
  dh = np.abs(hsv[:, 0] - ref[:, 0])
  assert np.minimum(dh, 1 - dh).max() < 1e-5
  np.testing.assert_allclose(hsv[:, 1:], ref[:, 1:], atol=1e-5)
  hsv_in = rng.uniform(size=(500, 3)).astype(np.float32)
  ref = np.array([colorsys.hsv_to_rgb(*c) for c in hsv_in.astype(np.float64)])
  np.testing.assert_allclose(np.asarray(jax.jit(augment.hsv_to_rgb)(jnp.asarray(hsv_in))), ref, atol=1e-5)
  round_trip = jax.jit(lambda c: augment.hsv_to_rgb(augment.rgb_to_hsv(c)))
  np.testing.assert_allclose(np.asarray(round_trip(rgb)), rgb, atol=1e-5)
  greys = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]], np.float32)  # hue undefined: 0 as in colorsys
  np.testing.assert_allclose(np.asarray(jax.jit(augment.rgb_to_hsv)(jnp.asarray(greys)))[:, :2], 0)
  jitter = jax.jit(augment.color_jitter)
  img = jnp.asarray(rng.uniform(0, 255, (16, 16, 3)).astype(np.float32))
  np.testing.assert_allclose(np.asarray(jitter(img, jnp.array([1.0, 1.0, 1.0, 0.0]))), img, atol=1e-3)
  # Value gain/bias act on max(r, g, b): a grey pixel at 100 becomes 100 * 0.5 + 20.
  out = jitter(jnp.full((1, 1, 3), 100.0), jnp.array([0.3, 0.2, 0.5, 20.0]))
  np.testing.assert_allclose(np.asarray(out), 70.0, atol=1e-3)
  # Saturation 0 gives grey at the value (the max channel).
  out = np.asarray(jitter(jnp.array([[[200.0, 50.0, 10.0]]]), jnp.array([1.0, 0.0, 1.0, 0.0])))
  np.testing.assert_allclose(out, 200.0, atol=1e-3)


def test_sampling_is_reproducible_and_respects_ranges_and_probabilities():
  cfg = _cfg(augment.OPS, p_blur=0.2, p_noise=0.8)
  base = jax.random.key(11)
  a = _sample(jax.random.fold_in(base, 3), 64, cfg)
  b = _sample(jax.random.fold_in(base, 3), 64, cfg)
  c = _sample(jax.random.fold_in(base, 4), 64, cfg)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a["angle"], c["angle"]) and not np.allclose(a["jitter"], c["jitter"])
  assert len(np.unique(np.asarray(a["angle"]))) == 64  # one independent draw per example

  n = 4000
  p = _sample(base, n, cfg)
  assert set(p) >= {"angle", "jitter", "margin", "color", *augment.FLAG_OPS}
  assert p["angle"].shape == (n,) and p["jitter"].shape == (n, 2) and p["color"].shape == (n, 4)
  for op, prob in [("sobel", 0.5), ("cut_out", 0.5), ("blur", 0.2), ("noise", 0.8), ("color_drop", 0.5)]:
    assert p[op].dtype == bool
    assert abs(p[op].mean() - prob) < 5 * np.sqrt(prob * (1 - prob) / n), (op, p[op].mean())
  assert np.abs(p["angle"]).max() <= np.deg2rad(45) + 1e-6 and np.abs(p["angle"]).mean() > np.deg2rad(15)
  assert np.abs(p["jitter"]).max() <= 0.1 and (p["jitter"] < 0).any() and (p["jitter"] > 0).any()
  assert p["margin"].min() >= 0.9 and p["margin"].max() <= 1.5
  lo, hi = np.array([0.01, 0.01, 0.5, 5.0]), np.array([1.0, 1.0, 1.0, 20.0])
  assert (p["color"] >= lo).all() and (p["color"] <= hi).all()
  assert p["cut_joint"].min() == 0 and p["cut_joint"].max() == 19

  ref = _sample(base, n, _cfg(["crop"], jitter_mode="reference"))
  assert ref["jitter"].min() >= 0 and ref["jitter"].max() <= 0.1  # the origin moves right/down only
  assert (ref["angle"] == 0).all() and (ref["margin"] == 1.25).all()
  np.testing.assert_array_equal(ref["color"], np.tile([1.0, 1.0, 1.0, 0.0], (n, 1)))
  assert not any(ref[op].any() for op in augment.FLAG_OPS)


def test_views_are_independent_and_reproducible():
  b, cfg = 4, _cfg(["rotate", "crop", "scale", "color_jitter"])
  rng = np.random.default_rng(6)
  batch = dict(
    image=rng.integers(0, 256, (b, S, S, 3)).astype(np.uint8),
    uv=rng.uniform(16, 48, (b, 21, 2)).astype(np.float32),
    K=np.tile(np.eye(3, dtype=np.float32), (b, 1, 1)),
    valid=np.ones((b, 21), bool),
  )
  f = jax.jit(lambda key, batch: augment.views(key, batch, cfg))
  v1, v2 = f(jax.random.key(0), batch)
  again = f(jax.random.key(0), batch)
  jax.tree.map(np.testing.assert_array_equal, (v1, v2), again)
  assert not np.allclose(v1[3]["angle"], v2[3]["angle"])
  assert v1[0].shape == (b, OUT, OUT, 3) and v1[1].shape == (b, 21, 2) and v1[2].shape == (b, 3, 3)
  assert set(v1[4]) == {"angle", "jitter_px", "side", "margin", "T"}


def test_box_only_images_use_the_centre_and_fallback_radius():
  b, cfg = 2, _cfg(["crop", "scale"])
  p = _params(cfg, b, jitter=0.0, margin=1.5)
  uv = np.zeros((b, 21, 2), np.float32)
  valid = np.zeros((b, 21), bool)
  K = np.tile(np.eye(3, dtype=np.float32), (b, 1, 1))
  x, uv2, _, geo = _apply(cfg, _smooth_image(b, S), uv, K, valid, p)
  np.testing.assert_allclose(geo["side"], 2 * cfg.fallback_radius * S * 1.5, rtol=1e-5)
  np.testing.assert_allclose(augment.transform_points(geo["T"][0], np.array([S / 2, S / 2])), OUT / 2, atol=1e-4)
  assert np.isfinite(x).all()


def test_unknown_op_is_named():
  with pytest.raises(ValueError, match="'flip'"):
    augment.sample(jax.random.key(0), 2, _cfg(["rotate", "flip"]))
  with pytest.raises(ValueError, match="jitter_mode"):
    augment.sample(jax.random.key(0), 2, _cfg(["crop"], jitter_mode="left"))


def test_denormalize_inverts_normalize():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
  np.testing.assert_array_equal(augment.denormalize(augment.normalize(x.astype(np.float32))), x)
