"""The record every source returns and the shared file checks (bad input raises errors.DataError).

A record is a flat dict of numpy values (grain batches it by stacking leaves):
  image_path  str               file the image came from (for error messages)
  image_bytes bytes             encoded image (decoded by `pipeline.decode`, in the worker)
  xyz         float32 [21, 3]   camera-frame joints in metres, FreiHAND order (zeros when unknown)
  uv          float32 [21, 2]   pixel coordinates of the joints (projection of xyz, or 2D labels)
  valid       bool    [21]      joint is labelled (and, for 2D-only data, has a uv)
  has_xyz     bool              3D labels present
  K           float32 [3, 3]    intrinsics (a default K for unlabelled images)
  scale       float32           length of the middle MCP->PIP bone (FreiHAND's `scale`), 0 when unknown
  box         float32 [4]       x0, y0, x1, y1 of the hand in pixels (from uv, a box label, or the image)
  id          int64             label id (all versions/views of one labelled hand share it)
  index       int64             position in the source
  flip        bool              decode mirrors the image horizontally (left hands made right, InterHand2.6M)
"""

import json
import os

import numpy as np

from peclr_jax import hand
from peclr_jax.errors import DataError

# FreiHAND's typical intrinsics (reference §6.1); used where a source has no K.
DEFAULT_K = np.array([[388.9018, 0.0, 112.0], [0.0, 388.7123, 112.0], [0.0, 0.0, 1.0]], np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def require_dir(path, what):
  if not os.path.isdir(path):
    raise DataError(f"{what}: directory {path!r} does not exist")
  return path


def require_file(path, what):
  if not os.path.isfile(path):
    raise DataError(f"{what}: file {path!r} does not exist")
  return path


def load_json(path, what="annotation"):
  require_file(path, what)
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{what}: {path!r} is not valid JSON ({e})") from e


def as_array(value, shape, path, what, dtype=np.float32):
  """Converts an annotation to a float array of `shape` (None = any), naming `path` on failure or NaN."""
  try:
    a = np.asarray(value, dtype)
  except (TypeError, ValueError) as e:
    raise DataError(f"{path}: {what} is not numeric ({e})") from e
  if any(s is not None and s != t for s, t in zip(shape, a.shape)) or a.ndim != len(shape):
    raise DataError(f"{path}: {what} has shape {a.shape}, expected {tuple(shape)}")
  if a.dtype.kind == "f" and not np.isfinite(a).all():
    bad = np.argwhere(~np.isfinite(a.reshape(len(a), -1)).all(-1)).ravel()[:5].tolist()
    raise DataError(f"{path}: {what} has NaN/inf values (first bad entries {bad})")
  return a


def project(xyz, K):
  """Pinhole projection of [..., 21, 3] camera-frame points with K [..., 3, 3] -> [..., 21, 2] pixels."""
  p = np.einsum("...ij,...kj->...ki", K, xyz)
  return p[..., :2] / p[..., 2:3]


def box_from_uv(uv, valid):
  """Tight x0, y0, x1, y1 box of the valid joints."""
  pts = uv[valid] if valid.any() else uv
  return np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)


def read_bytes(path):
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"cannot read image {path!r}: {e}") from e


def make_record(
  *,
  image_path,
  index,
  id,
  xyz=None,
  K=None,
  uv=None,
  valid=None,
  scale=None,
  box=None,
  image_bytes=None,
  image_size=None,
  flip=False,
):
  """Builds a record; derives uv, valid, scale and box from what is given.

  `image_size` (w, h) is needed only when neither keypoints nor a box are given (box = whole image).
  """
  K = DEFAULT_K if K is None else np.asarray(K, np.float32)
  has_xyz = xyz is not None
  xyz = np.zeros((hand.NUM_JOINTS, 3), np.float32) if xyz is None else np.asarray(xyz, np.float32)
  if uv is None:
    uv = project(xyz, K).astype(np.float32) if has_xyz else np.zeros((hand.NUM_JOINTS, 2), np.float32)
  uv = np.asarray(uv, np.float32)
  if valid is None:
    valid = np.full(hand.NUM_JOINTS, has_xyz or uv.any())
  valid = np.asarray(valid, bool)
  if scale is None:
    a, b = hand.SCALE_BONE
    scale = np.linalg.norm(xyz[a] - xyz[b]) if has_xyz else 0.0
  if box is None:
    if valid.any():
      box = box_from_uv(uv, valid)
    elif image_size is not None:
      box = np.array([0, 0, image_size[0], image_size[1]], np.float32)
    else:
      raise ValueError(f"{image_path}: a record needs keypoints, a box or the image size")
  return dict(
    image_path=str(image_path),
    image_bytes=read_bytes(image_path) if image_bytes is None else image_bytes,
    xyz=xyz,
    uv=uv,
    valid=valid,
    has_xyz=np.bool_(has_xyz),
    K=K,
    scale=np.float32(scale),
    box=np.asarray(box, np.float32),
    id=np.int64(id),
    index=np.int64(index),
    flip=np.bool_(flip),
  )
