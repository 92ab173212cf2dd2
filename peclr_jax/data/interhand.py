"""InterHand2.6M single-hand annotations as a grain random-access source (reference §6.2).

Layout: `annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json` and
`images/<split>/<file_name>`. World joints are in millimetres; X_cam = R (X_world - campos) with R = camrot.
Records hold one hand each, in FreiHAND order, camera frame, metres. Left hands are mirrored by default so
every record looks like a right hand: X -> -X and cx -> width - cx, i.e. u -> width - u with pixel i covering
[i, i + 1) (what PIL's FLIP_LEFT_RIGHT does to the image); the record's `flip` tells the decoder to mirror the
image. Interacting frames are never used.

The index is built once from the JSON files into numpy arrays; 3D joints stay per frame (one entry serves
every camera) and are moved into the camera frame in `__getitem__`.
"""

import os

import numpy as np

from peclr_jax import hand
from peclr_jax.data import common

SPLITS = ("train", "val", "test")
HANDS = ("right", "left")
_JOINTS = {"right": hand.FREIHAND_FROM_INTERHAND_RIGHT, "left": hand.FREIHAND_FROM_INTERHAND_LEFT}


def annotation_path(root, split, kind):
  return os.path.join(root, "annotations", split, f"InterHand2.6M_{split}_{kind}.json")


def _joint_valid(anns, path):
  """[N, 42] bool from `joint_valid` given as 42 or 42x1 lists (fast path when all share one layout)."""
  try:
    jv = np.asarray([a["joint_valid"] for a in anns], np.float32).reshape(len(anns), -1)
  except ValueError:  # Mixed layouts: flatten one by one.
    jv = np.zeros((len(anns), 42), np.float32)
    for i, a in enumerate(anns):
      v = np.ravel(np.asarray(a["joint_valid"], np.float32))
      if v.shape != (42,):
        raise common.DataError(f"{path}: annotation {a['id']} has {v.size} joint_valid entries, expected 42") from None
      jv[i] = v
  if jv.shape[1:] != (42,):
    raise common.DataError(f"{path}: joint_valid has {jv.shape[1:]} entries per annotation, expected 42")
  return jv > 0


