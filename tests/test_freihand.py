"""FreiHAND source: versions mapping, id split, labels against NumPy, and named errors for bad input."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from peclr_jax.data import common, synthetic
from peclr_jax.data.freihand import FreiHand, split_ids

N, V, N_EVAL = 24, 2, 8


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("fh"))
  synthetic.generate(out, N, N_EVAL, seed=0, versions=V, workers=1, progress=False)
  return out


def load(root, name):
  with open(os.path.join(root, f"{name}.json")) as f:
    return np.array(json.load(f))


def read(path):
  with open(path, "rb") as f:
    return f.read()


def rgb(root, i, split="training"):
  return os.path.join(root, split, "rgb", f"{i:08d}.jpg")


def project(xyz, K):  # u = fx X / Z + cx, v = fy Y / Z + cy, written out
  X, Y, Z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
  return np.stack([K[0, 0] * X / Z + K[0, 1] * Y / Z + K[0, 2], K[1, 1] * Y / Z + K[1, 2]], -1)


def test_all_records_map_to_files_in_order(root):
  ds = FreiHand(root)
  xyz, K, scale = (load(root, f"training_{k}") for k in ("xyz", "K", "scale"))
  assert len(ds) == N * V == len(os.listdir(os.path.join(root, "training", "rgb")))
  assert (ds.n_ids, ds.n_versions) == (N, V)
  for i in range(len(ds)):
    r = ds[i]
    id = i % N
    assert r["image_path"] == rgb(root, i) and r["image_bytes"] == read(rgb(root, i))
    assert r["id"] == id and r["index"] == i and r["has_xyz"] and not r["flip"]
    np.testing.assert_allclose(r["xyz"], xyz[id], atol=1e-7)
    np.testing.assert_allclose(r["K"], K[id], rtol=1e-7)
    np.testing.assert_allclose(r["scale"], scale[id], rtol=1e-6)
  with pytest.raises(IndexError):
    ds[len(ds)]


def test_id_and_version_subsets(root):
  ids, versions = [5, 0, 17], [1]
  ds = FreiHand(root, ids=ids, versions=versions)
  assert len(ds) == 3
  for i, id in enumerate(ids):
    assert ds[i]["id"] == id and ds[i]["image_path"] == rgb(root, id + N)
  ds = FreiHand(root, ids=[3, 9], versions=[1, 0])
  assert [ds[i]["image_path"] for i in range(4)] == [rgb(root, f) for f in (3 + N, 9 + N, 3, 9)]
  assert [int(ds[i]["id"]) for i in range(4)] == [3, 9, 3, 9]
  with pytest.raises(common.DataError):
    FreiHand(root, ids=[N])
  with pytest.raises(common.DataError):
    FreiHand(root, versions=[V])


@pytest.mark.parametrize(
  "n,frac,seed,n_val", [(24, 0.25, 0, 6), (10, 0.26, 3, 3), (32560, 0.1, 5, 3256), (10, 0, 1, 0)]
)
def test_split_ids(n, frac, seed, n_val):
  train, val = split_ids(n, frac, seed)
  assert len(val) == n_val and len(train) == n - n_val  # rounded
  assert not set(train.tolist()) & set(val.tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
  t2, v2 = split_ids(n, frac, seed)
  np.testing.assert_array_equal(train, t2)
  np.testing.assert_array_equal(val, v2)


def test_split_ids_depends_on_seed():
  assert not np.array_equal(split_ids(100, 0.5, 0)[1], split_ids(100, 0.5, 1)[1])


def test_split_keeps_versions_together(root):
  train, val = split_ids(N, 0.25, seed=7)
  files = {}
  for name, ids in (("train", train), ("val", val)):
    ds = FreiHand(root, ids=ids)
    recs = [ds[i] for i in range(len(ds))]
    assert {int(r["id"]) for r in recs} == set(ids.tolist())
    files[name] = {r["image_path"] for r in recs}
    assert files[name] == {rgb(root, id + N * v) for id in ids for v in range(V)}
  assert not files["train"] & files["val"]
  assert len(files["train"] | files["val"]) == N * V


def test_uv_is_projection_and_box_is_tight(root):
  ds = FreiHand(root)
  xyz, K = load(root, "training_xyz"), load(root, "training_K")
  for i in (0, 7, N + 3, 2 * N - 1):
    r, id = ds[i], i % N
    uv = project(xyz[id], K[id])
    np.testing.assert_allclose(r["uv"], uv, atol=2e-3)
    assert r["valid"].all() and r["uv"].dtype == np.float32 and r["uv"].shape == (21, 2)
    np.testing.assert_allclose(r["box"], [*uv.min(0), *uv.max(0)], atol=2e-3)
    # Within the picture: the renderer keeps the hand near the centre.
    assert 0 < r["box"][0] < r["box"][2] < 224 and 0 < r["box"][1] < r["box"][3] < 224


def test_evaluation_split_without_xyz(root, tmp_path):
  ev = FreiHand(root, "evaluation")
  assert len(ev) == N_EVAL and ev[0]["has_xyz"] and ev[0]["image_path"] == rgb(root, 0, "evaluation")
  dst = str(tmp_path / "fh")
  shutil.copytree(root, dst)
  os.remove(os.path.join(dst, "evaluation_xyz.json"))
  ev = FreiHand(dst, "evaluation")
  K, scale = load(dst, "evaluation_K"), load(dst, "evaluation_scale")
  assert len(ev) == N_EVAL
  r = ev[3]
  assert not r["has_xyz"] and not r["valid"].any() and r["image_bytes"] == read(rgb(dst, 3, "evaluation"))
  np.testing.assert_allclose(r["K"], K[3], rtol=1e-7)
  np.testing.assert_allclose(r["scale"], scale[3], rtol=1e-6)
  np.testing.assert_array_equal(r["box"], [0, 0, 224, 224])


def test_bad_split_name(root):
  with pytest.raises(common.DataError, match="split"):
    FreiHand(root, "test")


# A hand-made tiny set (3 ids x 2 versions, 8x8 JPEGs) for the bad-input cases.
def write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f)


@pytest.fixture
def tiny(tmp_path):
  root = str(tmp_path / "tiny")
  os.makedirs(os.path.join(root, "training", "rgb"))
  rng = np.random.default_rng(0)
  xyz = rng.uniform(-0.05, 0.05, (3, 21, 3)) + [0, 0, 0.5]
  K = np.tile([[300.0, 0, 112], [0, 300, 112], [0, 0, 1]], (3, 1, 1))
  for i in range(6):
    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(rgb(root, i))
  write_json(os.path.join(root, "training_xyz.json"), xyz.tolist())
  write_json(os.path.join(root, "training_K.json"), K.tolist())
  write_json(os.path.join(root, "training_scale.json"), [0.03] * 3)
  assert len(FreiHand(root)) == 6  # the unmodified set loads
  return root


def expect_error(root, path):
  with pytest.raises(common.DataError) as e:
    FreiHand(root)
  assert path in str(e.value), str(e.value)


def test_missing_root(tmp_path):
  expect_error(str(tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_missing_rgb_dir(tiny):
  shutil.rmtree(os.path.join(tiny, "training", "rgb"))
  expect_error(tiny, os.path.join(tiny, "training", "rgb"))


def test_missing_K(tiny):
  path = os.path.join(tiny, "training_K.json")
  os.remove(path)
  expect_error(tiny, path)


def test_xyz_one_entry_short(tiny):
  path = os.path.join(tiny, "training_xyz.json")
  write_json(path, load(tiny, "training_xyz")[:2].tolist())
  expect_error(tiny, path)


def test_image_count_not_a_multiple(tiny):
  os.remove(rgb(tiny, 5))
  expect_error(tiny, os.path.join(tiny, "training", "rgb"))


def test_nan_in_xyz(tiny):
  path = os.path.join(tiny, "training_xyz.json")
  xyz = load(tiny, "training_xyz")
  xyz[1, 4, 2] = np.nan
  write_json(path, xyz.tolist())  # json writes NaN, which json.load accepts
  expect_error(tiny, path)


@pytest.mark.parametrize("name", ["xyz", "K", "scale"])
def test_invalid_json(tiny, name):
  path = os.path.join(tiny, f"training_{name}.json")
  with open(path, "w") as f:
    f.write('[[1.0, 2.0], "unterminated')
  expect_error(tiny, path)


def test_wrong_label_shape(tiny):
  path = os.path.join(tiny, "training_K.json")
  write_json(path, np.zeros((3, 3, 2)).tolist())
  expect_error(tiny, path)
