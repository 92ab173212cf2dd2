"""InterHand2.6M source and TFDS builder on a tiny fixture written in the dataset's own format."""

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from peclr_jax.data import common, interhand

# FreiHAND joint j = InterHand joint IDX[j] (reference §6.5), written out rather than taken from hand.py.
RIGHT_IDX = [20, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 19, 18, 17, 16]
LEFT_IDX = [41, 24, 23, 22, 21, 28, 27, 26, 25, 32, 31, 30, 29, 36, 35, 34, 33, 40, 39, 38, 37]
MARKER = {"right": (255, 0, 0), "left": (0, 255, 0)}  # Wrist marker colour per hand.
SPLIT = "train"


def _rot(ax, ay, az):
  cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _cameras():
  cams = {
    "400262": dict(R=_rot(0.1, 0.0, 0.05), f=(600.0, 605.0), c=(250.0, 170.0), size=(512, 334)),
    "400412": dict(R=_rot(-0.05, 0.5, 0.2), f=(620.0, 610.0), c=(170.0, 250.0), size=(334, 512)),
  }
  for cam in cams.values():  # Place each camera 700 mm from the world origin, looking at it.
    cam["campos"] = -cam["R"].T @ np.array([0.0, 0.0, 700.0])
  return cams


# frame: (hand_type, hand_type_valid, InterHand joints marked invalid, joints whose world_coord is NaN)
FRAMES = {
  10: ("right", 1, [], []),
  20: ("left", 1, [], []),
  30: ("interacting", 1, [], []),
  40: ("right", 1, [20], []),  # Invalid root.
  50: ("left", 0, [], []),  # Hand type not valid.
  60: ("right", 1, [0, 5], []),  # Thumb tip and index DIP unlabelled.
  70: ("left", 1, [29], [29]),  # Left middle tip unlabelled, with NaN coordinates.
}


def _project(xyz, f, c):
  return np.stack([f[0] * xyz[:, 0] / xyz[:, 2] + c[0], f[1] * xyz[:, 1] / xyz[:, 2] + c[1]], -1)


def _to_cam(world, cam):
  return (cam["R"] @ (world - cam["campos"]).T).T / 1000.0


def write_fixture(root, split=SPLIT, nan_valid=False, seed=0):
  """Writes an InterHand2.6M-format split under `root`; returns what the test needs to know about it."""
  rng = np.random.default_rng(seed)
  cams = _cameras()
  world, images, anns, meta = {}, [], [], {}
  for frame, (hand_type, ht_valid, invalid, nan) in FRAMES.items():
    w = np.full((42, 3), np.nan)
    for h, x0 in (("right", 40.0), ("left", -40.0)):
      if hand_type in (h, "interacting"):
        sl = slice(0, 21) if h == "right" else slice(21, 42)
        w[sl] = np.array([x0, 5.0, 10.0]) + rng.uniform(-60, 60, (21, 3))
    w[nan] = np.nan
    if nan_valid and hand_type == "right":
      w[1] = np.nan  # A labelled joint: InterHand 1 = FreiHAND 3 (thumb DIP).
    world[frame] = w
    jv = np.zeros(42)
    jv[:21] = hand_type in ("right", "interacting")
    jv[21:] = hand_type in ("left", "interacting")
    jv[invalid] = 0
    for cam_id, cam in cams.items():
      image_id = len(images)
      ann_id = 1000 + 7 * image_id  # Differs from the image id on purpose.
      name = f"Capture0/ROM01_seq/cam{cam_id}/image{frame:04d}.jpg"
      width, height = cam["size"]
      images.append(
        dict(
          id=image_id,
          file_name=name,
          width=width,
          height=height,
          capture=0,
          subject=1,
          seq_name="ROM01_seq",
          camera=cam_id,
          frame_idx=frame,
        )
      )
      # Both joint_valid layouts occur: 42x1 (as in the release) and flat 42.
      jv_json = [[float(v)] for v in jv] if cam_id == "400262" else [int(v) for v in jv]
      anns.append(
        dict(
          id=ann_id,
          image_id=image_id,
          bbox=[10.0, 20.0, 100.0, 120.0],
          joint_valid=jv_json,
          hand_type=hand_type,
          hand_type_valid=ht_valid,
        )
      )
      meta[ann_id] = dict(frame=frame, cam=cam_id, hand_type=hand_type, path=name)
      img = Image.new("RGB", (width, height), (90, 90, 90))
      draw = ImageDraw.Draw(img)
      for h, idx in (("right", RIGHT_IDX), ("left", LEFT_IDX)):
        if hand_type in (h, "interacting"):
          u, v = _project(_to_cam(w[idx], cam), cam["f"], cam["c"])[0]
          draw.ellipse([u - 5, v - 5, u + 5, v + 5], fill=MARKER[h])
      path = os.path.join(root, "images", split, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      img.save(path, quality=95)

  ann_dir = os.path.join(root, "annotations", split)
  os.makedirs(ann_dir, exist_ok=True)

  def dump(kind, obj):
    with open(os.path.join(ann_dir, f"InterHand2.6M_{split}_{kind}.json"), "w") as f:
      json.dump(obj, f)

  dump("data", dict(images=images, annotations=anns))
  dump(
    "camera",
    {
      "0": {
        "campos": {k: c["campos"].tolist() for k, c in cams.items()},
        "camrot": {k: c["R"].tolist() for k, c in cams.items()},
        "focal": {k: list(c["f"]) for k, c in cams.items()},
        "princpt": {k: list(c["c"]) for k, c in cams.items()},
      }
    },
  )
  dump(
    "joint_3d",
    {
      "0": {
        str(fr): dict(
          world_coord=w.tolist(), joint_valid=[1] * 42, hand_type=FRAMES[fr][0], hand_type_valid=FRAMES[fr][1]
        )
        for fr, w in world.items()
      }
    },
  )
  return dict(cams=cams, world=world, anns=meta)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("interhand"))
  return root, write_fixture(root)


