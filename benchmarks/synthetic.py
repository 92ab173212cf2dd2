"""Throughput of the embedded renderer: 224x224 images/s written to disk in the FreiHAND layout.

    python benchmarks/synthetic.py [--images 2000] [--workers 1 2] [--styles legacy lifelike] [--versions 1]

Target: >= 200 images/s on 2 cores (20k images in under 2 minutes). Also prints a per-stage breakdown on one core
(sample and geometry run once per id, shade and jpeg once per image). With versions, `--images` counts ids, each
rendered once and shaded `--versions` times; images/s counts images, worker start-up included.
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from peclr_jax.data import synthetic as S


def stages(style, n=200):
  """Milliseconds per image of each stage, one core."""
  t = dict(sample=0.0, geometry=0.0, shade=0.0, jpeg=0.0)
  scenes = S._scenes(0, style.scenes) if style.scenes else None  # made once per process, as in a worker
  for i in range(n):
    t0 = time.perf_counter()
    h = S.sample_hand(np.random.default_rng([0, 0, i]), style)
    t1 = time.perf_counter()
    g = S.render_geometry(h)
    t2 = time.perf_counter()
    img = S.shade(np.random.default_rng([0, 0, i, 1]), g, style, h["K"], scenes)
    t3 = time.perf_counter()
    S._jpeg(img)
    t4 = time.perf_counter()
    for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      t[k] += dt
  return {k: v / n * 1e3 for k, v in t.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
  p.add_argument("--styles", nargs="+", default=list(S.STYLES), choices=list(S.STYLES))
  p.add_argument("--versions", type=int, default=1)
  args = p.parse_args()
  print(
    f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
  )
  print(f"{'style':>9} {'workers':>8} {'images':>8} {'seconds':>8} {'images/s':>9}")
  for name in args.styles:
    style = S.STYLES[name]()
    for w in args.workers:
      with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        S.write_split(d, "training", args.images, 0, args.versions, style, workers=w, progress=False)
        dt = time.perf_counter() - t0
      n = args.images * args.versions
      print(f"{name:>9} {w:>8} {n:>8} {dt:>8.1f} {n / dt:>9.1f}", flush=True)
    print(f"{name}, one core, ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in stages(style).items()))


if __name__ == "__main__":
  main()
