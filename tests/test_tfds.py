"""The FreiHAND TFDS builder and TfdsSource, built and read without TensorFlow."""

import copy
import json
import os
import sys

import grain
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from peclr_jax.data import common  # noqa: E402
from peclr_jax.data import tfds as ptfds  # noqa: E402
from peclr_jax.data.freihand import FreiHand  # noqa: E402
from peclr_jax.data.tfds import freihand  # noqa: E402

N_IDS, N_VERSIONS, N_EVAL = 3, 2, 2


def write_freihand(root):
  """Tiny FreiHAND copy; returns what was written. Evaluation has no xyz, as in the public release."""
  rng = np.random.default_rng(0)
  out = {}
  splits = (("training", N_IDS, N_VERSIONS, True), ("evaluation", N_EVAL, 1, False))
  for split, n, versions, with_xyz in splits:
    os.makedirs(os.path.join(root, split, "rgb"))
    xyz = rng.uniform(-0.05, 0.05, (n, 21, 3))
    xyz[..., 2] += 0.5  # In front of the camera.
    K = np.tile([[380.0, 0, 112], [0, 381.0, 112], [0, 0, 1]], (n, 1, 1)) + rng.uniform(-2, 2, (n, 1, 1)) * [
      [1, 0, 1],
      [0, 1, 1],
      [0, 0, 0],
    ]
    scale = np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=-1)
    images = []
    for i in range(n * versions):
      path = os.path.join(root, split, "rgb", f"{i:08d}.jpg")
      Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
      with open(path, "rb") as f:
        images.append(f.read())
    files = {"K": K, "scale": scale} | ({"xyz": xyz} if with_xyz else {})
    for name, value in files.items():
      with open(os.path.join(root, f"{split}_{name}.json"), "w") as f:
        json.dump(value.tolist(), f)
    out[split] = dict(xyz=xyz, K=K, scale=scale, images=images)
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("freihand")
  root, data_dir = str(tmp / "root"), str(tmp / "tfds")
  written = write_freihand(root)
  builder_dir = ptfds.build(freihand.Freihand, root, data_dir)
  return dict(root=root, data_dir=data_dir, builder_dir=builder_dir, written=written)


def test_build_writes_array_record_without_tensorflow(built):
  d = built["builder_dir"]
  assert d == os.path.join(built["data_dir"], "freihand", "1.0.0")
  files = sorted(os.listdir(d))
  assert "dataset_info.json" in files
  assert [f for f in files if ".array_record-" in f] == [
    "freihand-evaluation.array_record-00000-of-00001",
    "freihand-train.array_record-00000-of-00001",
  ]
  assert "tensorflow" not in sys.modules  # Neither building nor reading imports it.
  assert len(ptfds.TfdsSource(d, "train")) == N_IDS * N_VERSIONS
  assert len(ptfds.TfdsSource(d, "evaluation")) == N_EVAL


def test_train_records_equal_what_was_written(built):
  w = built["written"]["training"]
  src = ptfds.TfdsSource(built["data_dir"], "train")
  for i in range(len(src)):
    r, id = src[i], i % N_IDS
    assert r["image_path"] == f"training/rgb/{i:08d}.jpg"
    assert r["image_bytes"] == w["images"][i]
    assert r["index"] == i and r["id"] == id and r["has_xyz"] and r["valid"].all() and not r["flip"]
    np.testing.assert_allclose(r["xyz"], w["xyz"][id], rtol=1e-6)
    np.testing.assert_allclose(r["K"], w["K"][id], rtol=1e-6)
    np.testing.assert_allclose(r["scale"], w["scale"][id], rtol=1e-5)
    p = w["xyz"][id] @ w["K"][id].T  # Independent pinhole projection.
    uv = p[:, :2] / p[:, 2:]
    np.testing.assert_allclose(r["uv"], uv, rtol=1e-5)
    np.testing.assert_allclose(r["box"], [*uv.min(0), *uv.max(0)], rtol=1e-5)