def _ids(fx, frames, hand_types=("right", "left", "interacting")):
  return sorted(i for i, a in fx["anns"].items() if a["frame"] in frames and a["hand_type"] in hand_types)


def _expected(fx, ann_id, mirror=True):
  a = fx["anns"][ann_id]
  cam, left = fx["cams"][a["cam"]], a["hand_type"] == "left"
  xyz = _to_cam(fx["world"][a["frame"]][LEFT_IDX if left else RIGHT_IDX], cam)
  (fx_, fy), (cx, cy) = cam["f"], cam["c"]
  width = cam["size"][0]
  if left and mirror:
    xyz[:, 0] *= -1
    cx = width - cx
  return xyz, np.array([[fx_, 0, cx], [0, fy, cy], [0, 0, 1]]), (fx_, fy), (cx, cy)


def _by_id(src):
  return {int(r["id"]): r for r in (src[i] for i in range(len(src)))}


def test_remap_table_matches_hand_module():
  from peclr_jax import hand

  np.testing.assert_array_equal(hand.FREIHAND_FROM_INTERHAND_RIGHT, RIGHT_IDX)
  np.testing.assert_array_equal(hand.FREIHAND_FROM_INTERHAND_LEFT, LEFT_IDX)


def test_records_match_independent_geometry(fixture):
  root, fx = fixture
  src = interhand.InterHand(root, SPLIT)
  recs = _by_id(src)
  assert sorted(recs) == _ids(fx, (10, 20))  # Two single hands x two cameras; all else filtered out.
  for ann_id, r in recs.items():
    a = fx["anns"][ann_id]
    xyz, K, f, c = _expected(fx, ann_id)
    left = a["hand_type"] == "left"
    assert r["image_path"] == os.path.join(root, "images", SPLIT, a["path"])
    np.testing.assert_allclose(r["xyz"], xyz, atol=1e-6)
    np.testing.assert_allclose(r["K"], K, rtol=1e-6)
    np.testing.assert_allclose(r["uv"], _project(xyz, f, c), atol=1e-3)
    assert r["valid"].all() and r["has_xyz"] and bool(r["flip"]) == left
    assert r["flip"].dtype == np.bool_ and r["xyz"].dtype == np.float32 and r["id"].dtype == np.int64
    np.testing.assert_allclose(r["scale"], np.linalg.norm(xyz[9] - xyz[10]), rtol=1e-5)
    np.testing.assert_allclose(r["box"], [*r["uv"].min(0), *r["uv"].max(0)], atol=1e-4)
    # Per-image size from the JSON, and the wrist lands on the drawn marker (after the decoder's flip).
    img = Image.open(io.BytesIO(r["image_bytes"])).convert("RGB")
    assert img.size == fx["cams"][a["cam"]]["size"]
    if r["flip"]:
      img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    u, v = r["uv"][0].astype(int)
    np.testing.assert_allclose(img.getpixel((int(u), int(v))), MARKER[a["hand_type"]], atol=40)


def test_filters(fixture):
  root, fx = fixture
  interacting = _ids(fx, FRAMES, ("interacting",))
  for kw, frames in [
    (dict(min_valid=0), (10, 20, 60, 70)),
    (dict(min_valid=19), (10, 20, 60, 70)),
    (dict(min_valid=20), (10, 20, 70)),
    (dict(hands=("right",), min_valid=0), (10, 60)),
    (dict(hands="left"), (20,)),
  ]:
    ids = sorted(int(i) for i in interhand.InterHand(root, SPLIT, **kw).ids)
    assert ids == _ids(fx, frames, ("right", "left")), kw
    assert not set(ids) & set(interacting)  # Interacting frames never appear; nor the invalid root (40) or
    # hand_type_valid = 0 (50) ones, whatever min_valid.
  recs = _by_id(interhand.InterHand(root, SPLIT, min_valid=19))
  for ann_id in _ids(fx, (60,)):
    np.testing.assert_array_equal(np.flatnonzero(~recs[ann_id]["valid"]), [4, 7])  # InterHand 0 and 5.
    assert recs[ann_id]["scale"] > 0
  for ann_id in _ids(fx, (70,)):  # NaN world_coord on an unlabelled joint is fine and stays out of records.
    r = recs[ann_id]
    np.testing.assert_array_equal(np.flatnonzero(~r["valid"]), [12])  # InterHand 29 = left middle tip.
    assert np.isfinite(r["xyz"]).all() and np.isfinite(r["uv"]).all()
    xyz, *_ = _expected(fx, ann_id)
    np.testing.assert_allclose(r["xyz"][r["valid"]], xyz[r["valid"]], atol=1e-6)


