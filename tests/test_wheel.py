"""A built wheel, installed into a fresh virtual environment outside the repository, runs the tiny
pretrain -> probe -> evaluate round trip through its console scripts: the configs travel inside the package."""

import glob
import importlib.util
import os
import shutil
import site
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELP = """
import contextlib, importlib.metadata, io, sys
for ep in sorted(importlib.metadata.entry_points(group="console_scripts"), key=lambda e: e.name):
  if ep.name.startswith("peclr-"):
    sys.argv = [ep.name, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      try:
        ep.load()()
      except SystemExit as e:
        assert e.code == 0, (ep.name, e.code)
    assert "flags:" in out.getvalue(), ep.name
    print(ep.name)
"""
SCRIPTS = (
  "peclr-equivariance",
  "peclr-evaluate",
  "peclr-knn",
  "peclr-main",
  "peclr-predict",
  "peclr-pretrain",
  "peclr-probe",
  "peclr-study",
  "peclr-synthetic",
)  # sorted


def _run(cmd, cwd, timeout=600):
  r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"
  return r.stdout


def test_a_wheel_in_a_fresh_venv_runs_the_round_trip(tmp_path):
  # The sources a wheel is built from, copied out so the build leaves nothing in the checkout.
  src = tmp_path / "src"
  shutil.copytree(os.path.join(ROOT, "peclr_jax"), src / "peclr_jax", ignore=shutil.ignore_patterns("__pycache__"))
  for f in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, f), src / f)
  # Built with this environment's setuptools and wheel when it has them (no download), else in pip's isolated env.
  local = all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
  isolation = ["--no-build-isolation"] if local else []
  _run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path / "dist"), str(src)],
    tmp_path,
  )
  (wheel,) = glob.glob(str(tmp_path / "dist" / "peclr_jax-*.whl"))

  # A fresh venv holding only the wheel; its dependencies are read from this environment's site-packages, listed
  # after the venv's own (a path in a .pth file: this environment's editable install of the checkout stays off).
  env = tmp_path / "env"
  _run([sys.executable, "-m", "venv", str(env)], tmp_path)
  python = str(env / "bin" / "python")
  _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)
  purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
  with open(os.path.join(purelib, "_deps.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")

  work = tmp_path / "outside"  # not the repository: nothing can be found next to the source tree
  work.mkdir()
  where = _run([python, "-c", "import peclr_jax.configs as c; print(c.__file__)"], work).strip()
  assert where.startswith(str(env)), where
  # Every console script is installed and answers --help (one process: each loads its module's jax once).
  helps = _run([python, "-c", HELP], work)
  assert helps.split() == list(SCRIPTS), helps

  data = f"--config.data.root={work / 'data'}"
  _run([str(env / "bin" / "peclr-pretrain"), "--config=pretrain:peclr,tiny", "--workdir=pre", data], work)
  _run(
    [str(env / "bin" / "peclr-probe"), "--config=probe:linear,tiny", "--config.encoder=pre", "--workdir=lin", data],
    work,
  )
  out = _run([str(env / "bin" / "peclr-evaluate"), "--workdir=lin"], work)
  assert "| PA-EPE (mm) |" in out and (work / "lin" / "pred_evaluation.zip").is_file()