def kind(x):
  return (type(x), None, None) if isinstance(x, str | bytes) else (type(x), x.dtype, x.shape)


@pytest.mark.parametrize("split,tfds_split", [("training", "train"), ("evaluation", "evaluation")])
def test_records_equal_freihand_source(built, split, tfds_split):
  ref, src = FreiHand(built["root"], split), ptfds.TfdsSource(built["builder_dir"], tfds_split)
  assert len(src) == len(ref)
  for i in range(len(ref)):
    a, b = src[i], ref[i]
    assert {k: kind(v) for k, v in a.items()} == {k: kind(v) for k, v in b.items()}
    assert a["image_path"] == os.path.relpath(b["image_path"], built["root"])
    for k in b.keys() - {"image_path"}:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  if split == "evaluation":  # No evaluation_xyz.json: no 3D labels, the whole image as box.
    assert not src[0]["has_xyz"] and not src[0]["valid"].any()


def test_raw_data_source_and_grain(built):
  import tensorflow_datasets as tfds

  # No builder class needed to read: plain numpy dicts with the record's field names.
  ds = tfds.builder_from_directory(built["builder_dir"]).as_data_source("train")
  ex = ds[1]
  assert set(ex) == set(ptfds.FIELDS)
  assert ex["image_bytes"] == built["written"]["training"]["images"][1]

  src = ptfds.TfdsSource(built["builder_dir"], "train")
  batch = next(iter(grain.MapDataset.source(src).batch(4)))
  assert batch["xyz"].shape == (4, 21, 3) and batch["index"].tolist() == [0, 1, 2, 3]
  assert [r["id"] for r in src.__getitems__([5, 0])] == [5 % N_IDS, 0]
  # Copies (grain hands sources to worker processes) reopen the files lazily.
  clone = copy.deepcopy(src)
  assert clone._ds is None and clone[3]["image_bytes"] == src[3]["image_bytes"]
  assert len(ptfds.TfdsSource(built["builder_dir"], "train[:50%]")) == N_IDS * N_VERSIONS // 2


def test_find_builder_dir(built, tmp_path):
  d, data_dir = built["builder_dir"], built["data_dir"]
  for path in (d, os.path.dirname(d), data_dir):
    assert ptfds.find_builder_dir(path) == d
  assert ptfds.find_builder_dir(data_dir, name="freihand") == d
  newer = os.path.join(os.path.dirname(d), "1.10.0")
  os.makedirs(newer)
  try:
    with open(os.path.join(newer, "dataset_info.json"), "w") as f:
      f.write("{}")
    assert ptfds.find_builder_dir(data_dir) == newer  # Newest version, compared numerically.
  finally:
    os.remove(os.path.join(newer, "dataset_info.json"))
    os.rmdir(newer)
  with pytest.raises(common.DataError, match="dataset 'interhand26m'"):
    ptfds.find_builder_dir(data_dir, name="interhand26m")
  with pytest.raises(common.DataError, match="no built TFDS") as e:
    ptfds.find_builder_dir(str(tmp_path))
  assert str(tmp_path) in str(e.value)
  with pytest.raises(common.DataError, match=r"no split 'val'.*evaluation.*train"):
    ptfds.TfdsSource(d, "val")
  with pytest.raises(IndexError):
    ptfds.TfdsSource(d, "evaluation")[N_EVAL]


def test_build_errors(tmp_path):
  with pytest.raises(common.DataError, match="does not exist") as e:
    ptfds.build(freihand.Freihand, str(tmp_path / "nope"), str(tmp_path / "out"))
  assert str(tmp_path / "nope") in str(e.value)
  (tmp_path / "bad" / "training" / "rgb").mkdir(parents=True)
  with pytest.raises(common.DataError, match="training_K.json"):
    ptfds.build(freihand.Freihand, str(tmp_path / "bad"), str(tmp_path / "out"))


def test_missing_tfds_message(monkeypatch, built):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
  with pytest.raises(common.DataError, match=r"pip install 'peclr_jax\[tfds\]'"):
    ptfds.TfdsSource(built["builder_dir"], "train")
