"""A closed-form linear probe: ridge regression of the 2D keypoints on a probe run's frozen pooled features.

    python benchmarks/closed_form_probe.py runs/linear_peclr [runs/linear_random ...] [--lambdas 1 10 100]

The trained linear probe (L1, Adam, rotate + crop augmentation, a fixed step budget) can be under-trained; this
measures what a linear layer on the same features can reach at all: the features of the evaluation crops (ground-truth
keypoints, no augmentation) of every training and evaluation image, standardised, then least squares with an L2
penalty, solved exactly. Prints the 2D EPE (px of the crop) on both splits per lambda, and a constant prediction (the
training mean) for scale. Works on any probe workdir whose encoder is a frozen ResNet (linear or mlp mode).
"""

import argparse

import jax
import numpy as np

from peclr_jax import augment, inputs, keypoints, models


def features(config, variables, split):
  """[N, D] pooled features and [N, 42] crop-pixel keypoints of a whole split, in source order."""
  enc = models.encoder(config.model)
  v = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
  aug = keypoints.eval_augment(config)

  @jax.jit
  def run(batch):
    x, uv, _, _, _ = augment.augment(jax.random.key(0), batch, aug)
    return enc.apply(v, x, train=False), uv

  feats, uvs = [], []
  src = inputs.source(config.data, split)
  for b in inputs.dataset(config, src, shuffle=False, num_epochs=1, batch_size=250, drop_remainder=False):
    f, uv = jax.device_get(run({k: b[k] for k in ("image", "uv", "K", "valid", "xyz", "scale")}))
    feats.append(f)
    uvs.append(uv)
  return np.concatenate(feats).astype(np.float64), np.concatenate(uvs).reshape(-1, 42).astype(np.float64)


def epe(pred, uv):
  return float(np.linalg.norm((pred - uv).reshape(-1, 21, 2), axis=-1).mean())


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdirs", nargs="+", help="probe workdirs (python -m peclr_jax.probe ... --workdir=...)")
  p.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 10.0, 100.0])
  args = p.parse_args()
  for wd in args.workdirs:
    config, variables = keypoints.restore(wd)
    f_tr, uv_tr = features(config, variables, "training")
    f_ev, uv_ev = features(config, variables, "evaluation")
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    a = np.c_[(f_tr - mu) / sd, np.ones(len(f_tr))]
    b = np.c_[(f_ev - mu) / sd, np.ones(len(f_ev))]
    print(
      f"{wd}: {len(f_tr)} training / {len(f_ev)} evaluation images, {f_tr.shape[1]} features; "
      f"constant (training mean) {epe(uv_tr.mean(0), uv_ev):.2f} px on evaluation"
    )
    for lam in args.lambdas:
      w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ uv_tr)
      print(f"  lambda {lam:g}: 2D EPE training {epe(a @ w, uv_tr):.2f} px, evaluation {epe(b @ w, uv_ev):.2f} px")


if __name__ == "__main__":
  main()
