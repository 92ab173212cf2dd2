"""ImageFolder (unlabelled image trees) and Mix (weighted sampling across sources)."""

import copy
import json
import os

import grain
import numpy as np
import pytest
from PIL import Image

from peclr_jax.data import common
from peclr_jax.data.folder import ImageFolder
from peclr_jax.data.mix import Mix

# Relative path -> (width, height); "Z.JPG" checks that extensions match case-insensitively.
IMAGES = {"b/c/y.png": (40, 25), "a/x.jpg": (30, 20), "z.jpeg": (12, 34), "a/Z.JPG": (9, 7)}


def write_images(root, images=IMAGES):
  for rel, size in images.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    Image.new("RGB", size, (len(rel) * 20, 90, 10)).save(os.path.join(root, rel))
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not an image")


def kind(x):
  """Type, dtype and shape of a record value (what batching depends on)."""
  return (type(x), None, None) if isinstance(x, str | bytes) else (type(x), x.dtype, x.shape)


def write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f)
  return str(path)


@pytest.fixture
def root(tmp_path):
  write_images(tmp_path / "imgs")
  return str(tmp_path / "imgs")


def uv_with_gaps(missing=(3, 7)):
  uv = [[10.0 + 2 * j, 5.0 + j] for j in range(21)]
  return [None if j in missing else p for j, p in enumerate(uv)]


def test_folder_lists_images_recursively_in_sorted_order(root):
  src = ImageFolder(root)
  assert src.paths == sorted(IMAGES)
  assert len(src) == len(IMAGES)
  assert [src[i]["image_path"] for i in range(len(src))] == [os.path.join(root, p) for p in sorted(IMAGES)]


def test_folder_records(root, tmp_path):
  box = [1.0, 2.0, 10.0, 12.5]
  ann = write_json(tmp_path / "ann.json", {"a/x.jpg": {"box": box}, "./b/c/y.png": {"uv": uv_with_gaps()}})
  K = [[100.0, 0, 20], [0, 100.0, 12], [0, 0, 1]]
  src = ImageFolder(root, ann, K=K)
  by_name = {os.path.relpath(src[i]["image_path"], root): src[i] for i in range(len(src))}
  ref = common.make_record(image_path="r", image_bytes=b"", index=0, id=0, image_size=(1, 1))
  for rel, r in by_name.items():
    assert {k: kind(v) for k, v in r.items()} == {k: kind(v) for k, v in ref.items()}
    with open(os.path.join(root, rel), "rb") as f:
      assert r["image_bytes"] == f.read()
    assert not r["has_xyz"] and r["scale"] == 0 and not r["xyz"].any()
    np.testing.assert_array_equal(r["K"], np.array(K, np.float32))
  assert [int(by_name[p]["index"]) for p in sorted(IMAGES)] == list(range(len(IMAGES)))

  np.testing.assert_array_equal(by_name["a/x.jpg"]["box"], box)
  assert not by_name["a/x.jpg"]["valid"].any()

  r, uv = by_name["b/c/y.png"], uv_with_gaps()
  valid = np.array([p is not None for p in uv])
  np.testing.assert_array_equal(r["valid"], valid)
  pts = np.array([p for p in uv if p is not None], np.float32)
  np.testing.assert_array_equal(r["uv"][valid], pts)
  assert not r["uv"][~valid].any()
  np.testing.assert_allclose(r["box"], [*pts.min(0), *pts.max(0)])

  for rel in ("z.jpeg", "a/Z.JPG"):  # No annotation: the whole image.
    np.testing.assert_array_equal(by_name[rel]["box"], [0, 0, *IMAGES[rel]])
    assert not by_name[rel]["valid"].any()
  np.testing.assert_array_equal(ImageFolder(root)[0]["K"], common.DEFAULT_K)


def test_folder_all_joints_missing_falls_back_to_image_box(root, tmp_path):
  ann = write_json(tmp_path / "ann.json", {"z.jpeg": {"uv": [None] * 21}})
  r = ImageFolder(root, ann)[ImageFolder(root).paths.index("z.jpeg")]
  np.testing.assert_array_equal(r["box"], [0, 0, *IMAGES["z.jpeg"]])


