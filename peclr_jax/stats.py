"""Run-to-run statistics of a study: mean and standard deviation over seeds, and paired differences with intervals.

  cells, pairs = stats.summarise(rows, "epe_2d_px", ("protocol", "objective"),
                                 {"peclr vs simclr": ({"objective": "peclr"}, {"objective": "simclr"})})

A row is one finished run: its tags (objective, augmentation, ...), its `seed` and its metrics. A cell is the set of
rows that share every tag; two cells are compared seed by seed (the same seed moves initialisation, augmentation and
data order the same way in both), so the difference of each seed's pair removes what the seed does to both runs.
Intervals are two-sided at `level` (95 % by default): Student's t on the paired differences, or a percentile bootstrap
of their mean; a difference is significant when its interval excludes 0.

The t quantile is scipy's (jax depends on scipy, so it is always installed).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

METHODS = ("t", "bootstrap")


def t_ppf(p, df):
  """The quantile of Student's t with `df` degrees of freedom, for p in (0, 1)."""
  if not 0 < p < 1:
    raise ValueError(f"p must lie in (0, 1), got {p}")
  return float(scipy.stats.t.ppf(p, df))


# ---------------------------------------------------------------------------------------------------------------
# Intervals.
# ---------------------------------------------------------------------------------------------------------------
def _values(x):
  x = np.asarray(x, np.float64).ravel()
  if not np.isfinite(x).all():
    raise ValueError(f"values must be finite, got {x.tolist()}")
  return x


def mean_std(values) -> dict:
  """dict(mean, std (sample, ddof 1; None below 2 values), n)."""
  x = _values(values)
  if not len(x):
    return dict(mean=None, std=None, n=0)
  return dict(mean=float(x.mean()), std=float(x.std(ddof=1)) if len(x) > 1 else None, n=int(len(x)))


def significant(interval: Mapping) -> bool:
  """Whether an interval (dict with lo, hi) excludes 0; False when it is undefined."""
  lo, hi = interval.get("lo"), interval.get("hi")
  return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _interval(mean, lo, hi, n, method, level):
  num = lambda v: None if v is None else float(v)
  out = dict(mean=num(mean), lo=num(lo), hi=num(hi), n=int(n), method=method, level=float(level))
  out["significant"] = bool(significant(out))
  return out


def t_interval(diffs, level: float = 0.95) -> dict:
  """The t-interval of the mean of `diffs`: mean +- t_{(1+level)/2, n-1} s / sqrt(n); lo/hi None below 2 values."""
  x = _values(diffs)
  n = len(x)
  if n < 2:
    return _interval(float(x.mean()) if n else None, None, None, n, "t", level)
  half = t_ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
  m = float(x.mean())
  return _interval(m, m - half, m + half, n, "t", level)


def bootstrap_interval(diffs, level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> dict:
  """Percentile bootstrap interval of the mean of `diffs` (resampled with replacement); deterministic given seed."""
  x = _values(diffs)
  n = len(x)
  if n < 2:
    return _interval(float(x.mean()) if n else None, None, None, n, "bootstrap", level)
  idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
  means = x[idx].mean(1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return _interval(float(x.mean()), float(lo), float(hi), n, "bootstrap", level)


def interval(diffs, method: str = "t", level: float = 0.95, seed: int = 0) -> dict:
  if method == "t":
    return t_interval(diffs, level)
  if method == "bootstrap":
    return bootstrap_interval(diffs, level, seed=seed)
  raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def paired(a: Mapping, b: Mapping, method: str = "t", level: float = 0.95, seed: int = 0) -> dict:
  """The difference a - b of two {seed: value} maps over their common seeds, with its interval.

  Also `relative`: the interval of the per-seed relative differences (a - b) / b (e.g. -0.1 = 10 % below b).
  """
  seeds = sorted(set(a) & set(b))
  va = np.array([a[s] for s in seeds], np.float64)
  vb = np.array([b[s] for s in seeds], np.float64)
  out = interval(va - vb, method, level, seed)
  out["seeds"] = list(seeds)
  out["unpaired_seeds"] = sorted(set(a) ^ set(b))
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = (va - vb) / vb
  out["relative"] = interval(rel, method, level, seed) if np.isfinite(rel).all() else None
  return out


# ---------------------------------------------------------------------------------------------------------------
# Rows -> cells and comparisons.
# ---------------------------------------------------------------------------------------------------------------
def _cell_key(row, tags):
  return tuple((k, row[k]) for k in tags)


def cells(rows: Sequence[Mapping], metric: str, tags: Sequence[str], seed_key: str = "seed") -> dict:
  """{cell key (tuple of (tag, value)): {seed: value}} of the rows that have `metric`; a repeated seed is an error."""
  out = {}
  for r in rows:
    if r.get(metric) is None:
      continue
    key = _cell_key(r, tags)
    by_seed = out.setdefault(key, {})
    if r[seed_key] in by_seed:
      raise ValueError(f"cell {dict(key)} has seed {r[seed_key]!r} twice")
    by_seed[r[seed_key]] = float(r[metric])
  return out


def find(table: Mapping, spec: Mapping) -> tuple:
  """The one cell key of `table` whose tags include every (tag, value) of `spec`; ValueError when not exactly one."""
  hits = [k for k in table if all(dict(k).get(t) == v for t, v in spec.items())]
  if len(hits) != 1:
    raise ValueError(f"{dict(spec)} matches {len(hits)} cells ({[dict(k) for k in hits]}); expected one")
  return hits[0]


def summarise(
  rows: Sequence[Mapping],
  metric: str,
  tags: Sequence[str],
  pairs: Mapping[str, tuple[Mapping, Mapping]] = (),
  seed_key: str = "seed",
  method: str = "t",
  level: float = 0.95,
  seed: int = 0,
) -> tuple[list, list]:
  """(cells, comparisons) of `metric` over `rows`.

  tags: the keys that name a cell (rows lacking one are an error: a cell is never guessed).
  cells: one dict per cell: its tags, mean, std, n and seeds, in first-seen order.
  pairs: {name: (spec_a, spec_b)} with each spec a {tag: value} naming one cell; each comparison is a dict with the
  name, both cells' tags, and `paired(a, b)` (a - b over the common seeds) with its interval and `significant`.
  """
  table = cells(rows, metric, tags, seed_key)
  out = []
  for key, by_seed in table.items():
    out.append(dict(key, **mean_std(list(by_seed.values())), seeds=sorted(by_seed)))
  comps = []
  for name, (spec_a, spec_b) in dict(pairs).items():
    ka, kb = find(table, spec_a), find(table, spec_b)
    comps.append(dict(name=name, a=dict(ka), b=dict(kb), **paired(table[ka], table[kb], method, level, seed)))
  return out, comps


def format_diff(c: Mapping, digits: int = 2) -> str:
  """'-0.42 [-0.61, -0.23] *' for a comparison (the star marks a significant difference); '-0.42 (n=1)' without one."""
  if c["mean"] is None:
    return "-"
  if c["lo"] is None:
    return f"{c['mean']:+.{digits}f} (n={c['n']})"
  star = " *" if c["significant"] else ""
  return f"{c['mean']:+.{digits}f} [{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}]{star}"


def format_cell(c: Mapping, digits: int = 2) -> str:
  """'3.21 +- 0.12' (mean +- standard deviation over seeds), '3.21' for one seed."""
  if c["mean"] is None:
    return "-"
  return f"{c['mean']:.{digits}f}" + ("" if c["std"] is None else f" +- {c['std']:.{digits}f}")
