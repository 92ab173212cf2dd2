"""End-to-end pretraining throughput, input pipeline included: our jitted step fed fresh host crops every step,
against the PyTorch reference-style pipeline (a DataLoader whose workers augment each sample with OpenCV, then an
AMP step), on the same accelerator, in the same run.

    python benchmarks/pipeline.py [--model resnet50] [--objective peclr] [--size 128] [--batch 256] [--steps 20]
                                  [--workers N] [--dtype bfloat16] [--images 1024] [--no-torch]

This is the issue-7 GPU comparison (ResNet-50, 128 px, PeCLR); on a machine without a GPU both sides run on the
CPU (PyTorch autocast on "cpu"), which is slow but checks the script. Both read the same in-memory pool of uint8
host crops (size x 1.25 px), so image decoding is left out on both sides.
- Ours: the config pretrain:OBJECTIVE with model.name / model.dtype set, each step a new host batch put on the
  devices (`sharding.put_batch`), both views augmented inside the jitted step (rotate + crop/scale warp, HSV
  jitter), LARS-wrapped Adam, the online probe. The augmentation's own time on the device is printed as a share
  of the step (the issue's GPU target is under 5 %).
- PyTorch: `torch.utils.data.DataLoader` (pinned memory, `--workers` processes), each sample's two views by
  `augment.py`'s OpenCV pipeline (warpAffine + HSV round trip); the same ResNet v1.5 and projection head as
  benchmarks/train_step.py (channels-last), NT-Xent (PeCLR: the view's rotation and shift undone), Adam, under
  `torch.autocast` (float16 with a GradScaler on CUDA when --dtype float16).
MFU is our img/s x XLA's FLOPs per image (forward + backward) / a large matmul of --dtype measured on the device.
Compile time and warm-up steps are excluded.
"""

import argparse
import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import augment as augment_bench  # noqa: E402 - the OpenCV views of benchmarks/augment.py
import train_step  # noqa: E402 - the same PyTorch network and our step's construction

from peclr_jax import augment, configs, sharding  # noqa: E402


def time_ours(args, data, dtype):
  local = args.batch // jax.process_count()
  step, state, b = train_step.flax_step(args.model, args.objective, args.size, local, "auto", dtype=dtype)
  compiled = step.lower(state, b).compile()
  flops = train_step.flops_per_image(compiled, 2 * local)
  mesh = sharding.mesh()
  n = len(data["image"])

  def batches(start):
    for i in range(start, start + args.steps + 1):
      idx = (np.arange(local) + i * local) % n
      yield sharding.put_batch({k: v[idx] for k, v in data.items()}, mesh)

  it = batches(0)
  state, m = compiled(state, next(it))  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, m = compiled(state, next(it))
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / args.steps

  # The augmentation alone, on the same device batch: its share of the step.
  cfg = configs.load(f"pretrain:{args.objective}").augment
  cfg.out_size = args.size
  aug = jax.jit(lambda key, b: [v[0] for v in augment.views(key, b, cfg)])
  jax.block_until_ready(aug(jax.random.key(0), b))
  t0 = time.perf_counter()
  for r in range(args.steps):
    out = aug(jax.random.key(r + 1), b)
  jax.block_until_ready(out)
  aug_s = (time.perf_counter() - t0) / args.steps
  return 2 * args.batch / step_s, flops, aug_s / step_s


class Views:
  """A torch Dataset over the pool: each item is its sample's two OpenCV views (CHW float) and their geometry."""

  def __init__(self, images, size, ops):
    self.images, self.size, self.ops = images, size, ops

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    import torch

    rng = np.random.default_rng((os.getpid(), i, time.perf_counter_ns()))
    out = []
    for _ in range(2):
      v, angle, shift = augment_bench.cv_view(self.images[i], self.size, self.ops, rng)
      out += [
        torch.from_numpy(((v / 255 - 0.5) / 0.25).transpose(2, 0, 1).copy()),
        torch.tensor(angle, dtype=torch.float32),
        torch.from_numpy(shift.astype(np.float32)),
      ]
    return tuple(out)


def time_torch(args, data):
  import torch

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  amp = dict(bfloat16=torch.bfloat16, float16=torch.float16).get(args.dtype)
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  net = train_step.torch_model(args.model).to(dev, memory_format=torch.channels_last)
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  scaler = torch.amp.GradScaler(dev, enabled=amp is torch.float16)
  ops = ("rotate", "crop", "scale", "color_jitter")
  loader = torch.utils.data.DataLoader(
    Views(data["image"], args.size, ops),
    batch_size=args.batch,
    shuffle=True,
    num_workers=args.workers,
    pin_memory=dev == "cuda",
    drop_last=True,
    persistent_workers=args.workers > 0,
    multiprocessing_context="spawn" if args.workers else None,
  )  # no fork of JAX

  def step(b):
    x1, a1, t1, x2, a2, t2 = (t.to(dev, non_blocking=True) for t in b)
    x = torch.cat([x1, x2]).contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev, amp) if amp else contextlib.nullcontext():
      z1, z2 = net(x).float().chunk(2)
    if args.objective == "peclr":
      z1, z2 = train_step.undo_torch(z1, a1, t1), train_step.undo_torch(z2, a2, t2)
    loss = train_step.nt_xent_torch(z1, z2)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss

  def batches():
    while True:
      yield from loader

  it = batches()
  for _ in range(2):  # warm-up: workers started, cudnn autotuned
    step(next(it))
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  sync()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step(next(it))
  loss.item()
  sync()
  return 2 * args.batch * args.steps / (time.perf_counter() - t0), dev


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="resnet50")
  p.add_argument("--objective", default="peclr")
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=256, help="global batch (both views: 2 x batch images a step)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--workers", type=int, default=os.cpu_count(), help="PyTorch DataLoader processes")
  p.add_argument(
    "--dtype",
    default="bfloat16",
    choices=["float32", "bfloat16", "float16"],
    help="ours: config.model.dtype (float16 runs ours in bfloat16); PyTorch: autocast dtype",
  )
  p.add_argument("--images", type=int, default=1024, help="host crops in the in-memory pool")
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  ours_dtype = "bfloat16" if args.dtype == "float16" else args.dtype
  data = train_step.host_batch(args.images, int(args.size * 1.25))  # the in-memory pool both sides read
  device = jax.devices()[0]
  peak = train_step.matmul_peak(
    dtype=jnp.float32 if ours_dtype == "float32" else jnp.bfloat16, n=8192 if device.platform == "gpu" else 2048
  )
  theirs, tdev = (float("nan"), "-")
  if not args.no_torch:
    try:
      theirs, tdev = time_torch(args, data)
    except ImportError:
      pass
  ours, flops, aug_share = time_ours(args, data, ours_dtype)
  print(
    f"{args.model} {args.objective}, {args.size} px, batch {args.batch} x 2 views, {args.dtype}; jax "
    f"{jax.__version__} on {jax.device_count()} x {device.device_kind}; PyTorch on {tdev} with {args.workers} "
    f"DataLoader workers; {ours_dtype} matmul peak measured {peak / 1e9:,.0f} GFLOP/s"
  )
  print("| ours img/s | PyTorch img/s | ratio | GFLOP/img | MFU | augmentation share of our step |")
  print("|---|---|---|---|---|---|")
  print(
    f"| {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} | {flops / 1e9:.2f} | {ours * flops / peak:.0%} | "
    f"{aug_share:.1%} |"
  )


if __name__ == "__main__":
  main()
