"""FreiHAND metrics (reference §5): hand-computed cases, the all-zeros anchor, Procrustes properties, and the constant
anchors (evaluate.constant_anchors) with each error's ratio to its anchor."""

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from peclr_jax import evaluate, metrics


def _hands(n=8, seed=0):
  """Random non-planar 'hands' in metres: ~10 cm spread around a point ~0.7 m in front of the camera."""
  rng = np.random.default_rng(seed)
  return rng.normal(0, 0.04, (n, 21, 3)) + np.array([0.0, 0.0, 0.7])


def _align_w_scale(mtx1, mtx2):
  """The toolbox's `align_w_scale(gt, pred)` for one sample, line by line (`utils/eval_util.py`)."""
  t1, t2 = mtx1.mean(0), mtx2.mean(0)
  m1, m2 = mtx1 - t1, mtx2 - t2
  s1, s2 = np.linalg.norm(m1) + 1e-8, np.linalg.norm(m2) + 1e-8
  m1, m2 = m1 / s1, m2 / s2
  r, s = orthogonal_procrustes(m1, m2)
  return (m2 @ r.T) * s * s1 + t1


def test_hand_computed_offsets():
  gt = _hands(2)
  # Sample 0 is off by (3, 4, 0) mm -> 5 mm everywhere; sample 1 by (0, 0, 1) mm -> 1 mm.
  pred = gt + np.array([[[0.003, 0.004, 0.0]], [[0.0, 0.0, 0.001]]])
  assert metrics.epe(pred, gt) == pytest.approx(0.003)
  assert metrics.median_epe(pred, gt) == pytest.approx(0.003)  # median of {5, 1} mm per joint
  np.testing.assert_allclose(metrics.per_joint_epe(pred, gt), 0.003)
  valid = np.ones((2, 21), bool)
  valid[1] = False
  assert metrics.epe(pred, gt, valid) == pytest.approx(0.005)
  # A pure translation is removed by either alignment (FreiHAND's 1e-8 norm guard leaves ~1e-8 m).
  assert metrics.pa_epe(pred, gt) == pytest.approx(0.0, abs=1e-7)
  assert metrics.pa_epe(pred, gt, "umeyama") == pytest.approx(0.0, abs=1e-9)


def test_single_joint_error_and_per_joint_then_mean():
  gt = _hands(2)
  pred = gt.copy()
  pred[:, 7, 0] += 0.021  # 21 mm on one joint of 21 -> 1 mm mean
  assert metrics.epe(pred, gt) == pytest.approx(0.001)
  pj = metrics.per_joint_epe(pred, gt)
  assert pj[7] == pytest.approx(0.021) and np.allclose(np.delete(pj, 7), 0)
  # Joint 7 visible only in sample 0: still the per-joint mean (21 mm) enters the mean over joints once.
  valid = np.ones((2, 21), bool)
  valid[1, 7] = False
  assert metrics.epe(pred, gt, valid) == pytest.approx(0.001)
  # A joint with no valid sample is skipped, not counted as 0.
  valid[0, 7] = False
  assert metrics.epe(pred, gt, valid) == pytest.approx(0.0)


def test_epe_2d_pixels():
  gt = np.zeros((2, 21, 2))
  pred = gt + np.array([[[3.0, 4.0]], [[0.0, 1.0]]])
  assert metrics.epe_2d(pred, gt) == pytest.approx(3.0)


@pytest.mark.parametrize("method", metrics.METHODS)
def test_similarity_transform_is_removed(method):
  gt = _hands(6, seed=1)
  rng = np.random.default_rng(2)
  r = Rotation.random(6, random_state=3).as_matrix()
  s = rng.uniform(0.5, 2.0, (6, 1, 1))
  t = rng.normal(0, 0.3, (6, 1, 3))
  pred = s * gt @ np.swapaxes(r, 1, 2) + t
  assert metrics.epe(pred, gt) > 0.01
  # Tolerance covers FreiHAND's 1e-8 norm guard, which shrinks the recovered scale by ~1e-7 relative.
  np.testing.assert_allclose(metrics.procrustes_align(pred, gt, method), gt, atol=1e-7)
  assert metrics.pa_epe(pred, gt, method) == pytest.approx(0.0, abs=1e-7)


