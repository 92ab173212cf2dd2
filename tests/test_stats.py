"""Seed statistics: the t quantile against its closed forms, intervals against hand computations, the bootstrap on a
planted difference, and the rows -> cells -> paired comparisons helper against NumPy."""

import math

import numpy as np
import pytest

from peclr_jax import stats


def _t_closed(p, df):
  """Student's t quantiles with closed forms: df = 1 (Cauchy), 2 and 4 (Hill 1970)."""
  if df == 1:
    return math.tan(math.pi * (p - 0.5))
  if df == 2:
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
  a = 4 * p * (1 - p)
  q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
  return math.copysign(2 * math.sqrt(q - 1), p - 0.5)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("p", [0.025, 0.3, 0.6, 0.9, 0.975, 0.995, 0.99999])
def test_t_quantile_matches_the_closed_forms(p, df):
  assert stats.t_ppf(p, df) == pytest.approx(_t_closed(p, df), rel=1e-10, abs=1e-12)


def test_t_quantile_tends_to_the_normal():
  assert stats.t_ppf(0.975, 10**7) == pytest.approx(1.959963984540054, abs=1e-6)
  with pytest.raises(ValueError):
    stats.t_ppf(1.0, 3)


def test_t_interval_by_hand():
  # [1, 2, 3]: mean 2, s = 1, df 2: half-width t_{0.975,2} / sqrt(3), with t_{0.975,2} = 0.95 / sqrt(2 0.975 0.025).
  half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
  r = stats.t_interval([1.0, 2.0, 3.0])
  assert r["mean"] == pytest.approx(2.0)
  assert (r["lo"], r["hi"]) == pytest.approx((2 - half, 2 + half), rel=1e-10)
  assert r["n"] == 3 and r["significant"] is False  # 2 - 2.48 < 0
  # [0.5, 1.5, 1, 2]: mean 1.25, s = sqrt(1.25 / 3), df 3 (table value t_{0.975,3} = 3.182446).
  r = stats.t_interval([0.5, 1.5, 1.0, 2.0])
  half = 3.182446305284263 * math.sqrt(1.25 / 3) / 2
  assert (r["lo"], r["hi"]) == pytest.approx((1.25 - half, 1.25 + half), rel=1e-9)
  assert r["significant"] is True
  # 90 %: the 0.95 quantile, df 2: 0.9 / sqrt(2 0.95 0.05).
  r = stats.t_interval([1.0, 2.0, 3.0], level=0.9)
  assert r["hi"] - 2 == pytest.approx(0.9 / math.sqrt(2 * 0.95 * 0.05) / math.sqrt(3), rel=1e-10)


def test_one_value_has_no_interval():
  for method in stats.METHODS:
    r = stats.interval([0.7], method)
    assert r["mean"] == 0.7 and r["lo"] is None and r["hi"] is None and r["significant"] is False
  assert stats.mean_std([0.7]) == dict(mean=0.7, std=None, n=1)


def test_bootstrap_of_two_values_is_their_range():
  """Resampling [0, 1]: means 0, 1/2, 1 with mass 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1."""
  r = stats.bootstrap_interval([0.0, 1.0], n_boot=4000, seed=3)
  assert (r["lo"], r["hi"]) == (0.0, 1.0)


def test_bootstrap_finds_a_planted_difference_and_covers_zero_without_one():
  rng = np.random.default_rng(0)
  base = rng.normal(10, 2, 40)  # what a seed does to both runs
  planted = base + 1.0 + rng.normal(0, 0.5, 40)
  r = stats.paired(dict(enumerate(planted)), dict(enumerate(base)), method="bootstrap")
  assert r["lo"] < 1.0 < r["hi"] and r["lo"] > 0 and r["significant"]
  # The bootstrap of a mean is close to the t-interval for 40 near-normal values.
  t = stats.t_interval(planted - base)
  assert r["lo"] == pytest.approx(t["lo"], abs=0.05) and r["hi"] == pytest.approx(t["hi"], abs=0.05)
  same = base + rng.normal(0, 0.5, 40)
  r0 = stats.paired(dict(enumerate(same)), dict(enumerate(base)), method="bootstrap")
  assert r0["lo"] < 0 < r0["hi"] and not r0["significant"]
  # Deterministic given the seed, and the seed matters.
  assert stats.bootstrap_interval(planted - base, seed=1) == stats.bootstrap_interval(planted - base, seed=1)
  assert (
    stats.bootstrap_interval(planted - base, seed=1)["lo"] != stats.bootstrap_interval(planted - base, seed=2)["lo"]
  )


