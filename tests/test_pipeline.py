"""The grain pipeline: crop geometry against marker centroids and NumPy, decode errors, and the dataset's order,
determinism, checkpointing, sharding, workers and corrupt-file handling."""

import io
import multiprocessing
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from peclr_jax.data import common, pipeline, synthetic
from peclr_jax.data.freihand import FreiHand

N, V = 24, 2
NREC = N * V


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("fh"))
  synthetic.generate(out, N, 0, seed=0, versions=V, workers=1, progress=False)
  return out


@pytest.fixture(scope="module")
def src(root):
  return FreiHand(root)


@pytest.fixture
def corrupt_root(root, tmp_path):
  """A copy of the set whose file 5 is a truncated JPEG."""
  dst = str(tmp_path / "fh")
  shutil.copytree(root, dst)
  path = os.path.join(dst, "training", "rgb", "00000005.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  return dst, path


def project(xyz, K):  # independent pinhole projection with a general 3x3 K
  p = xyz @ K.T
  return p[:, :2] / p[:, 2:]


def apply(T, uv):
  return uv @ T[:2, :2].T + T[:2, 2]


def take(ds, n=None):
  """The first n batches (all when None) of an IterDataset; the iterator is closed afterwards."""
  it = iter(ds)
  try:
    return [b for _, b in zip(range(n), it)] if n else list(it)
  finally:
    it.close()


def make(source, batch, **kw):
  kw = dict(size=32, process_index=0, process_count=1, threads=2) | kw
  return pipeline.dataset(source, batch, **kw)


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- crop ---------------------------------------------------------------------------------------------------------
W, H = 120, 90
# Markers (x0, y0, w, h): pixel blocks [x0, x0 + w) x [y0, y0 + h); their continuous centre is x0 + w / 2, y0 + h / 2.
MARKERS = [(30, 20, 1, 1), (84, 24, 2, 2), (40, 66, 3, 3), (95, 60, 1, 2), (62, 43, 2, 1)]


def marker_sample(box=None):
  image = np.zeros((H, W, 3), np.uint8)
  for x0, y0, w, h in MARKERS:
    image[y0 : y0 + h, x0 : x0 + w] = 255
  uv = np.array([[x0 + w / 2, y0 + h / 2] for x0, y0, w, h in MARKERS], np.float32)
  box = np.array([*uv.min(0), *uv.max(0)] if box is None else box, np.float32)
  K = np.array([[200.0, 0, 60], [0, 210, 45], [0, 0, 1]], np.float32)
  return dict(image=image, uv=uv, box=box, K=K)


def centroid(img, uv, r):
  """Intensity-weighted centroid of the (2r+1)^2 pixels around uv (pixel i has centre i + 0.5); and the mass."""
  g = img.astype(np.float64).mean(-1)
  cx, cy = int(np.floor(uv[0])), int(np.floor(uv[1]))
  ys, xs = np.mgrid[cy - r : cy + r + 1, cx - r : cx + r + 1]
  w = g[ys, xs]
  return np.array([(w * (xs + 0.5)).sum(), (w * (ys + 0.5)).sum()]) / w.sum(), w.sum()


@pytest.mark.parametrize(
  "size,margin,box",
  [
    (128, 1.5, None),  # upscaled
    (40, 1.3, None),  # downscaled (area-filtered)
    (96, 1.3, (20, 10, 70, 85)),  # taller than wide, markers off-centre
    (64, 2.0, (50, 30, 100, 50)),  # wider than tall
  ],
)
def test_crop_moves_markers_to_uv(size, margin, box):
  s = marker_sample(box)
  out = pipeline.crop(s, size, margin)
  side = max(s["box"][2] - s["box"][0], s["box"][3] - s["box"][1]) * margin
  scale = size / side
  # A marker of w px blurs over (w + 2 * max(1, 1 / scale)) * scale px (the bilinear filter widens when shrinking).
  r = int(np.ceil((1.5 + max(1, 1 / scale)) * scale)) + 1
  assert out["image"].shape == (size, size, 3) and out["image"].dtype == np.uint8
  total = out["image"].astype(np.float64).mean(-1).sum()
  for (_, _, w, h), uv in zip(MARKERS, out["uv"]):
    if not ((np.floor(uv) >= r) & (np.floor(uv) < size - r)).all():
      continue  # the marker is cut off by this box
    c, mass = centroid(out["image"], uv, r)
    assert mass > 0.5 * 255 * w * h * scale**2, (uv, mass)  # the marker is there, not just a neighbour's tail
    np.testing.assert_allclose(c, uv, atol=0.5)
    total -= mass
  if box is None:  # all markers inside: nothing bright elsewhere
    assert total < 0.02 * 255 * scale**2


@pytest.mark.parametrize("size,margin,box", [(128, 1.5, None), (64, 1.0, (10, 30, 50, 35)), (32, 2.5, (-5, -8, 9, 3))])
def test_crop_transform_geometry(size, margin, box):
  s = marker_sample(box)
  rng = np.random.default_rng(1)
  xyz = np.concatenate([rng.uniform(-0.1, 0.1, (21, 2)), rng.uniform(0.3, 0.9, (21, 1))], -1)
  K = s["K"].astype(np.float64)
  s.update(xyz=xyz.astype(np.float32), uv=project(xyz, K).astype(np.float32))
  out = pipeline.crop(s, size, margin)
  Kp = out["K"].astype(np.float64)
  np.testing.assert_allclose(project(xyz, Kp), out["uv"], atol=2e-3)
  np.testing.assert_array_equal(out["xyz"], s["xyz"])
  assert "box" not in out and out["uv"].dtype == out["K"].dtype == np.float32
  T = Kp @ np.linalg.inv(K)  # K' = T K
  np.testing.assert_allclose(T[2], [0, 0, 1], atol=1e-6)
  np.testing.assert_allclose([T[0, 1], T[1, 0]], 0, atol=1e-6)
  np.testing.assert_allclose(T[0, 0], T[1, 1], rtol=1e-5)  # isotropic
  np.testing.assert_allclose(apply(T, s["uv"]), out["uv"], atol=2e-3)
  x0, y0, x1, y1 = s["box"].astype(np.float64)
  np.testing.assert_allclose(apply(T, np.array([(x0 + x1) / 2, (y0 + y1) / 2])), [size / 2, size / 2], atol=1e-3)
  c0, c1 = apply(T, np.array([[x0, y0], [x1, y1]]))
  longer = np.argmax([x1 - x0, y1 - y0])
  np.testing.assert_allclose((c1 - c0)[longer], size / margin, rtol=1e-5)


def test_crop_pads_outside_the_image_with_black():
  size, margin, box = 64, 1.5, (-20.0, -10.0, 30.0, 30.0)  # square side 75: leaves the image left, top and bottom
  h, w = 40, 60
  s = dict(
    image=np.full((h, w, 3), 255, np.uint8),
    uv=np.zeros((21, 2), np.float32),
    box=np.array(box, np.float32),
    K=np.eye(3, dtype=np.float32),
  )
  out = pipeline.crop(s, size, margin)["image"]
  scale = size / (50 * margin)
  ij = (np.arange(size) + 0.5 - size / 2) / scale  # pixel centres in the source, relative to the box centre
  sx, sy = ij + 5, ij + 10  # box centre (5, 10)
  inside = ((sx[None, :] > 2) & (sx[None, :] < w - 2)) & ((sy[:, None] > 2) & (sy[:, None] < h - 2))
  outside = (sx[None, :] < -2) | (sy[:, None] < -2) | (sy[:, None] > h + 2)
  assert inside.sum() > 500 and outside.sum() > 500
  assert (out[inside] == 255).all() and (out[outside] == 0).all()


# --- decode -------------------------------------------------------------------------------------------------------
def encoded(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


def record(data, flip=False, path="/data/x/00000042.jpg"):
  return dict(image_path=path, image_bytes=data, flip=np.bool_(flip), index=np.int64(3))


def test_decode_and_flip():
  a = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  d = pipeline.decode(record(encoded(a, "PNG")))
  np.testing.assert_array_equal(d["image"], a)
  assert "image_bytes" not in d and "image_path" not in d and d["index"] == 3
  np.testing.assert_array_equal(pipeline.decode(record(encoded(a, "PNG"), flip=True))["image"], a[:, ::-1])
  g = pipeline.decode(record(encoded(a[..., 0], "PNG")))["image"]  # greyscale becomes RGB
  np.testing.assert_array_equal(g, np.repeat(a[..., :1], 3, -1))


@pytest.mark.parametrize(
  "data",
  [
    encoded(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")[:3000],  # truncated
    b"this is not an image",
    b"",
  ],
)
def test_decode_errors_name_the_file(data):
  with pytest.raises(common.DataError, match="/data/x/00000042.jpg"):
    pipeline.decode(record(data))


# --- dataset ------------------------------------------------------------------------------------------------------
def test_batch_shapes_and_content(src):
  size, margin, B = 32, 1.5, 8
  (b,) = take(make(src, B, size=size, margin=margin, shuffle=False), 1)
  kinds = {k: (v.dtype, v.shape) for k, v in b.items()}
  assert kinds == dict(
    image=(np.uint8, (B, size, size, 3)),
    xyz=(np.float32, (B, 21, 3)),
    uv=(np.float32, (B, 21, 2)),
    valid=(np.bool_, (B, 21)),
    has_xyz=(np.bool_, (B,)),
    K=(np.float32, (B, 3, 3)),
    scale=(np.float32, (B,)),
    id=(np.int64, (B,)),
    index=(np.int64, (B,)),
    flip=(np.bool_, (B,)),
  )
  np.testing.assert_array_equal(b["index"], np.arange(B))
  for j in range(B):
    np.testing.assert_array_equal(b["xyz"][j], src[j]["xyz"])
    xyz, K = b["xyz"][j].astype(np.float64), b["K"][j].astype(np.float64)
    np.testing.assert_allclose(project(xyz, K), b["uv"][j], atol=2e-3)  # labels follow the crop
    # Hand centred, longest side of its tight box = size / margin.
    lo, hi = b["uv"][j].min(0), b["uv"][j].max(0)
    np.testing.assert_allclose((lo + hi) / 2, size / 2, atol=1e-3)
    np.testing.assert_allclose((hi - lo).max(), size / margin, rtol=1e-4)
    # The image is the same square of the decoded file, resampled by PIL directly when it lies inside the image.
    lo0, hi0 = src[j]["uv"].astype(np.float64).min(0), src[j]["uv"].astype(np.float64).max(0)
    c, side = (lo0 + hi0) / 2, (hi0 - lo0).max() * margin
    if (c - side / 2 >= 0).all() and (c + side / 2 <= 224).all():
      with Image.open(src[j]["image_path"]) as im:
        ref = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR, box=(*(c - side / 2), *(c + side / 2))))
      assert np.abs(ref.astype(int) - b["image"][j]).max() <= 1


def test_same_seed_same_batches_other_seed_other_order(src):
  a, b = take(make(src, 6, seed=4), 3), take(make(src, 6, seed=4), 3)
  assert_same(a, b)
  c = take(make(src, 6, seed=5), 3)
  assert not np.array_equal(np.concatenate([x["index"] for x in a]), np.concatenate([x["index"] for x in c]))


def test_epochs_visit_every_record_once(src):
  batches = take(make(src, 10, seed=2, num_epochs=2, drop_remainder=False))
  assert [len(x["index"]) for x in batches] == [10] * 9 + [6]
  idx = np.concatenate([x["index"] for x in batches])
  e1, e2 = idx[:NREC], idx[NREC:]
  np.testing.assert_array_equal(np.sort(e1), np.arange(NREC))
  np.testing.assert_array_equal(np.sort(e2), np.arange(NREC))
  assert not np.array_equal(e1, np.arange(NREC)) and not np.array_equal(e1, e2)  # shuffled, reshuffled
  ordered = take(make(src, 10, shuffle=False, num_epochs=1, drop_remainder=False))
  np.testing.assert_array_equal(np.concatenate([x["index"] for x in ordered]), np.arange(NREC))
  assert len(take(make(src, 10, shuffle=False, num_epochs=1))) == NREC // 10  # drop_remainder


def test_state_resumes_exactly(src):
  it = iter(make(src, 10, seed=1))
  try:
    for _ in range(4):
      next(it)
    state = it.get_state()
    want = [next(it), next(it)]  # the second crosses into epoch 2
  finally:
    it.close()
  it = iter(make(src, 10, seed=1))
  try:
    it.set_state(state)
    assert_same([next(it), next(it)], want)
  finally:
    it.close()


@pytest.mark.parametrize(
  "count,G,epochs,drop",
  [
    (2, 8, None, True),
    (4, 8, None, True),  # 7 x 8 > 48 records: crosses an epoch
    (2, 10, 1, False),
    (4, 20, 1, False),
    (2, 10, 2, False),
  ],
)  # a partial last global batch (of 8, 8, 6)
def test_block_sharding_rebuilds_the_global_batch(src, count, G, epochs, drop):
  n = 7 if epochs is None else None
  kw = dict(seed=3, num_epochs=epochs, drop_remainder=drop)
  full = take(make(src, G, **kw), n)
  parts = [take(make(src, G, process_index=p, process_count=count, **kw), n) for p in range(count)]
  glued = [np.concatenate([p[i]["index"] for p in parts if i < len(p)]) for i in range(max(map(len, parts)))]
  assert len(glued) == len(full)
  for g, f in zip(glued, full):
    np.testing.assert_array_equal(g, f["index"])
  for p in parts:
    assert all(len(b["index"]) == G // count for b in p[: len(full) - 1])


def test_workers_give_the_same_batches(src):
  want = take(make(src, 4, seed=6), 3)
  ds = make(src, 4, seed=6, workers=2)
  it = iter(ds)
  try:
    got = [next(it) for _ in range(3)]
  finally:
    it.close()
    del it
  assert_same(got, want)
  assert not multiprocessing.active_children()


def test_skip_corrupt(corrupt_root):
  root, path = corrupt_root
  source = FreiHand(root)
  (b,) = take(make(source, 8, shuffle=False, num_epochs=1, skip_corrupt=True), 1)
  np.testing.assert_array_equal(b["skipped"], [0, 0, 0, 0, 0, 1, 0, 0])  # counted where it happened
  np.testing.assert_array_equal(b["index"], [0, 1, 2, 3, 4, 6, 6, 7])  # record 5 replaced by the next one
  np.testing.assert_array_equal(b["image"][5], b["image"][6])
  with pytest.raises(common.DataError, match=path):
    take(make(source, 8, shuffle=False, num_epochs=1), 1)


def test_verify(src, corrupt_root):
  assert pipeline.verify(src) == NREC
  root, path = corrupt_root
  with open(path, "wb") as f:
    f.write(b"not an image")
  with pytest.raises(common.DataError, match=path):
    pipeline.verify(FreiHand(root))
  assert pipeline.verify(FreiHand(root), limit=5) == 5  # the bad file is the 6th
