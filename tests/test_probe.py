"""Keypoint regression: targets and loss against NumPy, the pretrain -> probe -> evaluate -> predict round trip on the
tiny config, frozen vs fine-tuned encoders, label subsets, resume, and the errors a user can hit."""

import json
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from peclr_jax import augment, configs, evaluate, geometry, keypoints, log, predict, pretrain, probe
from peclr_jax.data import freihand, pipeline
from peclr_jax.errors import ConfigError, TrainingError


def _set(c, **overrides):
  for k, v in overrides.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny_probe(data_root, mode="linear", **overrides):
  return _set(configs.load(f"probe:{mode},tiny"), **{"data.root": data_root, **overrides})


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


@pytest.fixture(scope="module")
def linear_run(data_root, encoder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("linear"))
  # A 2-step probe from the zero head predicts nearly one point for every joint; the depth checks need a spread.
  result, reports = probe.run(
    tiny_probe(data_root, encoder=encoder, **{"head.zero_init": False}), workdir, progress=False
  )
  return workdir, result, reports["evaluation"]


def _batch(data_root, n=8, size=40):
  src = freihand.FreiHand(data_root, "training")
  b = next(
    iter(pipeline.dataset(src, n, size=size, margin=1.6, shuffle=False, num_epochs=1, process_index=0, process_count=1))
  )
  return {k: b[k] for k in probe.DEVICE_KEYS}


# ---------------------------------------------------------------------------------------------------------------
# Targets and loss.
# ---------------------------------------------------------------------------------------------------------------
def test_targets_reconstruct_the_hand_under_the_augmented_camera(data_root, encoder):
  """Rotation + crop change uv and K but not xyz: the 2.5-D targets under K' rebuild xyz exactly."""
  del encoder  # only for the rendered data
  c = tiny_probe(data_root)
  batch = _batch(data_root)
  x, uv, K, _, geo = augment.augment(jax.random.key(3), batch, c.augment)
  assert float(jnp.abs(geo["angle"]).max()) > 0.3  # really rotated (radians)
  tgt = keypoints.targets(batch["xyz"], K, c.keypoints)
  np.testing.assert_allclose(geometry.project(batch["xyz"], K), uv, atol=2e-3)
  xyz = keypoints.reconstruct(dict(uv=uv, z_rel=tgt["z_rel"]), K, tgt["s"], c.keypoints)
  np.testing.assert_allclose(xyz, batch["xyz"], atol=2e-4)
  # The bone length really is FreiHAND's scale bone, and Ẑ_root is the wrist depth over it.
  np.testing.assert_allclose(tgt["s"], np.linalg.norm(batch["xyz"][:, 9] - batch["xyz"][:, 10], axis=-1), rtol=1e-5)
  np.testing.assert_allclose(tgt["z_root"], batch["xyz"][:, 0, 2] / tgt["s"], rtol=1e-5)


def test_keypoint_loss_matches_numpy():
  rng = np.random.default_rng(0)
  n = 5
  pred = dict(uv=rng.normal(size=(n, 21, 2)) * 10, z_rel=rng.normal(size=(n, 21)), z_root=rng.normal(size=n) + 9)
  uv, z_rel, z_root = rng.normal(size=(n, 21, 2)) * 10, rng.normal(size=(n, 21)), rng.normal(size=n) + 9
  valid = rng.random((n, 21)) > 0.3
  has_xyz = np.array([1, 1, 0, 1, 1], bool)
  kp = tiny_probe("unused").keypoints
  total, m = keypoints.loss(jax.tree.map(jnp.asarray, pred), uv, dict(z_rel=z_rel, z_root=z_root), valid, has_xyz, kp)
  uv_l1 = np.abs(pred["uv"] - uv)[valid].mean()  # mean over valid joints and both coordinates
  v3 = valid & has_xyz[:, None]
  z_l1 = np.abs(pred["z_rel"] - z_rel)[v3].mean()
  root_l1 = np.abs(pred["z_root"] - z_root)[has_xyz].mean()
  np.testing.assert_allclose(m["uv_l1"], uv_l1, rtol=1e-5)
  np.testing.assert_allclose(m["z_l1"], z_l1, rtol=1e-5)
  np.testing.assert_allclose(m["root_l1"], root_l1, rtol=1e-5)
  np.testing.assert_allclose(total, uv_l1 + 5 * z_l1 + root_l1, rtol=1e-5)
  np.testing.assert_allclose(m["epe_2d_px"], np.linalg.norm(pred["uv"] - uv, axis=-1)[valid].mean(), rtol=1e-5)