def test_freihand_variant_matches_toolbox_per_sample():
  gt = _hands(5, seed=4)
  pred = gt + np.random.default_rng(5).normal(0, 0.01, gt.shape)
  want = np.stack([_align_w_scale(g, p) for g, p in zip(gt, pred)])
  np.testing.assert_allclose(metrics.procrustes_align(pred, gt), want, atol=1e-12)
  # For sane predictions both variants agree (reference §5).
  np.testing.assert_allclose(metrics.procrustes_align(pred, gt, "umeyama"), want, atol=1e-7)


@pytest.mark.parametrize("method", metrics.METHODS)
def test_all_zeros_anchor(method):
  gt = _hands(4, seed=6)
  zeros = np.zeros_like(gt)
  # Zero prediction -> scale 0 -> aligned points at the GT centroid: error = mean distance of GT joints to it.
  to_centroid = np.linalg.norm(gt - gt.mean(1, keepdims=True), axis=-1).mean(1)
  aligned = metrics.procrustes_align(zeros, gt, method)
  np.testing.assert_allclose(aligned, np.broadcast_to(gt.mean(1, keepdims=True), gt.shape), atol=1e-9)
  per_sample = metrics.joint_dists(zeros, gt, aligned=True, method=method).mean(1)
  np.testing.assert_allclose(per_sample, to_centroid, rtol=1e-9)
  assert metrics.pa_epe(zeros, gt, method) == pytest.approx(to_centroid.mean())
  # Unaligned, it is just the distance of each joint to the camera origin.
  assert metrics.epe(zeros, gt) == pytest.approx(np.linalg.norm(gt, axis=-1).mean())


def test_mirror_separates_variants():
  gt = _hands(4, seed=7)
  mirrored = gt * np.array([-1.0, 1.0, 1.0])
  # FreiHAND's Procrustes may reflect, so the mirror image aligns exactly; Umeyama forbids it.
  assert metrics.pa_epe(mirrored, gt, "freihand") == pytest.approx(0.0, abs=1e-7)
  assert metrics.pa_epe(mirrored, gt, "umeyama") > 0.005


def test_unknown_method_raises():
  gt = _hands(1)
  with pytest.raises(ValueError):
    metrics.procrustes_align(gt, gt, "kabsch")


def test_auc_perfect_and_hopeless():
  gt = _hands(3)
  assert metrics.auc(gt, gt) == pytest.approx(1.0)
  t, pck, pj = metrics.pck_curve(gt, gt)
  assert t.shape == (100,) and pck.shape == (100,) and pj.shape == (21, 100)
  np.testing.assert_allclose(t, np.linspace(0, 0.05, 100))
  assert pck[0] == 1.0  # zero error counts at t = 0 because PCK uses <=
  assert metrics.auc(gt + np.array([0.0, 0.0, 0.06]), gt) == 0.0


def test_pck_uses_less_equal():
  t = np.linspace(0, 0.05, 100)
  gt = np.zeros((1, 21, 3))
  pred = gt.copy()
  pred[0, :, 0] = t[40]  # distance exactly equal to threshold 40 (no rounding: |t - 0| = t)
  _, pck, _ = metrics.pck_curve(pred, gt)
  assert pck[40] == 1.0 and pck[39] == 0.0


def test_auc_matches_direct_trapezoid():
  rng = np.random.default_rng(8)
  n = 200
  gt = np.zeros((n, 21, 3))
  # Error magnitudes spread over 0-70 mm, a different distribution per joint, along random directions.
  d = rng.uniform(0, 0.07, (n, 21)) * np.linspace(0.5, 1.0, 21)
  u = rng.normal(size=(n, 21, 3))
  pred = gt + d[..., None] * u / np.linalg.norm(u, axis=-1, keepdims=True)
  t = np.linspace(0.0, 0.05, 100)
  want = np.mean([np.trapezoid([(d[:, j] <= x).mean() for x in t], t) / 0.05 for j in range(21)])
  assert metrics.auc(pred, gt) == pytest.approx(want, abs=1e-9)
  _, pck, pj = metrics.pck_curve(pred, gt)
  np.testing.assert_allclose(pck, pj.mean(0))
  # Uniform errors on [0, 50 mm] on every joint -> AUC ~ 1/2.
  d = np.tile(np.linspace(0, 0.05, 1001)[:, None], (1, 21))
  pred = np.zeros((1001, 21, 3))
  pred[..., 0] = d
  assert metrics.auc(pred, np.zeros_like(pred)) == pytest.approx(0.5, abs=2e-3)


