"""The study runner: what each study runs, the scheduler (dependencies, failures, parallel), resume, and results (each
row against its own constant anchors)."""

import json
import os
import subprocess
import sys

import pytest

from peclr_jax import configs, report, scheduler, study
from peclr_jax.errors import ConfigError


def cfg(name, **overrides):
  c = configs.load(f"study:{name},tiny")
  c.update(overrides)
  return c


def test_objectives_pretrains_each_objective_with_its_default_augmentations():
  runs = study.objectives(cfg("objectives"))
  pre = {r.name: r for r in runs if r.kind == "pretrain"}
  assert {n: r.config for n, r in pre.items()} == {
    "pretrain_simclr": "pretrain:simclr,tiny",
    "pretrain_peclr": "pretrain:peclr,tiny",
    "pretrain_relative": "pretrain:relative,tiny",
  }
  assert all("augment.ops" not in dict(r.overrides) for r in pre.values())  # the config's own (the papers' best)
  probes = {r.needs: r for r in runs if r.kind == "probe"}
  assert set(probes) == set(pre) | {""} and dict(probes[""].tags)["objective"] == "random init"


def test_ablation_runs_each_augmentation_with_the_objectives_that_differ():
  runs = study.ablation(cfg("ablation", augmentations=("crop", "rotate", "color_jitter", "blur")))
  pre = {r.name: dict(r.overrides) for r in runs if r.kind == "pretrain"}
  # PeCLR only for geometric augmentations, relative only for those with a head; SimCLR for all.
  assert set(pre) == {
    "pretrain_simclr_crop",
    "pretrain_peclr_crop",
    "pretrain_relative_crop",
    "pretrain_simclr_rotate",
    "pretrain_peclr_rotate",
    "pretrain_relative_rotate",
    "pretrain_simclr_color_jitter",
    "pretrain_relative_color_jitter",
    "pretrain_simclr_blur",
  }
  assert pre["pretrain_peclr_rotate"]["augment.ops"] == ("rotate",)
  assert pre["pretrain_peclr_rotate"]["peclr.transforms"] == ("rotate",)
  assert pre["pretrain_relative_color_jitter"]["relative.transforms"] == ("color_jitter",)
  probes = [r for r in runs if r.kind == "probe"]
  assert {r.needs for r in probes} == set(pre) | {""}  # one probe per encoder, plus the random-init baseline
  assert all(r.config == "probe:linear,tiny" for r in probes)


def test_composition_is_every_combination_of_two_or_more():
  best = "crop=peclr,rotate=peclr,scale=relative,color_jitter=simclr"
  runs = study.composition(cfg("composition", best=best))
  pre = {r.name: (r.config, dict(r.overrides)) for r in runs if r.kind == "pretrain"}
  assert len(pre) == 11  # C(4,2) + C(4,3) + C(4,4), the reference's 11 combinations of 4
  config, o = pre["pretrain_color_jitter+crop"]
  assert config == "pretrain:peclr,tiny" and o["peclr.transforms"] == ("crop",)
  config, o = pre["pretrain_color_jitter+scale"]
  assert config == "pretrain:relative,tiny" and o["relative.transforms"] == ("scale",)
  config, o = pre["pretrain_crop+rotate+scale"]
  assert config == "pretrain:hybrid,tiny" and o["peclr.transforms"] == ("crop", "rotate")
  # An ablation's best_objectives.json covers every augmentation; only config.compose is combined.
  more = study.composition(cfg("composition", best=best + ",blur=simclr,sobel=simclr"))
  assert [r.name for r in more] == [r.name for r in runs]
  with pytest.raises(ConfigError, match="does not exist"):
    study.composition(cfg("composition", best_from="/nonexistent.json"))
  with pytest.raises(ConfigError, match="bad or too few"):
    study.composition(cfg("composition", best="crop=moco,rotate=peclr"))