def test_zero_init_linear_head_starts_at_the_crop_centre():
  """big_vision's head_zeroinit: every keypoint at the crop centre with z_rel 0, whatever the image."""
  c = tiny_probe("unused")
  model = keypoints.make_model(c)
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, jnp.eye(3)[None].repeat(3, 0), train=False)
  pred = model.apply(variables, x, jnp.eye(3)[None].repeat(3, 0), train=False)
  np.testing.assert_array_equal(pred["uv"], np.full((3, 21, 2), 16.0))
  np.testing.assert_array_equal(pred["z_rel"], np.zeros((3, 21)))


def test_reconstruct_clamps_a_degenerate_root_depth():
  """A bone predicted end-on (same uv, same depth) has no finite root depth: it is clamped to 50 bone lengths."""
  kp = tiny_probe("unused").keypoints
  K = np.array([[[200.0, 0, 32], [0, 200.0, 32], [0, 0, 1]]])
  uv = np.random.default_rng(0).uniform(10, 50, (1, 21, 2))
  uv[0, 10] = uv[0, 9]
  z_rel = np.zeros((1, 21))
  xyz = keypoints.reconstruct(dict(uv=jnp.asarray(uv), z_rel=jnp.asarray(z_rel)), K, jnp.array([0.04]), kp)
  np.testing.assert_allclose(xyz[0, :, 2], 50 * 0.04, rtol=1e-5)
  np.testing.assert_allclose(geometry.project(xyz, K), uv, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# The round trip: pretrain -> linear probe -> evaluate -> predict.
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_reports_match_an_independent_computation(linear_run, data_root):
  workdir, result, report = linear_run
  assert int(result.state.step) == 4
  rows = log.read(workdir)
  assert [r["step"] for r in rows] == [2, 4]
  for key in ("loss", "uv_l1", "z_l1", "epe_2d_px", "epe_3d_mm", "lr", "images_per_s"):
    assert np.isfinite(rows[-1][key])
  for name in (
    "eval_evaluation.json",
    "eval_evaluation.md",
    "pck_evaluation.png",
    "skeletons_evaluation.png",
    "pred_evaluation.json",
    "pred_evaluation.zip",
    "probe.json",
  ):
    assert os.path.isfile(os.path.join(workdir, name)), name
  # The grid shows the model's 32 px input crops (the frame of the drawn uv), enlarged 4x, 4 x 4 of them.
  with Image.open(os.path.join(workdir, "skeletons_evaluation.png")) as im:
    assert im.size == (4 * 128, 4 * 128)

  # FreiHAND's submission format, in source order, metres.
  with open(os.path.join(workdir, "pred_evaluation.json")) as f:
    xyz_list, verts_list = json.load(f)
  with zipfile.ZipFile(os.path.join(workdir, "pred_evaluation.zip")) as z:
    assert z.namelist() == ["pred.json"]
    assert json.loads(z.read("pred.json"))[0] == xyz_list
  src = freihand.FreiHand(data_root, "evaluation")
  pred, gt = np.array(xyz_list), src.xyz
  assert pred.shape == gt.shape == (len(src), 21, 3) and verts_list == [[]] * len(src)
  # The reported numbers, recomputed from the files with NumPy (mm; AUC by the toolbox's definition).
  d = np.linalg.norm(pred - gt, axis=-1)
  m = report["metrics"]
  np.testing.assert_allclose(m["epe_mm"], d.mean() * 1000, rtol=1e-4)
  t = np.linspace(0, 0.05, 100)
  pck = (d[..., None] <= t).mean(0)  # [21, T]
  np.testing.assert_allclose(m["auc"], np.mean(np.trapezoid(pck, t, axis=-1) / 0.05), atol=1e-3)
  with open(os.path.join(workdir, "eval_evaluation.json")) as f:
    saved = json.load(f)
  assert saved["metrics"]["pa_epe_mm"] == pytest.approx(m["pa_epe_mm"])
  assert 0 < saved["mean_pose_baseline"]["pa_epe_mm"] < 100 and 0 < saved["mean_pose_baseline"]["pa_auc"] < 1
  assert 0 < saved["mean_pose_baseline"]["epe_2d_px"] < 32  # inside the 32 px crop
  # The root-relative anchor and the ratios, from the files: the training labels' mean wrist-relative pose.
  train = freihand.FreiHand(data_root, "training").xyz.astype(np.float64)
  rel = lambda x: x - x[:, :1]
  rr_anchor = np.linalg.norm(rel(train).mean(0) - rel(gt), axis=-1).mean() * 1000
  rr = np.linalg.norm(rel(pred) - rel(gt), axis=-1).mean() * 1000
  b, x = saved["mean_pose_baseline"], saved["anchor_ratio"]
  np.testing.assert_allclose(b["rr_epe_mm"], rr_anchor, rtol=1e-5)
  np.testing.assert_allclose(x["rr_epe_mm"], rr / rr_anchor, rtol=1e-4)
  assert set(x) == {"epe_2d_px", "rr_epe_mm", "pa_epe_mm"}
  with open(os.path.join(workdir, "eval_evaluation.md")) as f:
    md = f.read()
  assert f"| PA-EPE (mm) | {m['pa_epe_mm']:.2f} | {m['pa_epe_mm'] / b['pa_epe_mm']:.3f} |" in md
  # Formatted from the saved numbers (checked above), since rounding pred.json could flip a last digit.
  assert f"| root-relative EPE (mm) | {saved['metrics']['rr_epe_mm']:.2f} | {x['rr_epe_mm']:.3f} |" in md
  assert f"{b['rr_epe_mm']:.2f} mm root-relative EPE (the training labels' mean root-relative pose)" in md
  # The predicted depth is the bone-length quadratic's (the middle bone has FreiHAND's scale) or, where that root
  # is out of range, the clamp's (wrist depth 4 or 50 bone lengths).
  bone_ok = np.isclose(np.linalg.norm(pred[:, 9] - pred[:, 10], axis=-1), src.scale, rtol=1e-3)
  clamped = np.isclose(pred[:, 0, 2] / src.scale, 4, rtol=1e-3) | np.isclose(pred[:, 0, 2] / src.scale, 50, rtol=1e-3)
  assert bone_ok.any() and (bone_ok | clamped).all()


def test_evaluate_on_another_set_writes_tagged_reports(linear_run, tmp_path):
  """A probe scored on another FreiHAND-layout root (the cross-dataset protocol) reads that root's labels."""
  from peclr_jax.data import synthetic

  workdir, _, _ = linear_run
  other = str(tmp_path / "other")
  synthetic.generate(other, 8, 6, seed=9, progress=False)
  rep = evaluate.evaluate(workdir, data_root=other, tag="other", progress=False)
  assert rep["data"] == other and rep["images"] == 6
  with open(os.path.join(workdir, "pred_other_evaluation.json")) as f:
    pred = np.array(json.load(f)[0])
  gt = freihand.FreiHand(other, "evaluation").xyz
  np.testing.assert_allclose(rep["metrics"]["epe_mm"], np.linalg.norm(pred - gt, axis=-1).mean() * 1000, rtol=1e-4)
  assert os.path.isfile(os.path.join(workdir, "eval_other_evaluation.md"))


def test_linear_probe_keeps_the_encoder_frozen_and_finetune_moves_it(linear_run, encoder, data_root, tmp_path):
  from peclr_jax import checkpoint

  workdir, result, _ = linear_run
  loaded, _ = checkpoint.load_encoder(os.path.join(encoder, "encoder"))
  trained = jax.device_get(result.state)
  for col in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(loaded[col]), jax.tree.leaves(trained.__getattribute__(col)["encoder"])):
      np.testing.assert_array_equal(a, b)
  r = probe.train(tiny_probe(data_root, "finetune", encoder=encoder, total_steps=2), str(tmp_path), progress=False)
  moved = [
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(loaded["params"]), jax.tree.leaves(jax.device_get(r.state.params["encoder"])))
  ]
  assert all(moved)


