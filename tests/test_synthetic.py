"""The embedded renderer: FreiHAND layout, labels consistent with the pixels, limits, determinism."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from peclr_jax.data import hand_model as H
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
  lo, hi = H.SIZE_RANGE[0] * (1 - H.BONE_JITTER), H.SIZE_RANGE[1] * (1 + H.BONE_JITTER)
  for f in range(5):
    nominal = H.THUMB_LENGTHS if f == 0 else H.FINGER_LENGTHS[f - 1]
    j = 1 + 4 * f
    for k in range(3):
      length = np.linalg.norm(xyz[:, j + k + 1] - xyz[:, j + k], axis=-1)
      assert np.all(length >= nominal[k] * lo - 1e-3) and np.all(length <= nominal[k] * hi + 1e-3), (f, k)
  # Hand sizes vary by about +-15 %: the middle finger's proximal bone spans most of that range.
  mid = np.linalg.norm(xyz[:, 10] - xyz[:, 9], axis=-1) / H.FINGER_LENGTHS[1, 0]
  assert mid.max() / mid.min() > 1.15


def _angle(a, b):
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _palm_rotation(xyz, size):
  """Rotation from the palm frame to the camera (Kabsch on wrist, MCPs and thumb CMC, known up to scale)."""
  model = np.concatenate([[[0, 0, 0]], [H.THUMB_BASE], H.FINGER_BASES]) * size
  obs = xyz[[0, 1, 5, 9, 13, 17]] * 100
  a, b = model - model.mean(0), obs - obs.mean(0)
  u, _, vt = np.linalg.svd(b.T @ a)
  d = np.sign(np.linalg.det(u @ vt))
  return u @ np.diag([1, 1, d]) @ vt, d


def test_joint_angles_within_limits(root):
  xyz = _load(root, "training", "xyz")
  frames, _ = H.finger_rest_frames()
  tol = 0.5
  for x in xyz:
    for f in range(1, 5):  # PIP and DIP flexion = angle between consecutive bones
      j = 1 + 4 * f
      pip, dip = _angle(x[j + 1] - x[j], x[j + 2] - x[j + 1]), _angle(x[j + 2] - x[j + 1], x[j + 3] - x[j + 2])
      assert pip <= H.FINGER_LIMITS[2, 1] + tol and dip <= max(abs(H.FINGER_LIMITS[3])) + tol
    thumb_mcp, thumb_ip = _angle(x[2] - x[1], x[3] - x[2]), _angle(x[3] - x[2], x[4] - x[3])
    assert thumb_mcp <= max(abs(H.THUMB_LIMITS[2])) + tol and thumb_ip <= max(abs(H.THUMB_LIMITS[3])) + tol
    # MCP flexion / abduction, recovered from the proximal bone in the finger's rest frame.
    size = np.linalg.norm(x[5] - x[17]) * 100 / np.linalg.norm(H.FINGER_BASES[0] - H.FINGER_BASES[3])
    rot, det = _palm_rotation(x, size)
    assert det > 0, "the palm frame is mirrored: not a right hand"
    for f in range(4):
      j = 5 + 4 * f
      d = frames[f].T @ rot.T @ (x[j + 1] - x[j])
      d /= np.linalg.norm(d)
      flex, abd = np.degrees(np.arcsin(d[2])), np.degrees(np.arctan2(-d[0], d[1]))
      assert H.FINGER_LIMITS[1, 0] - tol <= flex <= H.FINGER_LIMITS[1, 1] + tol
      if flex < 85:  # abduction is ill-defined when the bone points along the palm normal
        assert abs(abd) <= H.FINGER_LIMITS[0, 1] + 1.0


def test_pose_families_are_distinct():
  rng = np.random.default_rng(0)
  pip = {k: np.mean([H.sample_families(rng, k)[0][:, 2].mean() for _ in range(50)]) for k in ("open", "fist")}
  assert pip["fist"] > pip["open"] + 50
  point = np.array([H.sample_families(rng, "point")[0][:, 2] for _ in range(50)])
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
  z, _ = S._ellipsoid(u, v, K, c, np.eye(3) * r)
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
  cone = lambda args: S.Prim("cone", args)
  tiny = S.Prim("ellipsoid", (np.array([0, 0, 5.0]), np.eye(3) * 1e-3))
  g = S.render_geometry(dict(K=K, prims=[cone(far), cone(near), tiny]))
  g2 = S.render_geometry(dict(K=K, prims=[cone(near), cone(far), tiny]))  # drawing order must not matter
  box, normal, cover = g["box"], g["normal"], g["cover"]
  np.testing.assert_array_equal(cover, g2["cover"])
  np.testing.assert_allclose(normal[0], g2["normal"][0], atol=1e-6)
  # At the crossing (image centre) the surface faces the camera (the near cylinder's front).
  cy, cx = 112 - box[0].start, 112 - box[1].start
  n = np.array([c[cy, cx] for c in normal])
  assert n[2] / np.linalg.norm(n) < -0.95


# ---------------------------------------------------------------------------------------------------------------
# The lifelike style.
# ---------------------------------------------------------------------------------------------------------------
LIFELIKE = S.Style.lifelike(objects=0.0)


@pytest.fixture(scope="module")
def lifelike_root(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lifelike"))
  S.generate(out, N_TRAIN, N_EVAL, seed=5, versions=VERSIONS, style=LIFELIKE, workers=1, progress=False)
  return out


def test_lifelike_joints_project_onto_the_mask_and_the_set_is_deterministic(lifelike_root, tmp_path):
  xyz, K = _load(lifelike_root, "training", "xyz"), _load(lifelike_root, "training", "K")
  uv = _project(xyz, K)
  on, inside_total = 0, 0
  for i in range(N_TRAIN):
    mask = np.asarray(Image.open(os.path.join(lifelike_root, "training", "mask", f"{i:08d}.jpg")).convert("L"))
    inside = ((uv[i] >= 0) & (uv[i] < 224)).all(-1)
    px = np.floor(uv[i][inside]).astype(int)
    on += (mask[px[:, 1], px[:, 0]] > 127).sum()
    inside_total += inside.sum()
  assert on == inside_total and inside_total > 0.9 * N_TRAIN * 21
  S.generate(str(tmp_path / "again"), N_TRAIN, N_EVAL, seed=5, versions=VERSIONS, style=LIFELIKE, workers=2,
             progress=False)  # fmt: skip
  assert _digest(str(tmp_path / "again")) == _digest(lifelike_root)


def _palm_normal(xyz):
  """The palm normal (palm side out) in the camera frame, from the joints alone (Kabsch on the palm's joints)."""
  size = np.linalg.norm(xyz[5] - xyz[17]) * 100 / np.linalg.norm(H.FINGER_BASES[0] - H.FINGER_BASES[3])
  rot, _ = _palm_rotation(xyz, size)
  return rot[:, 2]


def _flat_hands(monkeypatch, n):
  """n lifelike hands in the flat gesture (fingers straight, so each last segment's palm side is the palm's),
  drawn without the thumb's nail."""
  sample = H.sample_gestures
  monkeypatch.setattr(H, "sample_gestures", lambda rng: sample(rng, "flat"))
  hands = []
  for i in range(n):
    h = S.sample_hand(np.random.default_rng([9, i]), S.Style.lifelike(objects=0.0, free=0.0))
    thumb_tip = next(p for p in h["prims"] if p.part == S.TIP)  # the thumb comes first; its nail faces sideways
    thumb_tip.part = 0
    hands.append((h, S.render_geometry(h)))
  return hands


def test_nails_are_drawn_on_the_back_and_the_palm_is_the_lighter_side(monkeypatch):
  """Seen from the back (the palm normal, found from the joints, pointing away from the camera) the four fingertips
  show nails; seen from the palm side within 35 degrees they show none (a nail spans about 50 degrees either side of the
  back), and the palm-side weight of the skin is high."""
  nails, palm_weight = {"palm": [], "back": []}, {"palm": [], "back": []}
  for h, g in _flat_hands(monkeypatch, 60):
    toward = -_palm_normal(h["xyz"])[2]  # cosine between the palm normal and the direction to the camera
    side = "palm" if toward > np.cos(np.radians(35)) else "back" if toward < -0.5 else None
    if side:
      nails[side].append(g["materials"][S.NAIL].sum())
      palm_weight[side].append(g["palm"].sum() / g["materials"][S.SKIN].sum())
  assert len(nails["palm"]) >= 8 and len(nails["back"]) >= 8
  assert np.all(np.array(nails["palm"]) < 0.5) and np.median(nails["back"]) > 50  # in output pixels
  assert np.min(palm_weight["palm"]) > 0.6 and np.max(palm_weight["back"]) < 0.3


def test_held_forearm_enters_from_outside_the_image():
  hits = 0
  for i in range(30):
    h = S.sample_hand(np.random.default_rng([11, i]), S.Style.lifelike(objects=0.0, free=0.0))
    g = S.render_geometry(h)
    full = np.zeros((224, 224), np.float32)
    full[g["box"]] = g["cover"]
    hits += max(full[0].max(), full[-1].max(), full[:, 0].max(), full[:, -1].max()) > 0.5
  assert hits >= 27


def test_objects_occlude_the_hand_and_stay_out_of_the_mask():
  seen = 0
  for i in range(40):
    h = S.sample_hand(np.random.default_rng([12, i]), S.Style.lifelike(objects=1.0))
    g = S.render_geometry(h)
    hand = g["materials"][S.SKIN] + g["materials"][S.NAIL]
    thing = g["materials"][S.OBJECT]
    np.testing.assert_allclose(hand + thing + g["materials"][S.SLEEVE], g["cover"], atol=1e-6)
    seen += thing.sum() > 5
  assert seen >= 30


@pytest.mark.parametrize("k", range(1, 12))  # the k shade draws
def test_byte_noise_is_triangular(k):
  # The difference of two independent uniform integers on 0..k, counted over all (k+1)^2 pairs.
  a = np.arange(k + 1)
  want = np.bincount((a[:, None] - a[None, :]).ravel() + k, minlength=2 * k + 1) / (k + 1) ** 2
  got = np.bincount(S.triangular_table(k) + k, minlength=2 * k + 1) / 256
  assert np.abs(got - want).max() <= 1 / 256 + 1e-12
  assert S.triangular_table(k).min() == -k and S.triangular_table(k).max() == k