def test_folder_errors(root, tmp_path):
  with pytest.raises(common.DataError, match="does not exist"):
    ImageFolder(str(tmp_path / "nope"))
  empty = tmp_path / "empty"
  (empty / "sub").mkdir(parents=True)
  (empty / "sub" / "a.txt").write_text("x")
  with pytest.raises(common.DataError, match="no images with extensions") as e:
    ImageFolder(str(empty))
  assert str(empty) in str(e.value)

  box = {"box": [0, 0, 1, 1]}
  ann = write_json(tmp_path / "missing.json", {"a/x.jpg": box, "a/gone.jpg": box})
  with pytest.raises(common.DataError) as e:
    ImageFolder(root, ann)
  assert os.path.join(root, "a/gone.jpg") in str(e.value) and ann in str(e.value)

  bad = {
    "short": ({"uv": [[1.0, 2.0]] * 20}, "21"),
    "wide": ({"uv": [[1.0, 2.0, 3.0]] * 21}, "shape"),
    "nan": ({"uv": [[float("nan"), 2.0]] + [[1.0, 2.0]] * 20}, "NaN"),
    "box": ({"box": [5, 5, 1, 9]}, "x1 > x0"),
    "neither": ({"xyz": []}, "expected"),
  }
  for name, (value, msg) in bad.items():
    path = write_json(tmp_path / f"{name}.json", {"z.jpeg": value})
    with pytest.raises(common.DataError, match=msg) as e:
      ImageFolder(root, path)
    assert path in str(e.value), name
  with pytest.raises(IndexError):
    ImageFolder(root)[len(IMAGES)]


class Values:
  """A source whose record j of source k is {"k": k, "j": j}."""

  def __init__(self, k, n):
    self.k, self.n = k, n

  def __len__(self):
    return self.n

  def __getitem__(self, j):
    if not 0 <= j < self.n:
      raise IndexError(j)
    return {"k": np.int64(self.k), "j": np.int64(j)}

  def __repr__(self):
    return f"Values({self.k}, {self.n})"


def drawn(mix):
  recs = [mix[i] for i in range(len(mix))]
  return np.array([int(r["source"]) for r in recs]), np.array([int(r["j"]) for r in recs]), recs


@pytest.mark.parametrize("weights", [(0.5, 0.5), (1.0, 3.0), (2.0, 0.0, 1.0)])
def test_mix_proportions_follow_weights(weights):
  sources = [Values(k, n) for k, n in enumerate((7, 50, 3)[: len(weights)])]
  n = 6000
  src, j, recs = drawn(Mix(sources, weights, num_records=n, seed=1))
  p = np.asarray(weights) / sum(weights)
  for k, pk in enumerate(p):
    count = (src == k).sum()
    assert abs(count - n * pk) <= 5 * np.sqrt(n * pk * (1 - pk)) + 1e-9, (k, count)  # 5 sigma.
  assert all(r["k"] == r["source"] for r in recs)  # The record comes from the source it names.
  for k, s in enumerate(sources):  # Indices are uniform over each drawn source.
    if p[k] > 0:
      counts = np.bincount(j[src == k], minlength=len(s))
      assert len(counts) == len(s)
      expect = counts.sum() / len(s)
      assert np.abs(counts - expect).max() <= 6 * np.sqrt(expect), (k, counts)


def test_mix_deterministic_by_seed():
  sources = [Values(0, 10), Values(1, 20)]
  a, b = Mix(sources, [1, 1], seed=3), Mix(sources, [1, 1], seed=3)
  assert len(a) == 30  # Default: total length.
  assert [a[i] for i in range(30)] == [b[i] for i in range(30)]
  assert not np.array_equal(drawn(a)[0], drawn(Mix(sources, [1, 1], seed=4))[0])
  # Entry i depends only on (seed, i): a longer mix extends a shorter one.
  short, long = drawn(Mix(sources, [1, 2], 100, seed=5)), drawn(Mix(sources, [1, 2], 1000, seed=5))
  np.testing.assert_array_equal(short[0], long[0][:100])
  np.testing.assert_array_equal(short[1], long[1][:100])
  # A copy (what grain does when it hands the source to workers) reads the same records.
  assert [copy.deepcopy(a)[i] for i in range(30)] == [a[i] for i in range(30)]


def test_mix_in_grain_pipeline(root):
  folder = ImageFolder(root)
  mix = Mix([folder, ImageFolder(root)], [1, 1], num_records=8)
  batch = next(iter(grain.MapDataset.source(mix).batch(4)))
  assert batch["source"].shape == (4,) and batch["box"].shape == (4, 4)
  np.testing.assert_array_equal(batch["source"], [mix[i]["source"] for i in range(4)])


def test_mix_validation():
  a, b = Values(0, 3), Values(1, 0)
  with pytest.raises(common.DataError, match="2 sources"):
    Mix([a, a], [1])
  with pytest.raises(common.DataError, match="non-negative"):
    Mix([a, a], [1, -1])
  with pytest.raises(common.DataError, match="sum to > 0"):
    Mix([a, a], [0, 0])
  with pytest.raises(common.DataError, match=r"source 1 \(Values\(1, 0\)\) is empty"):
    Mix([a, b], [1, 1])
  with pytest.raises(IndexError):
    Mix([a], [1])[3]