def test_predict_on_crops_and_mirrored_crops(linear_run, data_root, tmp_path):
  """Hand crops -> keypoints; a mirrored image with --flip gives the mirrored keypoints (u -> w - u, X -> -X)."""
  workdir, _, _ = linear_run
  images, out = tmp_path / "images", tmp_path / "out"
  images.mkdir()
  im = Image.open(os.path.join(data_root, "evaluation", "rgb", "00000000.jpg")).crop((10, 30, 190, 200))
  im.save(images / "a.png")
  im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "b.png")
  predict.main(["--workdir", workdir, "--images", str(images), "--out", str(out)])
  a = json.loads((out / "a.json").read_text())
  assert (out / "a.png").is_file() and len(json.loads((out / "keypoints.json").read_text())) == 2
  assert np.array(a["uv"]).shape == (21, 2) and np.array(a["xyz"]).shape == (21, 3)
  np.testing.assert_allclose(a["K"], predict.default_K(180, 170))
  with open(os.path.join(workdir, "probe.json")) as f:
    bone = json.load(f)["median_bone_m"]
  xyz = np.array(a["xyz"])
  assert np.linalg.norm(xyz[9] - xyz[10]) == pytest.approx(bone, rel=1e-3)
  # The projection of the 3-D output through K is the 2-D output.
  np.testing.assert_allclose(geometry.project(xyz, np.array(a["K"])), a["uv"], atol=1e-2)

  b = predict.predict(workdir, [str(images / "b.png")], flip=True)[0]
  np.testing.assert_allclose(np.array(b["uv"])[:, 0], 180 - np.array(a["uv"])[:, 0], atol=2e-3)
  np.testing.assert_allclose(np.array(b["uv"])[:, 1], np.array(a["uv"])[:, 1], atol=2e-3)
  np.testing.assert_allclose(np.array(b["xyz"]) * [-1, 1, 1], xyz, atol=1e-5)


