"""Weighted mixing of random-access sources, sampled with replacement (the reference mixes FreiHAND and
YT3D 50/50).

`grain.MapDataset.mix` is not used: it interleaves deterministically without replacement, its length is
min(len_k / p_k) (each record seen at most once), it rejects zero weights and does not tag the source,
whereas the reference draws every record independently (`WeightedRandomSampler`-style) over the total length.
`Mix` is itself a plain random-access source, so it works with the `MapDataset` chain and `grain.DataLoader`.
"""

import numpy as np

from peclr_jax.data import common


class Mix:
  """Record i comes from source `source_of[i]` at index `index_of[i]`, drawn once from `seed`.

  Source k is picked with probability weights[k] / sum(weights), then a uniform index in it. Entry i does not
  depend on `num_records` (default: the total length of the sources), so a longer mix extends a shorter one.
  Records keep their own `index` and gain `source` (np.int64, the position of their source in `sources`).
  """

  def __init__(self, sources, weights, num_records=None, seed=0):
    self.sources = list(sources)
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) != len(self.sources):
      raise common.DataError(f"Mix: {len(self.sources)} sources but weights {np.asarray(weights).tolist()}")
    if not self.sources:
      raise common.DataError("Mix: needs at least one source")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
      raise common.DataError(f"Mix: weights must be finite, non-negative and sum to > 0, got {w.tolist()}")
    self.weights = w
    self.lengths = np.array([len(s) for s in self.sources], np.int64)
    for k, (s, n) in enumerate(zip(self.sources, self.lengths, strict=True)):
      if n == 0:
        raise common.DataError(f"Mix: source {k} ({s!r}) is empty")
    n = int(self.lengths.sum()) if num_records is None else int(num_records)
    if n < 0:
      raise common.DataError(f"Mix: num_records must be >= 0, got {num_records}")
    self.seed, self.num_records = seed, n
    # Separate streams for the source and the index keep entry i independent of n.
    pick, within = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # Dividing by the last cumsum makes the final edge exactly 1, so zero-weight sources are never drawn.
    edges = np.cumsum(w) / np.cumsum(w)[-1]
    self.source_of = np.searchsorted(edges, pick.random(n), side="right").astype(np.int32)
    self.index_of = within.integers(0, self.lengths[self.source_of], dtype=np.int64)

  def __len__(self):
    return self.num_records

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < self.num_records:
      raise IndexError(f"index {i} out of range for {self.num_records} records")
    k = int(self.source_of[i])
    record = dict(self.sources[k][int(self.index_of[i])])
    record["source"] = np.int64(k)
    return record

  def __repr__(self):
    parts = ", ".join(f"{s!r}: {w:g}" for s, w in zip(self.sources, self.weights, strict=True))
    return f"Mix({{{parts}}}, {self.num_records} records, seed={self.seed})"
