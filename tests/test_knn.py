"""The probes without an optimiser: cosine kNN and the exact ridge fit against NumPy, k chosen on planted
validation structure, the exact recovery of poses from features that are the poses, and the CLI on the tiny config
with a pretrained and a random-init encoder."""

import json
import os

import jax
import numpy as np
import pytest

from peclr_jax import configs, features, knn, pretrain


def _set(c, **overrides):
  for k, v in overrides.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def encoder(data_root, tmp_path_factory):
  """A tiny PeCLR pretraining run (2 steps) with its exported encoder."""
  c = _set(configs.load("pretrain:peclr,tiny"), **{"data.root": data_root, "total_steps": 2})
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  pretrain.train(c, workdir, progress=False)
  return workdir


def tiny(data_root, **overrides):
  return _set(configs.load("probe:linear,tiny"), **{"data.root": data_root, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# NumPy-level behaviour.
# ---------------------------------------------------------------------------------------------------------------
def test_neighbours_match_a_brute_force_cosine_search():
  rng = np.random.default_rng(0)
  train, query = rng.normal(size=(300, 7)), rng.normal(size=(40, 7))
  cos = (query @ train.T) / np.linalg.norm(query, axis=1)[:, None] / np.linalg.norm(train, axis=1)[None]
  want = np.argsort(-cos, axis=1)[:, :5]
  idx, sim = knn.neighbours(knn.normalise(train), knn.normalise(query), 5, chunk=16)
  np.testing.assert_array_equal(idx, want)
  np.testing.assert_allclose(sim, np.take_along_axis(cos, want, 1), rtol=1e-12)


def test_knn_on_features_that_are_the_poses():
  """Features = the flattened targets: k = 1 on a training set holding the queries returns them exactly."""
  rng = np.random.default_rng(1)
  y = rng.normal(size=(200, 21, 3))
  f = y.reshape(200, -1)
  for center in (True, False):
    pred = knn.predict(f, y, f[:30], [1], center=center)[1]
    np.testing.assert_array_equal(pred, y[:30])
  # Small noise on the query features moves no query off its own pose.
  pred = knn.predict(f, y, f[:30] + rng.normal(0, 1e-3, (30, 63)), [1])[1]
  np.testing.assert_array_equal(pred, y[:30])


def test_knn_on_a_pose_manifold_is_near_exact_for_new_poses():
  """Poses on a dense 2-D family; held-out queries: the nearest training poses are near, far nearer than the mean."""
  rng = np.random.default_rng(2)
  mean, basis = rng.normal(size=63), rng.normal(size=(2, 63))
  z = rng.uniform(-1, 1, (3000, 2))
  y = (mean + z @ basis).reshape(-1, 21, 3)
  f = y.reshape(len(y), -1) + rng.normal(0, 1e-3, (len(y), 63))
  pred = knn.predict(f[:2800], y[:2800], f[2800:], [1, 3])
  const = np.abs(y[:2800].mean(0) - y[2800:]).mean()
  for k in (1, 3):
    assert np.abs(pred[k] - y[2800:]).mean() < 0.05 * const


def test_weighted_knn_matches_a_numpy_softmax():
  rng = np.random.default_rng(3)
  train, y, query = rng.normal(size=(50, 4)), rng.normal(size=(50, 2)), rng.normal(size=(6, 4))
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  cos = unit(query) @ unit(train).T
  top = np.argsort(-cos, 1)[:, :4]
  w = np.exp(np.take_along_axis(cos, top, 1) / 0.1)
  want = (w[..., None] * y[top]).sum(1) / w.sum(1, keepdims=True)
  np.testing.assert_allclose(knn.predict(train, y, query, [4], tau=0.1, center=False)[4], want, rtol=1e-10)
  np.testing.assert_allclose(knn.predict(train, y, query, [4], center=False)[4], y[top].mean(1), rtol=1e-12)


def test_k_is_chosen_on_planted_validation_structure():
  """Clusters of 10 images share a direction and a pose, labels carry noise: averaging the cluster (k = 10) beats
  one noisy neighbour (k = 1) and a mix of clusters (k = 50)."""
  rng = np.random.default_rng(4)
  centres, poses = rng.normal(size=(40, 16)), rng.normal(size=(40, 5))
  c = np.repeat(np.arange(40), 10)
  f = centres[c] + rng.normal(0, 0.01, (400, 16))
  y = poses[c] + rng.normal(0, 0.5, (400, 5))
  q = np.arange(0, 400, 10)  # one validation image per cluster, not in the fitting set
  fit = np.setdiff1d(np.arange(400), q)
  preds = knn.predict(f[fit], y[fit], centres, [1, 9, 50])
  best, scores = knn.select(preds, lambda p: np.abs(p - poses).mean())
  assert best == 9 and scores[9] < scores[1] and scores[9] < scores[50]


def test_split_ids_keeps_every_id_on_one_side():
  ids = np.tile(np.arange(50), 4)  # four versions of each hand
  val = features.split_ids(ids, 0.2, seed=0)
  assert set(ids[val]).isdisjoint(ids[~val]) and len(set(ids[val])) == 10
  np.testing.assert_array_equal(val, features.split_ids(ids, 0.2, seed=0))
  assert not np.array_equal(val, features.split_ids(ids, 0.2, seed=1))
  assert features.split_ids(np.arange(2), 0.01).sum() == 1 and features.split_ids(np.arange(2), 0.99).sum() == 1


@pytest.mark.parametrize("d", [5, 80])  # primal (D < N) and dual (D > N)
def test_ridge_is_the_exact_minimiser(d):
  """The gradient of mean ||x_s w + b - y||^2 + lam ||w||^2 (x standardised with NumPy) vanishes at the fit."""
  rng = np.random.default_rng(5)
  x = rng.normal(3, 2, (60, d))
  y = x[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(0, 0.1, (60, 2))
  lam = 0.05
  m = features.ridge_fit(x, y, lam)
  xs = (x - x.mean(0)) / x.std(0)
  pred = features.ridge_predict(m, x)
  r = pred - y
  np.testing.assert_allclose(2 * xs.T @ r / 60 + 2 * lam * m["w"], 0, atol=1e-9)
  np.testing.assert_allclose(r.mean(0), 0, atol=1e-10)
  if d < 60:  # lam -> 0 is least squares with an intercept
    ls = np.linalg.lstsq(np.c_[x, np.ones(60)], y, rcond=None)[0]
    np.testing.assert_allclose(
      features.ridge_predict(features.ridge_fit(x, y, 1e-12), x), np.c_[x, np.ones(60)] @ ls, atol=1e-6
    )


def test_ridge_on_a_constant_feature_predicts_the_mean():
  x = np.c_[np.full(20, 4.0), np.arange(20.0)]
  y = np.arange(20.0)[:, None] * 2 + 1
  m = features.ridge_fit(x[:, :1], y, 1e-3)
  np.testing.assert_allclose(features.ridge_predict(m, x[:, :1]), np.full((20, 1), y.mean()))


# ---------------------------------------------------------------------------------------------------------------
# On the tiny data.
# ---------------------------------------------------------------------------------------------------------------
def test_features_that_are_the_poses_score_exactly(data_root):
  """The real pipeline (targets, reconstruction, metrics) with features replaced by the flattened 2.5-D targets and
  the training set holding the queries: the 2-D and metric 3-D errors against the ground truth are ~0."""
  c = tiny(data_root)
  feat = features.extract(c, features.encoder_variables(c), "evaluation", batch_size=12)  # 16 images: padding too
  assert feat["f"].shape == (16, 64) and feat["uv"].shape == (16, 21, 2)
  size = c.augment.out_size
  y = np.concatenate([feat["uv"] / size * 2 - 1, feat["z_rel"][..., None]], -1)  # keypoints.targets, normalised
  feat["f"] = y.reshape(len(y), -1)
  r = knn.probe(feat, feat, c.keypoints, size, ks=(1,), val_fraction=0.25)
  m = r["knn"]["metrics"]
  assert r["knn"]["k"] == 1
  assert m["epe_2d_px"] < 1e-4 and m["epe_mm"] < 0.5 and m["pa_epe_mm"] < 0.5
  assert r["constant"]["metrics"]["epe_2d_px"] > 1.0  # the floor is no accident of the scoring
  # The ridge fit of 63 targets on the 63 targets themselves is exact up to its small penalty.
  assert r["ridge"]["metrics"]["epe_2d_px"] < 0.1


def test_the_random_init_is_the_probe_trainers(data_root, tmp_path):
  """No encoder: the same weights and calibrated BatchNorm statistics as a linear probe's random-init encoder."""
  from peclr_jax import checkpoint, probe

  probe.train(tiny(data_root, total_steps=1), str(tmp_path), progress=False)
  _, saved = checkpoint.restore_variables(str(tmp_path))
  mine = features.encoder_variables(tiny(data_root))
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  jax.tree.map(close, mine, {k: saved[k]["encoder"] for k in ("params", "batch_stats")})
  assert not np.allclose(mine["batch_stats"]["bn1"]["var"], 1.0)  # really calibrated


def test_cli_with_a_pretrained_encoder_writes_the_reports(data_root, encoder, tmp_path, capsys):
  out = str(tmp_path / "knn")
  knn.main(
    [
      "--config=probe:linear,tiny",
      f"--config.data.root={data_root}",
      f"--encoder={encoder}",
      f"--workdir={out}",
      "--ks=1,3,5",
    ]
  )
  assert "| kNN | k = " in capsys.readouterr().out
  with open(os.path.join(out, "knn_evaluation.json")) as f:
    r = json.load(f)
  assert r["encoder"] == os.path.abspath(encoder) and r["images"] == 16 and r["train_images"] == 64
  assert set(r["knn"]["validation"]) == {"1", "3", "5"} and r["knn"]["k"] in (1, 3, 5)
  assert r["knn"]["validation"][str(r["knn"]["k"])] == min(r["knn"]["validation"].values())
  for probe in ("knn", "ridge", "constant"):
    assert np.isfinite(r[probe]["metrics"]["epe_2d_px"]) and np.isfinite(r[probe]["metrics"]["pa_epe_mm"])
  assert os.path.isfile(os.path.join(out, "knn_evaluation.md"))
  # The encoder's variables are the export's, unchanged.
  from peclr_jax import checkpoint

  loaded, _ = checkpoint.load_encoder(os.path.join(encoder, "encoder"))
  got = features.encoder_variables(tiny(data_root, encoder=encoder))
  jax.tree.map(np.testing.assert_array_equal, got, {k: loaded[k] for k in ("params", "batch_stats")})


@pytest.mark.parametrize(
  "args, words",
  [
    (["--ks=1,x"], "--ks=1,x: expected positive integers"),
    (["--ks=0"], "expected positive integers"),
    (["--val_fraction=1.5"], "--val_fraction=1.5"),
    (["--encoder=/nonexistent"], "no exported encoder"),
    (["--config.model.width=4", "--encoder=ENCODER"], "does not match config.model"),
  ],
)
def test_bad_input_is_one_error_line(args, words, data_root, encoder, tmp_path, capsys):
  args = [a.replace("ENCODER", encoder) for a in args]
  with pytest.raises(SystemExit) as e:
    knn.main(["--config=probe:linear,tiny", f"--config.data.root={data_root}", f"--workdir={tmp_path}", *args])
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 1 and line.startswith("error: ") and words in line, line