def test_cross_dataset_pretrains_on_both_domains_probes_on_a_and_tests_on_b():
  c = cfg("cross_dataset")
  runs = {r.name: r for r in study.cross_dataset(c, "/s")}
  assert runs["data_A"].kind == runs["data_B"].kind == "render"
  assert dict(runs["data_A"].overrides)["distance"] != dict(runs["data_B"].overrides)["distance"]
  ab, a = dict(runs["pretrain_peclr_AB"].overrides), dict(runs["pretrain_peclr_A"].overrides)
  assert ab["data.root"] == a["data.root"] == "/s/data_A"
  assert ab["data.mix_roots"] == ("/s/data_B",) and a["data.mix_roots"] == ()
  for name in ("scratch", "linear_AB", "finetune_AB", "linear_A", "finetune_A"):
    probe, test = runs[name], runs[f"eval_B_{name}"]
    assert dict(probe.overrides)["data.root"] == "/s/data_A"  # labels of A only
    assert test.kind == "evaluate" and test.needs == name and dict(test.overrides)["data_root"] == "/s/data_B"
    assert test.output("/s") == f"/s/{name}/eval_B_evaluation.json"
  assert runs["scratch"].needs == "" and runs["finetune_AB"].needs == "pretrain_peclr_AB"
  assert runs["data_B"].command("/s")[3:] == [
    "--out=/s/data_B",
    "--train=32",
    "--eval=8",
    "--workers=1",
    "--distance=0.5,0.8",
    "--skin=0.5,1.0",
    "--backgrounds=clutter,noise,shapes",
    "--seed=2",
  ]


def test_supervised_pairs_scratch_and_finetune_per_model_and_fraction():
  runs = study.supervised(cfg("supervised", models=("resnet18", "resnet50")))
  probes = [r for r in runs if r.kind == "probe"]
  assert len(probes) == 2 * 2 * 2  # models x fractions x {scratch, PeCLR}
  ft = next(r for r in probes if r.name == "finetune_resnet50_50pct")
  assert ft.needs == "pretrain_peclr_resnet50" and dict(ft.overrides)["data.label_fraction"] == 0.5
  assert dict(ft.overrides)["model.name"] == "resnet50"
  assert all(r.needs == "" for r in probes if r.name.startswith("scratch"))
  hg = [r for r in study.supervised(cfg("supervised", models=("hourglass",))) if r.kind == "probe"]
  assert all(dict(r.overrides)["head.kind"] == "direct" for r in hg)


def test_commands_are_the_clis_with_literal_overrides():
  assert study._flag(("rotate",)) == "('rotate',)" and study._flag(()) == "()" and study._flag(0.5) == "0.5"
  r = study.Run("a", "pretrain", "pretrain:peclr,tiny", (("augment.ops", ("crop", "rotate")),))
  assert r.command("/s")[4:] == ["--config.augment.ops=('crop','rotate',)", "--workdir=/s/a"]


def test_a_failed_encoder_skips_its_probe_and_the_rest_goes_on(tmp_path):
  data = ("data.root", str(tmp_path / "data"))  # not the repository's data/synthetic
  runs = [
    study.Run("bad", "pretrain", "pretrain:simclr,tiny", (("model.name", "resnet7"), data)),
    study.Run("bad_probe", "probe", "probe:linear,tiny", (data,), needs="bad"),
    study.Run("other", "pretrain", "pretrain:simclr,tiny", (("total_steps", 0), data)),
  ]
  lines = []
  failed = scheduler.execute(runs, str(tmp_path), parallel=2, log=lines.append, poll=0.1)
  assert set(failed) == {"bad", "bad_probe", "other"}  # total_steps=0 is an error too, but it did run
  assert any(line.startswith("[skipped] bad_probe") for line in lines)
  assert os.path.isfile(tmp_path / "other" / "run.log") and not (tmp_path / "bad_probe").exists()
  assert "resnet7" in (tmp_path / "bad" / "run.log").read_text()


def test_sigterm_reaches_the_running_runs_and_starts_no_more(tmp_path):
  import signal
  import threading
  import time

  from peclr_jax import checkpoint

  class Sleeper(study.Run):  # a run that, like the trainers, exits 143 on SIGTERM
    def command(self, root):
      code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
        "open(sys.argv[1], 'w').close(); time.sleep(60)"
      )
      return [sys.executable, "-c", code, str(tmp_path / f"{self.name}.started")]

  def terminate():
    while not (tmp_path / "a.started").exists():
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)  # to the study only, as a scheduler may send it

  threading.Thread(target=terminate, daemon=True).start()
  lines, t0 = [], time.time()
  with pytest.raises(checkpoint.Preempted, match="SIGTERM received"):
    scheduler.execute(
      [Sleeper("a", "pretrain"), Sleeper("b", "pretrain")], str(tmp_path), parallel=1, log=lines.append, poll=0.05
    )
  assert "[stopped] a (exit 143)" in lines and time.time() - t0 < 30
  assert not (tmp_path / "b.started").exists()


