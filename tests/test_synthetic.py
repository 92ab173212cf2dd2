"""The embedded renderer: FreiHAND layout, labels consistent with the pixels, limits, determinism."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from peclr_jax.data import synthetic as S

N_TRAIN, N_EVAL, VERSIONS = 24, 6, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  S.generate(out, N_TRAIN, N_EVAL, seed=3, versions=VERSIONS, workers=1, progress=False)
  return out


def _load(root, split, name):
  with open(os.path.join(root, f"{split}_{name}.json")) as f:
    return np.array(json.load(f))


def _project(xyz, K):  # independent pinhole projection
  x = xyz @ np.swapaxes(K, -1, -2)
  return x[..., :2] / x[..., 2:]


def test_freihand_layout(root):
  for split, n, v in (("training", N_TRAIN, VERSIONS), ("evaluation", N_EVAL, 1)):
    xyz, K, scale = (_load(root, split, k) for k in ("xyz", "K", "scale"))
    assert xyz.shape == (n, 21, 3) and K.shape == (n, 3, 3) and scale.shape == (n,)
    assert sorted(os.listdir(os.path.join(root, split, "rgb"))) == [f"{i:08d}.jpg" for i in range(n * v)]
    assert sorted(os.listdir(os.path.join(root, split, "mask"))) == [f"{i:08d}.jpg" for i in range(n)]
    with Image.open(os.path.join(root, split, "rgb", "00000000.jpg")) as im:
      assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"


def test_scale_is_the_middle_mcp_pip_bone(root):
  xyz, scale = _load(root, "training", "xyz"), _load(root, "training", "scale")
  np.testing.assert_allclose(scale, np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=-1), rtol=0, atol=1e-12)


def test_camera_and_distance(root):
  xyz, K = _load(root, "training", "xyz"), _load(root, "training", "K")
  assert np.all(np.abs(K[:, 0, 0] / 388.9 - 1) <= 0.031) and np.all(np.abs(K[:, 1, 1] / K[:, 0, 0] - 1) < 0.006)
  assert np.all(np.abs(K[:, :2, 2] - 112) <= 2.0001)
  np.testing.assert_array_equal(K[:, 2], np.tile([0, 0, 1], (len(K), 1)))
  z = xyz[..., 2].mean(-1)  # the centroid's depth is what the renderer places
  assert np.all((z > 0.3 - 1e-5) & (z < 0.8 + 1e-5))


def test_joints_project_onto_the_mask(root):
  """Every joint inside the image lands on hand pixels of its mask (joints sit inside the rendered body)."""
  xyz, K = _load(root, "training", "xyz"), _load(root, "training", "K")
  uv = _project(xyz, K)
  checked = 0
  for i in range(N_TRAIN):
    mask = np.asarray(Image.open(os.path.join(root, "training", "mask", f"{i:08d}.jpg")).convert("L"))
    inside = ((uv[i] >= 0) & (uv[i] < 224)).all(-1)
    px = np.floor(uv[i][inside]).astype(int)
    assert np.all(mask[px[:, 1], px[:, 0]] > 127), f"sample {i}: joints {np.where(inside)[0]} off the mask"
    checked += inside.sum()
    # The hand covers a plausible area and the mask has soft (supersampled) edges.
    assert 0.005 < (mask > 127).mean() < 0.9
    assert ((mask > 20) & (mask < 235)).any()
  assert checked > 0.95 * N_TRAIN * 21


def test_bone_lengths_within_limits(root):
  xyz = _load(root, "training", "xyz") * 100  # cm
  lo, hi = S.SIZE_RANGE[0] * (1 - S.BONE_JITTER), S.SIZE_RANGE[1] * (1 + S.BONE_JITTER)
  for f in range(5):
    nominal = S.THUMB_LENGTHS if f == 0 else S.FINGER_LENGTHS[f - 1]
    j = 1 + 4 * f
    for k in range(3):
      length = np.linalg.norm(xyz[:, j + k + 1] - xyz[:, j + k], axis=-1)
      assert np.all(length >= nominal[k] * lo - 1e-3) and np.all(length <= nominal[k] * hi + 1e-3), (f, k)
  # Hand sizes vary by about +-15 %: the middle finger's proximal bone spans most of that range.
  mid = np.linalg.norm(xyz[:, 10] - xyz[:, 9], axis=-1) / S.FINGER_LENGTHS[1, 0]
  assert mid.max() / mid.min() > 1.15


def _angle(a, b):
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _palm_rotation(xyz, size):
  """Rotation from the palm frame to the camera (Kabsch on wrist, MCPs and thumb CMC, known up to scale)."""
  model = np.concatenate([[[0, 0, 0]], [S.THUMB_BASE], S.FINGER_BASES]) * size
  obs = xyz[[0, 1, 5, 9, 13, 17]] * 100
  a, b = model - model.mean(0), obs - obs.mean(0)
  u, _, vt = np.linalg.svd(b.T @ a)
  d = np.sign(np.linalg.det(u @ vt))
  return u @ np.diag([1, 1, d]) @ vt, d


def test_joint_angles_within_limits(root):
  xyz = _load(root, "training", "xyz")
  frames, _ = S.finger_rest_frames()
  tol = 0.5
  for x in xyz:
    for f in range(1, 5):  # PIP and DIP flexion = angle between consecutive bones
      j = 1 + 4 * f
      pip, dip = _angle(x[j + 1] - x[j], x[j + 2] - x[j + 1]), _angle(x[j + 2] - x[j + 1], x[j + 3] - x[j + 2])
      assert pip <= S.FINGER_LIMITS[2, 1] + tol and dip <= max(abs(S.FINGER_LIMITS[3])) + tol
    thumb_mcp, thumb_ip = _angle(x[2] - x[1], x[3] - x[2]), _angle(x[3] - x[2], x[4] - x[3])
    assert thumb_mcp <= max(abs(S.THUMB_LIMITS[2])) + tol and thumb_ip <= max(abs(S.THUMB_LIMITS[3])) + tol
    # MCP flexion / abduction, recovered from the proximal bone in the finger's rest frame.
    size = np.linalg.norm(x[5] - x[17]) * 100 / np.linalg.norm(S.FINGER_BASES[0] - S.FINGER_BASES[3])
    rot, det = _palm_rotation(x, size)
    assert det > 0, "the palm frame is mirrored: not a right hand"
    for f in range(4):
      j = 5 + 4 * f
      d = frames[f].T @ rot.T @ (x[j + 1] - x[j])
      d /= np.linalg.norm(d)
      flex, abd = np.degrees(np.arcsin(d[2])), np.degrees(np.arctan2(-d[0], d[1]))
      assert S.FINGER_LIMITS[1, 0] - tol <= flex <= S.FINGER_LIMITS[1, 1] + tol
      if flex < 85:  # abduction is ill-defined when the bone points along the palm normal
        assert abs(abd) <= S.FINGER_LIMITS[0, 1] + 1.0


def test_pose_families_are_distinct():
  rng = np.random.default_rng(0)
  pip = {k: np.mean([S.sample_pose(rng, k)[0][:, 2].mean() for _ in range(50)]) for k in ("open", "fist")}
  assert pip["fist"] > pip["open"] + 50
  point = np.array([S.sample_pose(rng, "point")[0][:, 2] for _ in range(50)])
  assert point[:, 0].mean() + 50 < point[:, 1:].mean()  # the index finger is the straight one


def test_versions_share_hand_but_not_appearance(root):
  a = np.asarray(Image.open(os.path.join(root, "training", "rgb", f"{0:08d}.jpg")), np.float32)
  b = np.asarray(Image.open(os.path.join(root, "training", "rgb", f"{N_TRAIN:08d}.jpg")), np.float32)
  assert np.abs(a - b).mean() > 5


def _digest(root):
  h = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f != S.MANIFEST:
        with open(os.path.join(d, f), "rb") as fh:
          h[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return h


def test_same_seed_same_bytes_any_worker_count(root, tmp_path):
  S.generate(str(tmp_path / "a"), N_TRAIN, N_EVAL, seed=3, versions=VERSIONS, workers=2, progress=False)
  assert _digest(str(tmp_path / "a")) == _digest(root)
  S.generate(str(tmp_path / "b"), 4, 0, seed=4, workers=1, progress=False)
  assert _digest(str(tmp_path / "b"))["training_xyz.json"] != _digest(root)["training_xyz.json"]


def test_generate_is_cached_by_spec(tmp_path):
  out = str(tmp_path / "c")
  assert S.generate(out, 2, 1, seed=0, workers=1, progress=False)
  assert not S.generate(out, 2, 1, seed=0, workers=1, progress=False)
  assert S.generate(out, 3, 1, seed=0, workers=1, progress=False)  # another spec re-renders


def test_concurrent_generate_renders_once(tmp_path):
  """Parallel study runs on the same missing set: one renders, the other waits for it and finds the manifest."""
  from concurrent.futures import ThreadPoolExecutor

  out = str(tmp_path / "d")
  with ThreadPoolExecutor(2) as pool:
    wrote = list(pool.map(lambda _: S.generate(out, 6, 2, seed=1, workers=1, progress=False), range(2)))
  assert sorted(wrote) == [False, True]
  assert len(os.listdir(os.path.join(out, "training", "rgb"))) == 6


def test_depth_normals_of_a_tilted_plane():
  """Normals from the z-buffer equal the analytic normal of a plane Z = z0 + a X + b Y."""
  K = np.array([[390.0, 0, 112], [0, 390, 112], [0, 0, 1]])
  z0, a, b = 0.5, 0.3, -0.2
  u = (np.arange(100, dtype=np.float32)[None, :] + 0.5) / S.SS + 60
  v = (np.arange(80, dtype=np.float32)[:, None] + 0.5) / S.SS + 70
  x, y = (u - 112) / 390, (v - 112) / 390
  z = (z0 / (1 - a * x - b * y)).astype(np.float32)  # ray (x, y, 1) * Z meets the plane
  n = np.stack(S.depth_normals(z, np.ones_like(z, bool), u, v, K), -1)
  expect = np.array([a, b, -1.0]) / np.linalg.norm([a, b, -1.0])
  np.testing.assert_allclose(n[2:-2, 2:-2], np.broadcast_to(expect, n[2:-2, 2:-2].shape), atol=2e-3)


def test_ellipsoid_depth_is_exact_for_a_sphere():
  K = np.array([[390.0, 0, 112], [0, 390, 112], [0, 0, 1]])
  c, r = np.array([0.01, -0.02, 0.5]), 0.05
  u = np.arange(0, 448, 3, dtype=np.float32)[None, :] + 0.5
  v = np.arange(0, 448, 3, dtype=np.float32)[:, None] + 0.5
  z = S._ellipsoid(u, v, K, c, np.eye(3) * r)
  d = np.stack(np.broadcast_arrays((u / S.SS - 112) / 390, (v / S.SS - 112) / 390, np.ones_like(u)), -1)
  # |t d - c|^2 = r^2, nearest root
  qa, qb, qc = (d * d).sum(-1), -2 * d @ c, c @ c - r * r
  disc = qb * qb - 4 * qa * qc
  expect = np.where(disc > 0, (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa), np.inf)
  assert np.isfinite(expect).sum() > 50
  np.testing.assert_array_equal(np.isfinite(z), np.isfinite(expect))
  np.testing.assert_allclose(z[np.isfinite(z)], expect[np.isfinite(expect)], atol=5e-5)  # grazing rays: float32


def test_nearer_finger_occludes_farther():
  """Z-buffer: where a near and a far segment overlap on screen, the nearer depth wins."""
  K = np.array([[390.0, 0, 112], [0, 390, 112], [0, 0, 1]])
  near = (np.array([-0.03, 0, 0.4]), np.array([0.03, 0, 0.4]), 0.008, 0.008)
  far = (np.array([0, -0.03, 0.5]), np.array([0, 0.03, 0.5]), 0.008, 0.008)
  h = dict(K=K, cones=[far, near], ellipsoid=(np.array([0, 0, 5.0]), np.eye(3) * 1e-3))
  box, normal, cover = S.render_geometry(h)
  h2 = dict(h, cones=[near, far])  # drawing order must not matter
  _, normal2, cover2 = S.render_geometry(h2)
  np.testing.assert_array_equal(cover, cover2)
  np.testing.assert_allclose(normal[0], normal2[0], atol=1e-6)
  # At the crossing (image centre) the surface faces the camera (the near cylinder's front).
  cy, cx = 112 - box[0].start, 112 - box[1].start
  n = np.array([c[cy, cx] for c in normal])
  assert n[2] / np.linalg.norm(n) < -0.95
