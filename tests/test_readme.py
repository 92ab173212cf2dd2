"""The README's first two commands are what new users and CI run: they stay in agreement with .ci/run, the main job's
flags, and the one pinned ruff."""

import os
import re

from peclr_jax import cli
from peclr_jax import main as main_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
  with open(os.path.join(ROOT, *path)) as f:
    return f.read()


def _commands():
  return re.findall(r"```bash\n(.*?)\n```", _read("README.md"), re.S)


def test_ci_lints_then_runs_the_readme_test_command():
  main, tests = _commands()[:2]
  assert "peclr_jax.main" in main and "pip install" in main and "pytest" in tests
  lines = _read(".ci", "run").splitlines()
  assert tests in lines
  before = "\n".join(lines[: lines.index(tests)])
  assert "ruff check ." in before and "ruff format --check ." in before


def test_the_main_command_parses_with_the_main_jobs_flags():
  main = _commands()[0]
  job = main.split("&&")[-1].split()
  assert job[:3] == ["python", "-m", "peclr_jax.main"]
  args = cli.parse(job[3:], main_job.__doc__, main_job._flags, required=())
  assert args.workdir == "runs/main"


def test_one_ruff_version_everywhere():
  pins = {
    re.search(r"ruff==([\d.]+)", _read("setup.cfg"))[1],
    re.search(r"ruff==([\d.]+)", _read(".ci", "run"))[1],
    re.search(r"ruff-pre-commit\s+rev: v([\d.]+)", _read(".pre-commit-config.yaml"))[1],
  }
  assert len(pins) == 1, pins