def test_study_runs_resumes_and_tabulates(tmp_path):
  root, data = tmp_path / "study", tmp_path / "data"
  argv = [
    sys.executable,
    "-m",
    "peclr_jax.study",
    "--config=study:ablation,tiny",
    f"--workdir={root}",
    "--config.parallel=2",
    "--config.augmentations=('crop',)",
    "--config.objectives=('simclr',)",
    f"--config.data_overrides=(('data.root','{data}'),)",
  ]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run():
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout

  out = run()
  assert out.count("[ok]") == 3
  rows = json.loads((root / "results.json").read_text())["rows"]
  assert {(r["augmentation"], r["objective"]) for r in rows} == {("crop", "simclr"), ("-", "random init")}
  assert all(0 < r["epe_2d_px"] < 32 for r in rows)
  assert "| crop | simclr |" in (root / "results.md").read_text() and (root / "results.png").is_file()
  anchor = json.loads((root / "results.json").read_text())["constant_baseline"]["epe_2d_px"]
  assert f"A constant prediction scores {anchor:.2f} px" in (root / "results.md").read_text()
  assert json.loads((root / "best_objectives.json").read_text()) == {"crop": "simclr"}
  assert len((root / "commands.sh").read_text().splitlines()) == 1 + 3

  # Resume: only what is missing runs again.
  os.remove(root / "probe_simclr_crop_s0" / "eval_evaluation.json")
  mtime = os.path.getmtime(root / "pretrain_simclr_crop_s0" / "encoder" / "model.json")
  out = run()
  assert "[done]    pretrain_simclr_crop_s0" in out and "[done]    probe_random_init_s0" in out
  assert out.count("[start]") == 1 and "[ok]      probe_simclr_crop_s0" in out
  assert os.path.getmtime(root / "pretrain_simclr_crop_s0" / "encoder" / "model.json") == mtime
  assert (root / "probe_simclr_crop_s0" / "eval_evaluation.json").is_file()


def _eval_json(path, metrics, anchor):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"metrics": {**metrics, "epe_mm": 999.0}, "mean_pose_baseline": anchor}, f)


def test_each_row_is_divided_by_the_anchors_of_the_set_it_was_evaluated_on(tmp_path):
  """Cross-dataset rows scored on A and on B: each row's ratio uses its own evaluation's constants."""
  root, c = str(tmp_path), cfg("cross_dataset")
  runs = study.cross_dataset(c, root)
  on_a = dict(epe_2d_px=11.32, rr_epe_mm=60.0, pa_epe_mm=19.94, pa_auc=0.606)
  on_b = dict(epe_2d_px=9.0, rr_epe_mm=50.0)  # no PA anchor: the ratio cell stays empty
  _eval_json(
    os.path.join(root, "scratch", "eval_evaluation.json"),
    dict(epe_2d_px=10.0, pa_epe_mm=28.0, pa_auc=0.44, rr_epe_mm=90.0),
    on_a,
  )
  _eval_json(
    os.path.join(root, "scratch", "eval_B_evaluation.json"),
    dict(epe_2d_px=9.9, pa_epe_mm=27.0, pa_auc=0.45, rr_epe_mm=80.0),
    on_b,
  )
  rows = study.write_results(c, runs, root)
  assert [r["run"] for r in rows] == ["scratch", "eval_B_scratch"]
  assert [r["anchor"] for r in rows] == [on_a, on_b]
  table = (tmp_path / "results.md").read_text()
  assert (
    "| setting | evaluated on | 2D EPE px | 2D x const | PA-EPE mm | PA x const | PA-AUC | root-rel. EPE mm | "
    "root-rel. x const | run |"
  ) in table
  a = f"| 10.00 | {10 / 11.32:.3f} | 28.00 | {28 / 19.94:.3f} | 0.4400 | 90.00 | {90 / 60:.3f} | scratch |"
  b = f"| 9.90 | {9.9 / 9:.3f} | 27.00 |  | 0.4500 | 80.00 | {80 / 50:.3f} | eval_B_scratch |"
  assert f"| no pretraining, scratch on A | A {a}" in table and f"| no pretraining, scratch on A | B {b}" in table
  assert "scratch: A constant prediction scores 11.32 px 2D EPE" in table and "19.94 mm PA-EPE" in table
  assert "eval_B_scratch: A constant prediction scores 9.00 px 2D EPE" in table and "50.00 mm root-relative" in table


