"""The README's first two commands are what CI and new users run."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands():
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```bash\n(.*?)\n```", f.read(), re.S)


def test_ci_runs_the_readme_test_command():
  main, tests = _commands()[:2]
  assert "peclr_jax.main" in main and "pip install" in main
  assert "pytest" in tests
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert tests in f.read().splitlines()
