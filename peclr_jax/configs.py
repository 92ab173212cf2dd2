"""Helpers for the `configs/*.py` files (kept out of them so each config reads as settings only)."""

SIZES = ("full", "cpu", "tiny")


def split_arg(arg, kinds, default, default_size="full", what="KIND"):
  """`"peclr,cpu"` -> ("peclr", "cpu"), checked against `kinds` and SIZES; one clear error otherwise."""
  kind, _, size = (arg or default).partition(",")
  size = size or default_size
  if kind not in kinds or size not in SIZES:
    raise ValueError(f"config arg {arg!r}: expected {what}[,SIZE] with {what} in {tuple(kinds)}, SIZE in {SIZES}")
  return kind, size
