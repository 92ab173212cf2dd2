"""The equivariance measure: R^2 of a known linear encoding is 1 and of noise about 0, a constant encoder is
invariant, the relative parameters are the ones the views' keypoints show, and the CLI on the tiny config."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peclr_jax import augment, configs, equivariance, features, inputs
from peclr_jax.data import freihand, pipeline


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic"))
  inputs.source(tiny(root).data, "evaluation")  # renders the tiny set
  return root


def tiny(data_root):
  c = configs.load("probe:linear,tiny")
  c.data.root = data_root
  return c


def _groups(n_images, repeats):
  return np.tile(np.arange(n_images), repeats)


def test_r2_matches_its_definition():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(50, 3))
  p = y + rng.normal(0, 0.3, (50, 3))
  want = 1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
  np.testing.assert_allclose(equivariance.r2(y, p), want, rtol=1e-12)
  np.testing.assert_allclose(equivariance.r2(y, y), 1.0)
  np.testing.assert_allclose(equivariance.r2(y, np.broadcast_to(y.mean(0), y.shape)), 0.0, atol=1e-12)


@pytest.mark.parametrize("pair", equivariance.PAIRS)
def test_a_linear_encoding_has_r2_one_and_noise_about_zero(pair):
  rng = np.random.default_rng(1)
  ids = _groups(150, 4)
  y = rng.normal(size=(600, 3))
  f1 = rng.normal(size=(600, 32))
  f2 = f1 + y @ rng.normal(size=(3, 32)) + rng.normal(0, 1e-3, (600, 32))  # the change is a linear map of y
  s = equivariance.score(f1, f2, y, ids, ["a", "b", "c"], pair=pair)
  assert s["r2"] > 0.99 and min(s["r2_per_target"].values()) > 0.99 and list(s["r2_per_target"]) == ["a", "b", "c"]
  noise = equivariance.score(rng.normal(size=(600, 32)), rng.normal(size=(600, 32)), y, ids, pair=pair)
  assert -0.1 < noise["r2"] < 0.03


def test_the_product_pair_reads_the_cosine_of_features_that_turn_with_the_image():
  """Features A (cos t, sin t) of each view's orientation t: cos(t2 - t1) is bilinear in the views, out of a linear
  readout's reach from [f1, f2] and within it from [f1, f2, f1 * f2]."""
  rng = np.random.default_rng(3)
  t1, t2 = rng.uniform(-np.pi, np.pi, (2, 800))
  a = rng.normal(size=(2, 16))
  enc = lambda t: np.stack([np.cos(t), np.sin(t)], -1) @ a
  y = np.cos(t2 - t1)[:, None]
  ids = _groups(200, 4)
  assert equivariance.score(enc(t1), enc(t2), y, ids, pair="concat")["r2"] < 0.1
  assert equivariance.score(enc(t1), enc(t2), y, ids, pair="product")["r2"] > 0.99


def test_a_constant_encoder_is_invariant():
  f = np.tile(np.array([0.3, -1.0, 2.0]), (40, 1))
  assert equivariance.invariance(f, f) == pytest.approx(1.0)
  rng = np.random.default_rng(2)
  s = equivariance.score(f, f, rng.normal(size=(40, 2)), _groups(10, 4))
  assert s["invariance"] == pytest.approx(1.0) and s["different_images"] == pytest.approx(1.0)
  assert s["r2"] <= 0.0  # nothing to read the change from: the mean at best
  # Orthogonal and opposite features score 0 and -1.
  assert equivariance.invariance(np.eye(3), np.roll(np.eye(3), 1, 0)) == pytest.approx(0.0)
  assert equivariance.invariance(f, -f) == pytest.approx(-1.0)