def test_joint_permutation_invariance():
  gt = _hands(5, seed=9)
  pred = gt + np.random.default_rng(10).normal(0, 0.008, gt.shape)
  perm = np.random.default_rng(11).permutation(21)
  for fn in (metrics.epe, metrics.pa_epe, metrics.median_epe, metrics.auc):
    assert fn(pred[:, perm], gt[:, perm]) == pytest.approx(fn(pred, gt))
  assert metrics.auc(pred, gt, aligned=True) == pytest.approx(metrics.auc(pred[:, perm], gt[:, perm], aligned=True))


def test_summary_keys_and_units():
  gt = _hands(3, seed=12)
  pred = gt + np.array([0.003, 0.004, 0.0])  # 5 mm translation
  uv = np.zeros((3, 21, 2))
  s = metrics.summary(pred.astype(np.float32), gt, uv + np.array([3.0, 4.0]), uv)
  assert set(s) == {
    "epe_mm",
    "pa_epe_mm",
    "auc",
    "pa_auc",
    "median_mm",
    "pa_median_mm",
    "per_joint_epe_mm",
    "pa_epe_umeyama_mm",
    "rr_epe_mm",
    "epe_2d_px",
  }
  assert s["epe_mm"] == pytest.approx(5.0, abs=1e-4) and s["median_mm"] == pytest.approx(5.0, abs=1e-4)
  assert s["pa_epe_mm"] == pytest.approx(0.0, abs=1e-3) and s["pa_epe_umeyama_mm"] == pytest.approx(0.0, abs=1e-3)
  assert s["rr_epe_mm"] == pytest.approx(0.0, abs=1e-3)
  # Residuals of ~1e-8 m miss only the t = 0 threshold: half a trapezoid step of 99.
  assert s["pa_auc"] == pytest.approx(1.0, abs=0.01) and 0.8 < s["auc"] < 0.95
  assert len(s["per_joint_epe_mm"]) == 21 and s["epe_2d_px"] == pytest.approx(5.0)
  assert "epe_2d_px" not in metrics.summary(pred, gt)


def test_root_relative_epe_ignores_a_global_shift_but_not_a_rotation():
  rng = np.random.default_rng(4)
  gt = rng.normal(size=(6, 21, 3)) * 0.05 + [0, 0, 0.5]
  shifted = gt + rng.normal(size=(6, 1, 3))
  assert metrics.rr_epe(shifted, gt) == pytest.approx(0.0, abs=1e-12)
  # One joint off by 3 mm in one sample: 3 mm / (6 samples) on that joint, / 21 joints.
  off = gt.copy()
  off[2, 7] += [0.003, 0, 0]
  assert metrics.rr_epe(off, gt) == pytest.approx(0.003 / 6 / 21)
  # Moving the wrist moves every other joint's root-relative position by the same amount (20 of 21 joints).
  wrist = gt.copy()
  wrist[:, 0] += [0, 0.004, 0]
  assert metrics.rr_epe(wrist, gt) == pytest.approx(0.004 * 20 / 21)


def test_mean_pose_of_similar_copies_is_that_pose():
  """Rotated, scaled and shifted copies of one hand average (after alignment) to that hand's shape."""
  hand = _hands(1, seed=3)[0]
  rots = Rotation.random(7, random_state=1).as_matrix()
  copies = np.stack([s * hand @ r.T + t for r, s, t in zip(rots, np.linspace(0.5, 2, 7), np.arange(7) * 0.1)])
  mean = metrics.mean_pose(copies)
  assert metrics.pa_epe(np.broadcast_to(mean, copies.shape), copies) == pytest.approx(0.0, abs=1e-7)
  # With different hands it is a compromise: better (aligned) than any one of them used for all.
  others = _hands(20, seed=4)
  m = metrics.pa_epe(np.broadcast_to(metrics.mean_pose(others), others.shape), others)
  assert m < min(metrics.pa_epe(np.broadcast_to(h, others.shape), others) for h in others)


def _epe(pred, gt, valid):
  """Per joint: mean distance over the valid samples; then mean over the joints that have one (loops, no metrics)."""
  per_joint = []
  for j in range(gt.shape[1]):
    d = [np.sqrt(((pred[i, j] - gt[i, j]) ** 2).sum()) for i in range(len(gt)) if valid[i, j]]
    if d:
      per_joint.append(sum(d) / len(d))
  return sum(per_joint) / len(per_joint)