def test_load_crop_maps_image_points_into_the_crop(tmp_path):
  img = np.zeros((30, 50, 3), np.uint8)
  img[10, 40] = 255  # one bright pixel at (u, v) = (40.5, 10.5) in continuous coordinates
  Image.fromarray(img).save(tmp_path / "x.png")
  crop, T, wh = predict.load_crop(str(tmp_path / "x.png"), 100)
  assert wh == (50, 30) and crop.shape == (100, 100, 3)
  u, v, _ = T @ [40.5, 10.5, 1]
  peak = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
  assert abs(peak[1] + 0.5 - u) <= 1 and abs(peak[0] + 0.5 - v) <= 1


# ---------------------------------------------------------------------------------------------------------------
# Modes, subsets, resume, random-init BatchNorm.
# ---------------------------------------------------------------------------------------------------------------
def test_label_subsets_are_nested_whole_ids(data_root, encoder):
  del encoder
  src = freihand.FreiHand(data_root, "training")
  small, big = probe.label_subset(src, 0.1), probe.label_subset(src, 0.5)
  assert len(small.ids) == int(np.ceil(0.1 * len(src.ids))) and len(big.ids) == len(src.ids) // 2
  assert set(small.ids) <= set(big.ids) <= set(src.ids)
  assert probe.label_subset(src, 1.0) is src
  sub = probe.label_subset(probe.Subset(src, np.arange(20)), 0.25)
  assert len(sub) == 5
  with pytest.raises(TrainingError, match="label_fraction=0"):
    probe.label_subset(src, 0.0)


def test_resume_reproduces_an_uninterrupted_run(data_root, tmp_path):
  c = tiny_probe(data_root, "scratch")
  full = probe.train(c, str(tmp_path / "full"), progress=False)
  probe.train(c, str(tmp_path / "cut"), progress=False, stop_at=2)
  resumed = probe.train(c, str(tmp_path / "cut"), progress=False)
  assert int(resumed.state.step) == 4
  for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["loss"] for r in full.metrics[1:]] == [r["loss"] for r in resumed.metrics]


def test_random_init_frozen_encoder_gets_batchnorm_statistics(data_root, tmp_path):
  r = probe.train(tiny_probe(data_root, total_steps=1), str(tmp_path), progress=False)
  mean = np.asarray(jax.device_get(r.state.batch_stats["encoder"]["bn1"]["mean"]))
  assert np.abs(mean).max() > 1e-3  # estimated from data, not the init's zeros


def test_mlp_head_and_root_refinement_train(data_root, encoder, tmp_path):
  c = tiny_probe(
    data_root, "mlp", encoder=encoder, **{"keypoints.refine_root": True, "keypoints.root": "palm", "total_steps": 2}
  )
  r = probe.train(c, str(tmp_path), progress=False)
  assert "refiner" in r.state.params and "fc1" in r.state.params["head"]
  assert np.isfinite(r.metrics[-1]["root_l1"])