def test_the_relative_parameters_are_what_the_keypoints_show(data_root):
  """Per transformation, the two views' keypoints give the change independently: the rotation angle between the
  centred keypoints, the shift of their mean (crop px), the log ratio of their spread."""
  c = tiny(data_root)
  src = freihand.FreiHand(data_root, "evaluation")
  it = pipeline.dataset(src, 16, size=40, margin=1.6, shuffle=False, num_epochs=1, process_index=0, process_count=1)
  batch = {k: v for k, v in next(iter(it)).items() if k in features.EXTRACT_KEYS}
  size = c.augment.out_size
  for t in ("rotate", "crop", "scale"):
    cfg = c.augment.copy_and_resolve_references()
    cfg.ops = (t,)
    (_, uv1, _, p1, g1), (_, uv2, _, p2, g2) = augment.views(jax.random.key(7), batch, cfg)
    y = np.asarray(equivariance.relative(t, {**g1, **p1}, {**g2, **p2}))
    uv1, uv2 = np.asarray(uv1, np.float64), np.asarray(uv2, np.float64)
    q1, q2 = uv1 - uv1.mean(1, keepdims=True), uv2 - uv2.mean(1, keepdims=True)
    if t == "rotate":
      # Image convention (y down): view 2 = view 1 turned by d, x2 = cos x1 + sin y1, y2 = -sin x1 + cos y1.
      d = np.arctan2((q1[..., 1] * q2[..., 0] - q1[..., 0] * q2[..., 1]).sum(1), (q1 * q2).sum((1, 2)))
      np.testing.assert_allclose(y, np.stack([np.cos(d), np.sin(d)], -1), atol=1e-4)
      assert np.abs(d).max() > 0.2
    elif t == "crop":  # the window moves by +jitter of its side, so the hand moves by -jitter x out_size
      np.testing.assert_allclose(y, -(uv2 - uv1).mean(1) / size, atol=1e-4)
    else:  # the hand's size in the crop is 1 / margin
      spread = lambda q: np.sqrt((q**2).sum((1, 2)))
      np.testing.assert_allclose(y[:, 0], np.log(spread(q1) / spread(q2)), atol=1e-4)


def test_a_constant_encoder_through_the_pipeline(data_root, monkeypatch):
  class Constant(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return jnp.ones((x.shape[0], 8)) * jnp.arange(1.0, 9.0)

  monkeypatch.setattr(equivariance.models, "encoder", lambda model: Constant())
  data = equivariance.pairs(tiny(data_root), {}, repeats=2, batch_size=12)  # 16 images: a padded batch too
  assert set(data) == set(equivariance.TRANSFORMS)
  for t, d in data.items():
    assert d["f1"].shape == (32, 8) and d["y"].shape == (32, len(equivariance.TARGETS[t]))
    np.testing.assert_array_equal(d["id"], np.tile(np.arange(16), 2))
    s = equivariance.score(d["f1"], d["f2"], d["y"], d["id"], equivariance.TARGETS[t])
    assert s["invariance"] == pytest.approx(1.0) and s["r2"] <= 0.0
  # Each pass draws new parameters; within a pass the two views differ.
  y = data["rotate"]["y"]
  assert not np.allclose(y[:16], y[16:]) and np.abs(np.arctan2(y[:, 1], y[:, 0])).max() > 0.2


def test_cli_writes_every_transformation(data_root, tmp_path, capsys):
  out = str(tmp_path / "equi")
  equivariance.main(
    ["--config=probe:linear,tiny", f"--config.data.root={data_root}", f"--workdir={out}", "--repeats=2"]
  )
  assert "| rotate |" in capsys.readouterr().out
  with open(os.path.join(out, "equivariance.json")) as f:
    r = json.load(f)
  assert r["encoder"] is None and r["images"] == 16 and r["repeats"] == 2
  assert list(r["transforms"]) == list(equivariance.TRANSFORMS)
  for t, s in r["transforms"].items():
    assert list(s["r2_per_target"]) == list(equivariance.TARGETS[t])
    assert np.isfinite(s["r2"]) and -1 <= s["invariance"] <= 1 and -1 <= s["different_images"] <= 1
    assert s["pairs"] == 32
  assert os.path.isfile(os.path.join(out, "equivariance.md"))
  text = equivariance.table({"random init": r, "again": r})
  assert text.count("\n") == 4 and "rotate R^2" in text


@pytest.mark.parametrize(
  "args, words",
  [
    (["--transforms=rotate,flip"], "--transforms=rotate,flip: expected some of"),
    (["--pair=sum"], "bad command line"),
    (["--encoder=/nonexistent"], "no exported encoder"),
  ],
)
def test_bad_input_is_one_error_line(args, words, data_root, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    equivariance.main(["--config=probe:linear,tiny", f"--config.data.root={data_root}", f"--workdir={tmp_path}", *args])
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 1 and line.startswith("error: ") and words in line, line
