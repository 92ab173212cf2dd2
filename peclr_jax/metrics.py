"""FreiHAND keypoint metrics in NumPy (reference §5; `lmb-freiburg/freihand:eval.py` + `utils/eval_util.py`).

Inputs are [N, 21, 3] arrays in metres (any [N, K, D] works); everything is computed in float64. Per-joint statistics
are taken over the (visible) samples of each joint, then averaged over joints, as `EvalUtil.get_measures` does.

`summary` keys (mm = millimetres, px = pixels):
  epe_mm             mean 3-D joint error, no alignment (leaderboard `xyz_mean3d`, which is in cm).
  pa_epe_mm          mean error after FreiHAND's `align_w_scale` (`xyz_al_mean3d`, PA-MPJPE).
  auc, pa_auc        area under the PCK curve over 0-50 mm, raw / aligned (`xyz_auc3d`, `xyz_al_auc3d`; PeCLR's AUC).
  median_mm          mean over joints of the per-joint median error, raw; pa_median_mm the same after alignment.
  per_joint_epe_mm   list of the 21 per-joint mean errors, raw.
  pa_epe_umeyama_mm  mean error after Umeyama alignment with the reflection fix (secondary metric).
  rr_epe_mm          mean error after translating both poses to put the wrist at the origin (root-relative MPJPE,
                     InterHand2.6M's protocol); separates the absolute-depth error from the pose error.
  epe_2d_px          mean 2-D joint error in pixels, only when `pred_uv` and `gt_uv` are given.

`anchor_ratio(m, anchor)` divides the errors of ANCHORED by a constant prediction's (evaluate.constant_anchors).
"""

import numpy as np

METHODS = ("freihand", "umeyama")
ANCHORED = ("epe_2d_px", "rr_epe_mm", "pa_epe_mm")  # the errors a constant prediction is scored on