def test_label_fraction_mode_tabulates_each_fraction(data_root, encoder, tmp_path):
  c = tiny_probe(data_root, "label_fraction", encoder=encoder, total_steps=1)
  _, rows = probe.run(c, str(tmp_path), progress=False)
  assert [r["label_fraction"] for r in rows] == [0.25, 1.0]
  assert rows[0]["train_records"] < rows[1]["train_records"]
  table = (tmp_path / "label_fraction.md").read_text()
  assert "| 0.25 |" in table and "PA-EPE (mm) | PA x const |" in table and "A constant prediction scores" in table


# ---------------------------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------------------------
def test_encoder_of_another_architecture_is_a_clear_error(data_root, encoder, tmp_path):
  c = tiny_probe(data_root, encoder=encoder, **{"model.width": 16})
  with pytest.raises(TrainingError, match=r"width: encoder 8 vs config 16.*--config.model.width=8"):
    probe.train(c, str(tmp_path), progress=False)
  with pytest.raises(TrainingError, match="no exported encoder"):
    probe.train(tiny_probe(data_root, encoder=str(tmp_path)), str(tmp_path / "w"), progress=False)


@pytest.mark.parametrize(
  "mode, encoder, match", [("finetune", "", "needs --config.encoder"), ("scratch", "x", "random init")]
)
def test_mode_and_encoder_must_agree(mode, encoder, match, data_root, tmp_path):
  with pytest.raises(TrainingError, match=match):
    probe.train(tiny_probe(data_root, mode, encoder=encoder), str(tmp_path), progress=False)


@pytest.mark.parametrize("key, value", [("model.conv", "fast"), ("model.dtype", "float16")])
def test_bad_model_values_fail_before_the_workdir(key, value, data_root, tmp_path):
  with pytest.raises(TrainingError, match=f"config.{key}='{value}'"):
    probe.train(tiny_probe(data_root, **{key: value}), str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists()


def test_nan_loss_stops_with_the_step(data_root, tmp_path):
  c = tiny_probe(data_root, "scratch", **{"optim.lr": 1e30})  # the first update overflows the parameters
  with pytest.raises(TrainingError, match=r"non-finite .* at step 2.*Last good checkpoint: none"):
    probe.train(c, str(tmp_path), progress=False)


def test_command_line_errors_are_one_line(tmp_path):
  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", *args],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )

  r = run("peclr_jax.probe", "--config=probe:linear,tiny", "--config.head.kynd=mlp", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "kynd" in r.stderr and "Traceback" not in r.stderr
  r = run("peclr_jax.evaluate", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "no checkpoints" in r.stderr and "Traceback" not in r.stderr
  r = run("peclr_jax.predict", f"--workdir={tmp_path}", f"--images={tmp_path / 'none'}", f"--out={tmp_path}")
  assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_hourglass_pretrains_and_is_trained_directly_downstream(data_root, tmp_path):
  """The hourglass as a PeCLR encoder (its 63-d pose into the projection head), then its own 2.5-D output trained."""
  small = {"augment.out_size": 16, "data.host_size": 20}  # a 4x4 map after the stem: 2 halvings, a faster compile
  c = _set(
    configs.load("pretrain:peclr,tiny"),
    **{"data.root": data_root, "total_steps": 1, "model.name": "hourglass", "model.stacks": 1, **small},
  )
  pretrain.train(c, str(tmp_path / "pre"), progress=False)
  p = tiny_probe(
    data_root,
    "finetune",
    encoder=str(tmp_path / "pre"),
    total_steps=1,
    **{"model.name": "hourglass", "model.stacks": 1, "head.kind": "direct", **small},
  )
  r = probe.train(p, str(tmp_path / "ft"), progress=False)
  assert "head" not in r.state.params and np.isfinite(r.metrics[-1]["loss"])
  # Two stacks from scratch: the first stack is supervised too.
  p = tiny_probe(
    data_root,
    "scratch",
    total_steps=1,
    **{"model.name": "hourglass", "model.stacks": 2, "head.kind": "direct", **small},
  )
  m = probe.train(p, str(tmp_path / "hg2"), progress=False).metrics[-1]
  assert m["loss"] > m["uv_l1"] + 5 * m["z_l1"] and m["intermediate_loss"] > 0
  with pytest.raises(ConfigError, match="expected config.model.name='hourglass'"):
    probe.train(tiny_probe(data_root, "scratch", **{"head.kind": "direct"}), str(tmp_path / "bad"), progress=False)