def test_study_table_falls_back_to_the_given_anchor_and_prints_one_line_when_all_share_it():
  anchor = dict(epe_2d_px=8.0, pa_epe_mm=20.0, pa_auc=0.6)
  rows = [
    dict(objective="peclr", epe_2d_px=6.0, pa_epe_mm=25.0, pa_auc=0.5, run="p"),
    dict(objective="simclr", epe_2d_px=7.0, pa_epe_mm=30.0, pa_auc=0.4, run="s", anchor=dict(anchor)),
  ]
  table = report.study_table(rows, "T", sort="epe_2d_px", anchor=anchor)
  assert f"| peclr | 6.00 | {6 / 8:.3f} | 25.00 | {25 / 20:.3f} | 0.5000 | p |" in table
  assert f"| simclr | 7.00 | {7 / 8:.3f} | 30.00 | {30 / 20:.3f} | 0.4000 | s |" in table
  (line,) = [x for x in table.splitlines() if "constant prediction" in x]
  assert line.startswith("A constant prediction scores 8.00 px 2D EPE") and "20.00 mm PA-EPE / 0.6000 PA-AUC" in line


def test_each_seed_repeats_every_run_but_rendering_and_reads_its_own_encoder():
  c = cfg("cross_dataset", seeds=(0, 3))
  runs = study.runs_of(c, "/s")
  by = {r.name: r for r in runs}
  assert [r.name for r in runs if r.kind == "render"] == ["data_A", "data_B"]  # shared
  one = study.cross_dataset(c, "/s")
  assert len(runs) == 2 + 2 * (len(one) - 2)
  ft = by["finetune_AB_s3"]
  assert ft.needs == "pretrain_peclr_AB_s3" and ft.after == ("data_A",) and dict(ft.overrides)["seed"] == 3
  assert by["eval_B_finetune_AB_s3"].needs == "finetune_AB_s3" and "seed" not in dict(
    by["eval_B_finetune_AB_s3"].overrides
  )
  o = study.runs_of(cfg("objectives", seeds=(0, 1)), "/s")
  knn = {r.name: r for r in o}["knn_random_init_s1"]
  assert knn.kind == "knn" and knn.needs == "" and "--config.seed=1" in knn.command("/s")
  assert knn.output("/s") == "/s/knn_random_init_s1/knn_evaluation.json"


def test_seed_cells_and_paired_intervals_match_a_direct_computation(tmp_path):
  """Planted per-seed results: the cell means / std and the PeCLR - SimCLR t-interval against NumPy and scipy."""
  import numpy as np
  import scipy.stats

  root, c = str(tmp_path), cfg("objectives", seeds=(0, 1, 2), measures=())
  runs = study.runs_of(c, root)
  anchor = dict(epe_2d_px=11.0, rr_epe_mm=100.0, pa_epe_mm=20.0)
  planted = {"simclr": [10.0, 10.4, 10.1], "peclr": [9.0, 9.5, 9.3], "relative": [10.0, 10.0, 10.6]}
  planted["random init"] = [10.9, 11.0, 11.2]
  for r in runs:
    if r.kind == "probe":
      v = planted[dict(r.tags)["objective"]][r.seed]
      _eval_json(
        os.path.join(root, r.name, "eval_evaluation.json"),
        dict(epe_2d_px=v, pa_epe_mm=20 + v, pa_auc=0.5, rr_epe_mm=90.0),
        anchor,
      )
  study.write_results(c, runs, root)
  res = json.loads((tmp_path / "results.json").read_text())
  cell = next(x for x in res["cells"] if x["objective"] == "peclr")
  assert cell["epe_2d_px"]["mean"] == pytest.approx(np.mean(planted["peclr"]))
  assert cell["epe_2d_px"]["std"] == pytest.approx(np.std(planted["peclr"], ddof=1))
  (comp,) = [x for x in res["comparisons"]["epe_2d_px"] if x["name"] == "linear: peclr vs simclr"]
  d = np.subtract(planted["peclr"], planted["simclr"])
  half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
  assert (comp["lo"], comp["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
  assert comp["significant"] == (d.mean() + half < 0)
  md = (tmp_path / "results.md").read_text()
  assert f"| linear | peclr | 3 | {np.mean(planted['peclr']):.2f} +- {np.std(planted['peclr'], ddof=1):.2f} |" in md
  assert "linear: relative vs simclr" in md and "linear: peclr vs random init" in md