def _f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def _align_freihand(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Batched `align_w_scale(gt, pred)`: orthogonal Procrustes on Frobenius-normalised sets, no reflection fix."""
  mu_g, mu_p = gt.mean(1, keepdims=True), pred.mean(1, keepdims=True)
  g, p = gt - mu_g, pred - mu_p
  # The +1e-8 makes an all-zeros prediction give s = 0, i.e. the aligned points collapse onto the GT centroid.
  s_g = np.linalg.norm(g, axis=(1, 2), keepdims=True) + 1e-8
  s_p = np.linalg.norm(p, axis=(1, 2), keepdims=True) + 1e-8
  g, p = g / s_g, p / s_p
  # orthogonal_procrustes(A=g, B=p): svd(A^T B) = U W V^T, R = U V^T, scale = sum(W).
  u, w, vt = np.linalg.svd(np.swapaxes(g, 1, 2) @ p)
  r = u @ vt
  s = w.sum(-1)[:, None, None]
  return (p @ np.swapaxes(r, 1, 2)) * s * s_g + mu_g


def _align_umeyama(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Umeyama similarity (I2L-MeshNet `rigid_align`): x = pred, y = gt, reflections forbidden via S."""
  mu_x, mu_y = pred.mean(1, keepdims=True), gt.mean(1, keepdims=True)
  x, y = pred - mu_x, gt - mu_y
  n = pred.shape[1]
  u, d, vt = np.linalg.svd(np.swapaxes(y, 1, 2) @ x / n)
  # sign(det U det V), but never 0, so a degenerate (e.g. planar) set keeps all axes.
  sgn = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
  sv = np.ones_like(d)
  sv[:, -1] = sgn
  r = (u * sv[:, None, :]) @ vt
  var = (x**2).sum((1, 2)) / n
  # A constant prediction has zero variance; its best scale is 0 (aligned = GT centroid), as in the FreiHAND variant.
  c = np.where(var > 0, (d * sv).sum(-1) / np.where(var > 0, var, 1.0), 0.0)[:, None, None]
  return c * (x @ np.swapaxes(r, 1, 2)) + mu_y


def procrustes_align(pred, gt, method: str = "freihand") -> np.ndarray:
  """Per-sample similarity alignment of `pred` onto `gt`, both [N, K, D]; returns the aligned prediction (float64).

  "freihand" is the leaderboard's `align_w_scale` (may reflect); "umeyama" forbids reflections.
  """
  pred, gt = _f64(pred), _f64(gt)
  if method == "freihand":
    return _align_freihand(pred, gt)
  if method == "umeyama":
    return _align_umeyama(pred, gt)
  raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def joint_dists(pred, gt, aligned: bool = False, method: str = "freihand") -> np.ndarray:
  """Euclidean distance per sample and joint, [N, K], optionally after `procrustes_align`."""
  pred, gt = _f64(pred), _f64(gt)
  if aligned:
    pred = procrustes_align(pred, gt, method)
  return np.linalg.norm(pred - gt, axis=-1)


def _per_joint(fn, d: np.ndarray, valid) -> np.ndarray:
  """fn over the valid samples of each joint of d [N, K, ...] -> [K, ...].

  Joints with no valid sample are NaN and dropped by the nanmean over joints (EvalUtil skips them).
  """
  if valid is None:
    return fn(d, axis=0)
  valid = np.broadcast_to(np.asarray(valid, bool), d.shape[:2])
  nan = np.full(d.shape[2:], np.nan)
  return np.array([fn(d[valid[:, j], j], axis=0) if valid[:, j].any() else nan for j in range(d.shape[1])])


def epe(pred, gt, valid=None) -> float:
  """Mean per-joint error (input units): per-joint mean over valid samples, then mean over joints."""
  return float(np.nanmean(_per_joint(np.mean, joint_dists(pred, gt), valid)))


def pa_epe(pred, gt, method: str = "freihand", valid=None) -> float:
  """`epe` after per-sample `procrustes_align` (alignment always uses all joints, as the toolbox does)."""
  return float(np.nanmean(_per_joint(np.mean, joint_dists(pred, gt, True, method), valid)))


def per_joint_epe(pred, gt, valid=None, aligned: bool = False, method: str = "freihand") -> np.ndarray:
  """[K] mean error of each joint."""
  return _per_joint(np.mean, joint_dists(pred, gt, aligned, method), valid)


def median_epe(pred, gt, valid=None, aligned: bool = False, method: str = "freihand") -> float:
  """Mean over joints of the per-joint median error (`get_measures`' second value)."""
  return float(np.nanmean(_per_joint(np.median, joint_dists(pred, gt, aligned, method), valid)))


def rr_epe(pred, gt, valid=None, root: int = 0) -> float:
  """Mean per-joint error after subtracting each pose's `root` joint (root-relative MPJPE); the root scores 0."""
  pred, gt = _f64(pred), _f64(gt)
  return epe(pred - pred[:, root : root + 1], gt - gt[:, root : root + 1], valid)


def mean_pose(xyz, iters: int = 5) -> np.ndarray:
  """Generalised-Procrustes mean [K, D] of poses [N, K, D]: the constant prediction a PA metric is kindest to.

  Starts from the mean of root-centred poses, then repeatedly aligns every pose to the mean (FreiHAND's similarity
  alignment) and re-averages. Its PA-EPE is the "no image information" anchor for aligned metrics.
  """
  x = _f64(xyz)
  x = x - x.mean(1, keepdims=True)
  mean = x.mean(0)
  for _ in range(iters):
    mean = procrustes_align(x, np.broadcast_to(mean, x.shape)).mean(0)
  return mean


def rr_mean_pose(xyz, root: int = 0) -> np.ndarray:
  """Mean [K, D] of poses [N, K, D] with each pose's `root` joint at the origin: the constant root-relative prediction.

  `rr_epe` re-centres on its own root, and the mean is linear, so the constant scores the same whichever joint (or
  midpoint, e.g. the palm) its poses were centred on.
  """
  x = _f64(xyz)
  return (x - x[:, root : root + 1]).mean(0)


def anchor_ratio(m, anchor) -> dict:
  """{key: m[key] / anchor[key]} for the errors of ANCHORED that both give: below 1 beats the constant prediction."""
  anchor = anchor or {}
  return {k: float(m[k] / anchor[k]) for k in ANCHORED if k in m and anchor.get(k)}


def epe_2d(pred_uv, gt_uv, valid=None) -> float:
  """Mean per-joint 2-D error on [N, K, 2] pixel coordinates, in pixels."""
  return epe(pred_uv, gt_uv, valid)


def pck_curve(
  pred,
  gt,
  lo: float = 0.0,
  hi: float = 0.05,
  steps: int = 100,
  aligned: bool = False,
  method: str = "freihand",
  valid=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """PCK with `distance <= t` (FreiHAND's `_get_pck`) over `linspace(lo, hi, steps)` (metres).

  Returns (thresholds [T], mean over joints [T], per-joint curves [K, T]).
  """
  t = np.linspace(lo, hi, steps)
  d = joint_dists(pred, gt, aligned, method)
  per_joint = _per_joint(np.mean, (d[..., None] <= t).astype(np.float64), valid)  # [K, T]
  return t, np.nanmean(per_joint, 0), per_joint


def auc(
  pred,
  gt,
  lo: float = 0.0,
  hi: float = 0.05,
  steps: int = 100,
  aligned: bool = False,
  method: str = "freihand",
  valid=None,
) -> float:
  """Mean over joints of trapezoid(PCK_j, t) / (hi - lo), the toolbox's normalisation by trapezoid(1, t)."""
  t, _, pj = pck_curve(pred, gt, lo, hi, steps, aligned, method, valid)
  return float(np.nanmean(np.trapezoid(pj, t, axis=-1) / (hi - lo)))


def summary(pred, gt, pred_uv=None, gt_uv=None, valid=None) -> dict:
  """All keypoint metrics in one dict (keys documented in the module docstring); 3-D inputs in metres."""
  mm = 1000.0
  out = {
    "epe_mm": epe(pred, gt, valid) * mm,
    "pa_epe_mm": pa_epe(pred, gt, "freihand", valid) * mm,
    "auc": auc(pred, gt, valid=valid),
    "pa_auc": auc(pred, gt, aligned=True, valid=valid),
    "median_mm": median_epe(pred, gt, valid) * mm,
    "pa_median_mm": median_epe(pred, gt, valid, aligned=True) * mm,
    "per_joint_epe_mm": (per_joint_epe(pred, gt, valid) * mm).tolist(),
    "pa_epe_umeyama_mm": pa_epe(pred, gt, "umeyama", valid) * mm,
    "rr_epe_mm": rr_epe(pred, gt, valid) * mm,
  }
  if pred_uv is not None and gt_uv is not None:
    out["epe_2d_px"] = epe_2d(pred_uv, gt_uv, valid)
  return out
