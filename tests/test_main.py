"""The main job end to end on a tiny embedded set."""

import json

import numpy as np
import pytest
from PIL import Image

from peclr_jax import main


def test_main_job_writes_sheets_and_summary(tmp_path, capsys):
  work, data = tmp_path / "work", tmp_path / "data"
  main.main(["--workdir", str(work), "--data", str(data), "--train", "20", "--eval", "4", "--skip_pretrain"])
  out = capsys.readouterr().out
  assert "rendered" in out and "contact_sheet.png" in out
  with Image.open(work / "contact_sheet.png") as im:
    assert im.size == (4 * 224, 4 * 224)
  with Image.open(work / "crops.png") as im:
    assert im.size == (4 * 128, 4 * 128)
  summary = json.loads((work / "summary.json").read_text())
  assert summary["training"]["ids"] == 20 and summary["evaluation"]["ids"] == 4
  # The mask is the visible hand: objects in front hide some joints (without objects every joint is on it,
  # test_synthetic.py), so most rather than all.
  assert summary["training"]["in_image_joints_on_mask"] > 0.9
  # The skeletons are drawn: the sheet differs from the raw images it was made from.
  sheet = np.asarray(Image.open(work / "contact_sheet.png"))
  raw = np.asarray(Image.open(data / "training" / "rgb" / "00000000.jpg"))
  assert np.abs(sheet[:224, :224].astype(int) - raw).max() > 100
  main.main(["--workdir", str(work), "--data", str(data), "--train", "20", "--eval", "4", "--skip_pretrain"])
  assert "cached" in capsys.readouterr().out


def test_main_job_pretrains_and_linear_probes_against_random_init(tmp_path, capsys):
  work = tmp_path / "work"
  main.main(
    [
      "--workdir",
      str(work),
      "--data",
      str(tmp_path / "data"),
      "--train",
      "70",
      "--eval",
      "10",
      "--steps",
      "2",
      "--probe_steps",
      "2",
    ]
  )
  out = capsys.readouterr().out
  head = "encoder | 2D EPE px (x const) | root-relative EPE mm (x const) | PA-EPE mm (x const) | PA-AUC"
  assert head in out and "3D EPE" not in out  # the absolute 3-D EPE is in linear.md and results.json only
  results = json.loads((work / "results.json").read_text())
  assert results["pretrain"]["steps"] == 2 and 0 < results["pretrain"]["online_probe_eval_px"] < 64
  assert [r["encoder"] for r in results["linear"]] == ["peclr", "random_init"]
  for r in results["linear"]:
    assert 0 < r["epe_2d_px"] < 64 and r["pa_epe_mm"] > 0 and 0 <= r["pa_auc"] <= 1 and r["epe_mm"] > 0
    # Each printed error with its ratio to the constant anchor of the same evaluation.
    a = r["anchor"]
    cells = [f"{r[k]:.2f} ({r[k] / a[k]:.3f})" for k in ("epe_2d_px", "rr_epe_mm", "pa_epe_mm")]
    (line,) = [x for x in out.splitlines() if x.strip().startswith(r["encoder"] + " |")]
    assert [c.strip() for c in line.split("|")[1:4]] == cells
  a = results["linear"][0]["anchor"]
  assert a == json.loads((work / "linear_random_init" / "eval_evaluation.json").read_text())["mean_pose_baseline"]
  (line,) = [x for x in out.splitlines() if "anchors (a constant prediction):" in x]
  assert f"{a['epe_2d_px']:.2f} px 2D EPE" in line and f"{a['rr_epe_mm']:.2f} mm root-relative EPE" in line
  assert f"{a['pa_epe_mm']:.2f} mm PA-EPE" in line
  table = (work / "linear.md").read_text()
  assert "| random_init |" in table and "| 2D x const |" in table and "3D EPE (mm)" in table
  for name in ("linear_peclr", "linear_random_init"):
    assert (work / name / "eval_evaluation.md").exists()
  with Image.open(work / "curves.png") as im:
    assert im.size[0] > 600
  assert (work / "pretrain" / "encoder" / "model.json").exists()


def test_unwritable_workdir_is_one_clear_error(tmp_path, capsys):
  blocker = tmp_path / "a_file"  # a path under a regular file cannot be created, even by root
  blocker.write_text("")
  with pytest.raises(SystemExit) as e:
    main.main(["--workdir", str(blocker / "w"), "--data", str(tmp_path / "d"), "--train", "2", "--eval", "1"])
  (line,) = capsys.readouterr().err.splitlines()
  assert e.value.code == 1 and line.startswith("error: ") and "not writable" in line and str(blocker / "w") in line
  assert not (tmp_path / "d").exists()  # failed before rendering anything
