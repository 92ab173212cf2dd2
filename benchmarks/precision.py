"""Mixed precision: the loss curve of a bfloat16 run (float32 params and optimiser state) against float32 runs.

    python benchmarks/precision.py [--config pretrain:peclr,tiny] [--steps 100] [--seeds 5 6]

Trains the config three times from scratch on the embedded data: float32 with the first seed, bfloat16 with the first
seed, float32 with the second seed. The second float32 run is the curve's noise: bfloat16 is "within noise" when it
is closer to the first float32 run than that run is to the second. Prints the losses every `--every` steps, the
mean absolute gaps and each run's median images/s (the trainer's own measure).
"""

import argparse
import os
import tempfile

import numpy as np

from peclr_jax import configs, pretrain


def curve(spec, steps, seed, dtype, root, workdir):
  c = configs.load(spec)
  c.data.root, c.seed, c.model.dtype = root, seed, dtype
  c.total_steps, c.log_every, c.ckpt_every = steps, 1, steps
  r = pretrain.train(c, workdir, progress=False)
  return np.array([m["loss"] for m in r.metrics]), np.median([m["images_per_s"] for m in r.metrics[1:]])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="pretrain:peclr,tiny")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--seeds", type=int, nargs=2, default=(5, 6))
  p.add_argument("--every", type=int, default=10)
  args = p.parse_args()
  runs = (("float32", args.seeds[0]), ("bfloat16", args.seeds[0]), ("float32", args.seeds[1]))
  with tempfile.TemporaryDirectory() as tmp:
    out = {
      r: curve(args.config, args.steps, r[1], r[0], os.path.join(tmp, "data"), os.path.join(tmp, f"{r[0]}{r[1]}"))
      for r in runs
    }
  (a, sa), (b, sb), (c, sc) = (out[r] for r in runs)
  print(f"{args.config}, {args.steps} steps; loss every {args.every} steps")
  print("| step | " + " | ".join(f"{d}, seed {s}" for d, s in runs) + " |")
  print("|---|---|---|---|")
  for i in [*range(args.every - 1, args.steps, args.every)]:
    print(f"| {i + 1} | {a[i]:.4f} | {b[i]:.4f} | {c[i]:.4f} |")
  print(f"| images/s | {sa:.0f} | {sb:.0f} | {sc:.0f} |")
  gap, noise = np.abs(b - a).mean(), np.abs(c - a).mean()
  print(
    f"mean |bfloat16 - float32| = {gap:.4f}; mean |float32 seed {args.seeds[1]} - seed {args.seeds[0]}| = "
    f"{noise:.4f} (the noise); within noise: {gap < noise}"
  )


if __name__ == "__main__":
  main()