def test_rr_anchor_is_the_mean_root_relative_training_pose():
  rng = np.random.default_rng(20)
  train = rng.normal(0, 0.03, (3, 21, 3)) + np.array([[0.1, 0.0, 0.6], [0.0, 0.1, 0.8], [-0.1, 0.0, 0.5]])[:, None]
  want = sum(t - t[0] for t in train) / 3
  np.testing.assert_allclose(metrics.rr_mean_pose(train), want, atol=1e-15)
  # Scored on two hand-made poses: the first is the mean moved away from the camera (root-relative: exact), the
  # second has joint 5 off by 30 mm but unlabelled, and joint 8 off by 12 mm.
  gt = np.stack([want + [0.0, 0.0, 0.7], want + [0.05, 0.0, 0.6]])
  gt[1, 5] += [0.03, 0.0, 0.0]
  gt[1, 8] += [0.0, 0.012, 0.0]
  valid = np.ones((2, 21), bool)
  valid[1, 5] = False
  # Joint 8's error is 12 mm in one of two samples; every other joint is exact: 6 mm / 21 joints.
  assert _epe(np.broadcast_to(want, gt.shape), gt - gt[:, :1], valid) == pytest.approx(0.006 / 21)
  uv = rng.uniform(0, 32, (2, 21, 2))
  anchors, _ = evaluate.constant_anchors(uv, gt, valid, train)
  assert anchors["rr_epe_mm"] == pytest.approx(6 / 21)
  # Centred on the palm (midpoint of wrist and middle MCP) instead, the mean scores the same: the metric re-centres.
  palm = (train - (train[:, :1] + train[:, 9:10]) / 2).mean(0)
  assert metrics.rr_epe(np.broadcast_to(palm, gt.shape), gt, valid) * 1000 == pytest.approx(6 / 21)


def test_2d_anchor_is_scored_over_the_valid_joints_as_the_model_is():
  rng = np.random.default_rng(21)
  uv = rng.uniform(0, 32, (4, 21, 2))
  valid = rng.uniform(size=(4, 21)) > 0.3
  valid[:, 0] = True
  valid[:, 3] = False  # no sample labels joint 3: it is left out, as the model's metric leaves it
  uv[~valid] = 1e3  # placeholder coordinates of unlabelled joints must not move the constant
  mean = np.stack([uv[valid[:, j], j].mean(0) if valid[:, j].any() else np.zeros(2) for j in range(21)])
  want = _epe(np.broadcast_to(mean, uv.shape), uv, valid)
  anchors, pose = evaluate.constant_anchors(uv, np.zeros((4, 21, 3)), valid)
  assert anchors == {"epe_2d_px": pytest.approx(want)} and pose is None
  assert want < 32


def test_anchor_ratio_is_each_anchored_error_over_its_constant():
  rng = np.random.default_rng(22)
  gt = _hands(5, seed=23)
  pred = gt + rng.normal(0, 0.01, gt.shape)
  gt_uv = rng.uniform(0, 64, (5, 21, 2))
  pred_uv = gt_uv + rng.normal(0, 2, gt_uv.shape)
  valid = np.ones((5, 21), bool)
  m = metrics.summary(pred, gt, pred_uv, gt_uv, valid)
  anchor = dict(epe_2d_px=7.5, rr_epe_mm=40.0, pa_epe_mm=12.5, pa_auc=0.7)
  dist = lambda a, b: np.linalg.norm(a - b, axis=-1).mean()
  want = {
    "epe_2d_px": dist(pred_uv, gt_uv) / 7.5,
    "rr_epe_mm": dist(pred - pred[:, :1], gt - gt[:, :1]) * 1000 / 40.0,
    "pa_epe_mm": dist(np.stack([_align_w_scale(g, p) for g, p in zip(gt, pred)]), gt) * 1000 / 12.5,
  }
  x = metrics.anchor_ratio(m, anchor)
  assert set(x) == {"epe_2d_px", "rr_epe_mm", "pa_epe_mm"}  # AUCs and the unaligned 3-D EPE have no anchor
  for k, v in want.items():
    assert x[k] == pytest.approx(v, rel=1e-9)
  # Without an anchor (e.g. no training labels in memory) or with a zero one, there is no ratio.
  (only,) = metrics.anchor_ratio(m, {"epe_2d_px": 7.5, "pa_epe_mm": 0.0}).items()
  assert only == ("epe_2d_px", pytest.approx(want["epe_2d_px"]))
  assert metrics.anchor_ratio(m, None) == {}