class InterHand:
  """Single-hand records of one InterHand2.6M split.

  Args:
    root: dataset root holding `annotations/` and `images/`.
    split: "train", "val" or "test".
    hands: which single-hand annotations to keep ("right", "left").
    mirror_left: mirror left hands into right hands (and set `flip` so the decoder mirrors the image).
    min_valid: drop hands with fewer valid joints; a hand with an invalid wrist is always dropped.
  """

  def __init__(self, root, split="train", hands=HANDS, mirror_left=True, min_valid=21):
    if split not in SPLITS:
      raise common.DataError(f"InterHand2.6M split must be one of {SPLITS}, got {split!r}")
    hands = (hands,) if isinstance(hands, str) else tuple(hands)
    if not hands or any(h not in HANDS for h in hands):
      raise common.DataError(f"InterHand2.6M hands must be a non-empty subset of {HANDS}, got {hands!r}")
    self.root, self.split, self.hands, self.mirror_left = root, split, hands, mirror_left
    common.require_dir(root, "InterHand2.6M root")
    data_path, cam_path, j3d_path = (annotation_path(root, split, k) for k in ("data", "camera", "joint_3d"))
    for p in (data_path, cam_path, j3d_path):
      common.require_file(p, f"InterHand2.6M {split} annotations")
    self.image_dir = common.require_dir(os.path.join(root, "images", split), f"InterHand2.6M {split} images")

    data = common.load_json(data_path, "InterHand2.6M data")
    try:
      images, anns = data["images"], data["annotations"]
      anns = [a for a in anns if a["hand_type"] in hands and a["hand_type_valid"]]
    except (KeyError, TypeError) as e:
      raise common.DataError(
        f"{data_path}: expected COCO-style images[] and annotations[] with hand_type and hand_type_valid ({e!r})"
      ) from e
    self._index_images(images, anns, data_path)
    del data, images
    self._load_cameras(cam_path)
    self._load_frames(j3d_path)

    # Joint validity in FreiHAND order; an invalid wrist invalidates the hand.
    jidx = np.where(self.left[:, None], _JOINTS["left"], _JOINTS["right"])
    valid = np.take_along_axis(_joint_valid(anns, data_path), jidx, 1) if anns else np.zeros((0, 21), bool)
    keep = valid[:, hand.ROOT] & (valid.sum(1) >= min_valid)
    bad = valid & keep[:, None] & ~self._finite[self.frame[self.image][:, None], jidx]
    if bad.any():
      i = int(np.argwhere(bad.any(1))[0, 0])
      raise common.DataError(
        f"{j3d_path}: annotation {self.ids[i]} ({self.image_path(self.image[i])}) has NaN/inf world_coord "
        f"for valid joints (FreiHAND order) {np.flatnonzero(bad[i]).tolist()}"
      )
    del self._finite
    self.ids, self.image, self.left, self.valid = (x[keep] for x in (self.ids, self.image, self.left, valid))
    if len(self):
      common.require_file(self.image_path(self.image[0]), f"InterHand2.6M image of annotation {self.ids[0]}")

  def _index_images(self, images, anns, path):
    """Per-annotation ids / image / handedness and per-image tables (only images that are used)."""
    try:
      pos = {im["id"]: i for i, im in enumerate(images)}
      self.ids = np.array([a["id"] for a in anns], np.int64)
      self.left = np.array([a["hand_type"] == "left" for a in anns], bool)
      image = np.array([pos[a["image_id"]] for a in anns], np.int64)
      used, self.image = np.unique(image, return_inverse=True)
      used = [images[i] for i in used]
      self.names = np.array([im["file_name"].encode() for im in used], np.bytes_)
      self.size = np.array([(im["width"], im["height"]) for im in used], np.int32).reshape(-1, 2)
      cams = [(str(im["capture"]), str(im["camera"])) for im in used]
      frames = [(str(im["capture"]), str(im["frame_idx"])) for im in used]
    except (KeyError, TypeError, AttributeError) as e:
      raise common.DataError(
        f"{path}: missing or malformed image entry or image_id ({e!r}); images[] need "
        f"id, file_name, width, height, capture, camera and frame_idx"
      ) from e
    self.image = self.image.astype(np.int32)
    self._cam_keys = sorted(set(cams))
    self._frame_keys = sorted(set(frames))
    cam_pos = {k: i for i, k in enumerate(self._cam_keys)}
    frame_pos = {k: i for i, k in enumerate(self._frame_keys)}
    self.cam = np.array([cam_pos[k] for k in cams], np.int32)
    self.frame = np.array([frame_pos[k] for k in frames], np.int32)

  def _load_cameras(self, path):
    cams = common.load_json(path, "InterHand2.6M camera")
    try:
      get = lambda field: [cams[cap][field][cam] for cap, cam in self._cam_keys]
      R, pos, f, c = get("camrot"), get("campos"), get("focal"), get("princpt")
    except (KeyError, TypeError) as e:
      raise common.DataError(f"{path}: no camrot/campos/focal/princpt for capture/camera {e!r}") from e
    n = len(self._cam_keys)
    if not n:
      R, pos, f, c = np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros((0, 2)), np.zeros((0, 2))
    self.R = common.as_array(R, (n, 3, 3), path, "camrot", np.float64)
    self.campos = common.as_array(pos, (n, 3), path, "campos", np.float64)
    self.focal = common.as_array(f, (n, 2), path, "focal", np.float64)
    self.princpt = common.as_array(c, (n, 2), path, "princpt", np.float64)

  def _load_frames(self, path):
    j3d = common.load_json(path, "InterHand2.6M joint_3d")
    try:
      world = [j3d[cap][frame]["world_coord"] for cap, frame in self._frame_keys]
    except (KeyError, TypeError) as e:
      raise common.DataError(f"{path}: no world_coord for capture/frame in use ({e!r})") from e
    try:
      self.world = np.asarray(world, np.float64) if world else np.zeros((0, 42, 3))
    except (ValueError, TypeError) as e:
      raise common.DataError(f"{path}: world_coord must be numeric 42x3 lists ({e})") from e
    if self.world.shape[1:] != (42, 3):
      raise common.DataError(f"{path}: world_coord has shape {self.world.shape[1:]}, expected (42, 3)")
    self._finite = np.isfinite(self.world).all(-1)  # NaN is allowed for invalid joints only.

  def image_path(self, image):
    return os.path.join(self.image_dir, self.names[image].decode())

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    im, left, valid = self.image[index], bool(self.left[index]), self.valid[index]
    c, w = self.cam[im], self.size[im, 0]
    world = self.world[self.frame[im], _JOINTS["left" if left else "right"]]
    xyz = (world - self.campos[c]) @ self.R[c].T / 1000.0
    (fx, fy), (cx, cy) = self.focal[c], self.princpt[c]
    flip = left and self.mirror_left
    if flip:
      xyz[:, 0], cx = -xyz[:, 0], w - cx
    xyz[~valid] = xyz[hand.ROOT]  # Unlabelled joints may hold garbage: keep them finite and in view.
    a, b = hand.SCALE_BONE
    scale = np.linalg.norm(xyz[a] - xyz[b]) if valid[a] and valid[b] else 0.0
    return common.make_record(
      image_path=self.image_path(im),
      index=index,
      id=self.ids[index],
      xyz=xyz,
      valid=valid,
      scale=scale,
      K=np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]),
      flip=flip,
    )

  def __repr__(self):
    n_left = int(self.left.sum())
    return (
      f"InterHand({self.root!r}, {self.split}, {len(self) - n_left} right + {n_left} left hands, "
      f"mirror_left={self.mirror_left})"
    )
