"""The experiment configs, inside the package so that a wheel carries them: `get_config(arg)` per tool.

  pretrain.py   OBJECTIVE[,SIZE]   self-supervised pretraining (peclr_jax.pretrain)
  probe.py      MODE[,SIZE]        keypoint regression on an encoder (peclr_jax.probe)
  study.py      STUDY[,SIZE]       sets of pretrain -> probe runs (peclr_jax.study)

A command line names a config as `--config=NAME:ARG` (`pretrain:peclr,cpu`), or by the path of any config file
(`--config=my_configs/pretrain.py:peclr,cpu`), as big_vision does; `load` does the same from Python.
"""

import importlib.util
import os

import ml_collections

from peclr_jax.errors import ConfigError

SIZES = ("full", "cpu", "tiny")
DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = ("pretrain", "probe", "study")


def split_arg(arg, kinds, default, default_size="full", what="KIND"):
  """`"peclr,cpu"` -> ("peclr", "cpu"), checked against `kinds` and SIZES; one ConfigError otherwise."""
  kind, _, size = (arg or default).partition(",")
  size = size or default_size
  if kind not in kinds or size not in SIZES:
    raise ConfigError(
      f"config argument {arg!r}: expected {what}[,SIZE] with {what} one of {', '.join(kinds)} and "
      f"SIZE one of {', '.join(SIZES)}"
    )
  return kind, size


def path(name: str) -> str:
  """The file of a config given as a path, a name of this package's (`pretrain`, `pretrain.py`) or a module."""
  if os.path.isfile(name):
    return name
  stem = name[:-3] if name.endswith(".py") else name
  if stem in NAMES:
    return os.path.join(DIR, f"{stem}.py")
  if "/" not in name and "." in stem:
    try:
      spec = importlib.util.find_spec(stem)
    except (ImportError, ValueError):
      spec = None
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
      return spec.origin
  raise ConfigError(
    f"--config={name!r}: no such file; expected a config file's path, a module, or one of "
    f"{', '.join(NAMES)} (peclr_jax/configs/)"
  )


def load(spec: str) -> ml_collections.ConfigDict:
  """`"pretrain:peclr,cpu"` (or `"path/to/config.py:ARG"`) -> the ConfigDict its get_config(ARG) returns."""
  name, _, arg = spec.partition(":")
  file = path(name)
  module_spec = importlib.util.spec_from_file_location(f"_config_{os.path.basename(file)[:-3]}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