def test_mirrored_left_hands(fixture):
  root, fx = fixture
  plain = _by_id(interhand.InterHand(root, SPLIT, hands=("left",), mirror_left=False))
  mirrored = _by_id(interhand.InterHand(root, SPLIT, hands=("left",)))
  assert sorted(plain) == sorted(mirrored) == _ids(fx, (20,))
  for ann_id, p in plain.items():
    m, width = mirrored[ann_id], fx["cams"][fx["anns"][ann_id]["cam"]]["size"][0]
    assert not p["flip"] and m["flip"]
    xyz, K, f, c = _expected(fx, ann_id, mirror=False)
    np.testing.assert_allclose(p["xyz"], xyz, atol=1e-6)
    np.testing.assert_allclose(p["uv"], _project(xyz, f, c), atol=1e-3)
    np.testing.assert_allclose(m["uv"][:, 0], width - p["uv"][:, 0], atol=1e-3)
    np.testing.assert_allclose(m["uv"][:, 1], p["uv"][:, 1], atol=1e-3)
    np.testing.assert_allclose(m["xyz"], p["xyz"] * [-1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(m["K"][0, 2], width - p["K"][0, 2])
    # The mirrored 3D is consistent with the mirrored K.
    proj = (m["K"].astype(np.float64) @ m["xyz"].T.astype(np.float64)).T
    np.testing.assert_allclose(proj[:, :2] / proj[:, 2:], m["uv"], atol=1e-3)
    np.testing.assert_allclose(
      m["box"], [width - p["box"][2], p["box"][1], width - p["box"][0], p["box"][3]], atol=1e-3
    )


def _copy(fixture, tmp_path):
  root = str(tmp_path / "root")
  shutil.copytree(fixture[0], root)
  return root


@pytest.mark.parametrize("kind", ["data", "camera", "joint_3d"])
def test_missing_annotation_file(fixture, tmp_path, kind):
  root = _copy(fixture, tmp_path)
  path = interhand.annotation_path(root, SPLIT, kind)
  os.remove(path)
  with pytest.raises(common.DataError, match=re.escape(path)):
    interhand.InterHand(root, SPLIT)


def test_missing_root_and_images(fixture, tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(common.DataError, match=re.escape(missing)):
    interhand.InterHand(missing)
  root = _copy(fixture, tmp_path)
  images = os.path.join(root, "images", SPLIT)
  shutil.rmtree(images)
  with pytest.raises(common.DataError, match=re.escape(images)):
    interhand.InterHand(root, SPLIT)
  with pytest.raises(common.DataError, match="split"):
    interhand.InterHand(root, "training")


def test_nan_on_valid_joint(tmp_path):
  fx = write_fixture(str(tmp_path), nan_valid=True)
  path = interhand.annotation_path(str(tmp_path), SPLIT, "joint_3d")
  first = _ids(fx, (10,))[0]
  with pytest.raises(common.DataError, match=rf"{re.escape(path)}: annotation {first} .*NaN.*\[3\]"):
    interhand.InterHand(str(tmp_path), SPLIT)


def test_tfds_build_and_read(fixture, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  from peclr_jax.data.tfds import interhand26m

  root, _ = fixture
  builder = interhand26m.Interhand26m(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  read = tfds.builder_from_directory(builder.data_dir)
  assert set(read.info.splits) == {SPLIT}  # Only splits with annotation files.
  data = read.as_data_source(SPLIT)
  src = interhand.InterHand(root, SPLIT)
  assert len(data) == len(src) == 4
  for i in range(len(data)):  # Stored unshuffled: position i is src[i].
    ex, r = data[i], src[i]
    assert ex["image_bytes"] == r["image_bytes"]
    assert os.path.join(root, ex["image_path"].decode()) == r["image_path"]
    for k in ("xyz", "uv", "K", "valid", "box"):
      assert ex[k].dtype == r[k].dtype and ex[k].shape == r[k].shape, k
      np.testing.assert_array_equal(ex[k], r[k], err_msg=k)
    for k in ("scale", "id", "flip", "has_xyz"):  # tfds hands scalars back as Python numbers.
      assert r[k].dtype.type(ex[k]) == r[k], k
  # The shared reader turns the build back into the same records.
  from peclr_jax.data import tfds as ptfds

  back = ptfds.TfdsSource(builder.data_dir, SPLIT)
  for i in range(len(back)):
    got, r = back[i], src[i]
    assert sorted(got) == sorted(r) and got["image_path"] == os.path.relpath(r["image_path"], root)
    for k in set(r) - {"image_path"}:
      assert np.asarray(got[k]).dtype == np.asarray(r[k]).dtype, k
      np.testing.assert_array_equal(got[k], r[k], err_msg=k)