def test_t_interval_covers_the_truth_at_its_level():
  """95 % of the intervals of many small samples (n = 3) contain the true mean."""
  rng = np.random.default_rng(1)
  hits = 0
  for _ in range(2000):
    r = stats.t_interval(rng.normal(0.3, 1.0, 3))
    hits += r["lo"] <= 0.3 <= r["hi"]
  assert 0.935 < hits / 2000 < 0.965


def test_paired_pairs_by_seed():
  a = {0: 1.0, 1: 2.0, 2: 3.0}
  b = {0: 0.5, 1: 1.0, 2: 2.5, 3: 9.0}
  r = stats.paired(a, b)
  d = np.array([0.5, 1.0, 0.5])
  assert r["seeds"] == [0, 1, 2] and r["unpaired_seeds"] == [3] and r["n"] == 3
  assert r["mean"] == pytest.approx(d.mean())
  rel = np.array([0.5 / 0.5, 1.0 / 1.0, 0.5 / 2.5])
  assert r["relative"]["mean"] == pytest.approx(rel.mean())


def test_summarise_rows_into_cells_and_comparisons():
  rng = np.random.default_rng(2)
  vals = {"peclr": rng.normal(3.0, 0.1, 3), "simclr": rng.normal(3.5, 0.1, 3), "random init": rng.normal(5, 0.1, 3)}
  rows = [
    dict(objective=o, protocol="linear", seed=s, epe_2d_px=float(v[s]), workdir=f"w{o}{s}")
    for o, v in vals.items()
    for s in range(3)
  ]
  rows.append(dict(objective="peclr", protocol="linear", seed=9, epe_2d_px=None))  # unfinished: skipped
  cells, comps = stats.summarise(
    rows, "epe_2d_px", ("objective", "protocol"), {"PeCLR vs SimCLR": ({"objective": "peclr"}, {"objective": "simclr"})}
  )
  assert [c["objective"] for c in cells] == ["peclr", "simclr", "random init"]
  for c in cells:
    v = vals[c["objective"]]
    assert c["mean"] == pytest.approx(v.mean()) and c["std"] == pytest.approx(v.std(ddof=1))
    assert c["n"] == 3 and c["seeds"] == [0, 1, 2] and c["protocol"] == "linear"
  (c,) = comps
  d = vals["peclr"] - vals["simclr"]
  half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * d.std(ddof=1) / math.sqrt(3)
  assert c["name"] == "PeCLR vs SimCLR" and c["a"]["objective"] == "peclr" and c["b"]["objective"] == "simclr"
  assert (c["mean"], c["lo"], c["hi"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
  assert c["significant"] == (d.mean() + half < 0)
  text = stats.format_diff(c)
  assert text.startswith(f"{d.mean():+.2f} [") and text.endswith(" *") == c["significant"]
  assert stats.format_cell(cells[0]) == f"{vals['peclr'].mean():.2f} +- {vals['peclr'].std(ddof=1):.2f}"


def test_summarise_rejects_ambiguous_cells_and_repeated_seeds():
  rows = [dict(objective=o, aug=a, seed=s, m=1.0 + s) for o in ("x", "y") for a in ("rot", "crop") for s in range(2)]
  tags = ("objective", "aug")
  cells, _ = stats.summarise(rows, "m", tags)
  assert len(cells) == 4 and set(cells[0]) >= {"objective", "aug", "mean", "std", "n"}
  with pytest.raises(ValueError, match="matches 2 cells"):
    stats.summarise(rows, "m", tags, {"bad": ({"objective": "x"}, {"objective": "y"})})
  with pytest.raises(ValueError, match="seed 0 twice"):
    stats.summarise(rows, "m", ("objective",))
  with pytest.raises(KeyError):
    stats.summarise(rows, "m", ("protocol",))
