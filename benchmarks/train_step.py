"""Pretraining throughput: images/s of our jitted step (both views augmented on device, forward, loss, backward,
optimiser) against the same network and loss written in PyTorch, in the same run.

    python benchmarks/train_step.py [--models resnet18 resnet50] [--objectives simclr peclr] [--size 128]
                                    [--batch 32] [--steps 5] [--conv cpu onednn] [--dtype float32]
                                    [--no-torch] [--config pretrain:peclr,cpu [--set model.name=hourglass]]

PyTorch comes with the `bench` extra (pip install -e '.[bench]'); without it only our side is timed. Compile time
and the first step are excluded; images/s counts both views (2 x batch per step). The PyTorch side runs the same
ResNet v1.5 and projection head (channels-last), NT-Xent (PeCLR: the projection as 2-D points, the view's
rotation and translation undone first) and Adam, with a lighter augmentation in the step (one affine warp by
affine_grid/grid_sample and a colour gain). Ours also runs the config's full augmentation (HSV jitter), the
LARS-wrapped Adam and the online probe, so the comparison leans towards PyTorch. FLOPs per image are XLA's cost
analysis of our step; MFU is against a large float32 matmul measured here. `--dtype bfloat16` times our mixed
precision (config.model.dtype) against PyTorch under `torch.autocast(bfloat16)`. `--config` times one config's step
as it is (its model, batch and size; `--conv`, `--dtype` and `--set key=value` apply), ours only.
"""

import argparse
import ast
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from peclr_jax import configs, loop, pretrain, sharding


def flax_step(model_name, objective, size, batch, conv, width=64, dtype="float32", config=None, overrides=()):
  """(jitted step, state, device batch) for the config pretrain:OBJECTIVE at `size` px with `model_name`; `batch`
  is this process's share. With `config` ("pretrain:peclr,cpu"), that config's model, size and batch instead,
  with `overrides` ("model.name=hourglass", ...) applied."""
  c = configs.load(config or f"pretrain:{objective}")
  c.lock()  # a mistyped key in `overrides` is an error, as on the command line; so is a value of the wrong type
  c.update_from_flattened_dict({k: literal(v) for k, v in (o.split("=", 1) for o in overrides)})
  if not config:
    c.model.name, c.augment.out_size, c.batch_size, c.model.width = model_name, size, batch, width
    c.data.host_size = int(size * 1.25)
  c.model.conv, c.model.dtype = conv, dtype
  size, batch = c.augment.out_size, c.batch_size
  c.total_steps, c.optim.accum_steps = 1000, 1
  model = pretrain.Pretrainer(c.model, c.objective, pretrain.relative_dims(c))
  tx = pretrain.make_optimizer(c, 1000, 100.0)
  mesh = sharding.mesh()
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, size, size, 3)), train=True))(jax.random.key(0))
  state = loop.TrainState(
    jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], tx.init(variables["params"])
  )
  step = jax.jit(pretrain.make_train_step(c, model, tx, jax.random.key(1)), donate_argnums=(0,))
  return step, state, sharding.put_batch(host_batch(batch, c.data.host_size), mesh)


def host_batch(n, side, seed=0):
  """n random host crops (uint8, side x side) with keypoints, as the data pipeline hands them to the step."""
  rng = np.random.default_rng(seed)
  return dict(
    image=rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8),
    uv=rng.uniform(0.3 * side, 0.7 * side, (n, 21, 2)).astype(np.float32),
    K=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
    valid=np.ones((n, 21), bool),
  )


def literal(text):
  """An override's value as --config.key=value reads it: a Python literal (1, 0.5, False, (1, 2)), else the text."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def flops_per_image(compiled, images):
  """XLA's cost analysis of a compiled (or lowered) step, divided by the images one device processes (nan if
  unavailable)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / images if cost else float("nan")


def time_flax(model_name, objective, size, batch, steps, conv, dtype, config=None, overrides=()):
  step, state, b = flax_step(model_name, objective, size, batch, conv, dtype=dtype, config=config, overrides=overrides)
  batch = b["image"].shape[0] // jax.process_count()  # this process's share, whatever set it
  t0 = time.perf_counter()
  compiled = step.lower(state, b).compile()
  compile_s = time.perf_counter() - t0
  flops = flops_per_image(compiled, 2 * batch)
  if conv == "onednn":  # XLA's cost analysis cannot see into the custom calls: count the same step with lax's
    xla_step, xla_state, xla_b = flax_step(
      model_name, objective, size, batch, "xla", dtype=dtype, config=config, overrides=overrides
    )
    flops = flops_per_image(xla_step.lower(xla_state, xla_b), 2 * batch)
  state, m = compiled(state, b)  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, b)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  return 2 * batch / step_s, flops, compile_s, step_s


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch side: the same ResNet v1.5, heads and losses.
# ---------------------------------------------------------------------------------------------------------------
def torch_model(name, proj_hidden=512, proj_out=128):
  import torch
  from torch import nn

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride):
      super().__init__()
      self.f = nn.Sequential(
        nn.Conv2d(cin, c, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c),
      )
      self.skip = (
        nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
        if stride != 1 or cin != c
        else nn.Identity()
      )

    def forward(self, x):
      return torch.relu(self.f(x) + self.skip(x))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride):
      super().__init__()
      self.f = nn.Sequential(
        nn.Conv2d(cin, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, 4 * c, 1, bias=False),
        nn.BatchNorm2d(4 * c),
      )
      self.skip = (
        nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False), nn.BatchNorm2d(4 * c))
        if stride != 1 or cin != 4 * c
        else nn.Identity()
      )

    def forward(self, x):
      return torch.relu(self.f(x) + self.skip(x))

  block, depths = {"resnet18": (Basic, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}[name]
  layers, cin = (
    [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)],
    64,
  )
  for i, d in enumerate(depths):
    for j in range(d):
      layers.append(block(cin, 64 * 2**i, 2 if i and not j else 1))
      cin = 64 * 2**i * block.expansion
  layers += [
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(cin, proj_hidden),
    nn.BatchNorm1d(proj_hidden),
    nn.ReLU(inplace=True),
    nn.Linear(proj_hidden, proj_out),
  ]
  return nn.Sequential(*layers)


def nt_xent_torch(z1, z2, tau=0.5):
  import torch
  import torch.nn.functional as F

  z = F.normalize(torch.cat([z1, z2]), dim=1)
  sim = z @ z.T / tau
  sim.fill_diagonal_(-1e9)
  n = z1.shape[0]
  target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
  return F.cross_entropy(sim, target)


def undo_torch(z, angle, shift):
  """PeCLR's inversion: the projection as 2-D points, the view's shift then rotation undone."""
  import torch

  p = z.view(z.shape[0], -1, 2) - shift[:, None, :]
  c, s = torch.cos(-angle)[:, None], torch.sin(-angle)[:, None]
  return torch.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], -1).flatten(1)


def torch_step(model_name, objective, size, batch, dtype):
  """PyTorch's pretraining step on one fixed host batch, as a function of no arguments."""
  import contextlib

  import torch
  import torch.nn.functional as F

  torch.manual_seed(0)
  net = torch_model(model_name).to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  h = int(size * 1.25)
  images = torch.randint(0, 255, (batch, 3, h, h), dtype=torch.uint8)

  def views(x):
    """One affine warp per view (rotation, scale, shift) to size x size, then a random colour gain."""
    b = x.shape[0]
    angle = (torch.rand(b) * 2 - 1) * math.pi / 4
    scale = 0.8 + 0.2 * torch.rand(b)
    theta = torch.stack(
      [
        torch.stack([scale * torch.cos(angle), -scale * torch.sin(angle), 0.1 * torch.rand(b)], 1),
        torch.stack([scale * torch.sin(angle), scale * torch.cos(angle), 0.1 * torch.rand(b)], 1),
      ],
      1,
    )
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    v = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    v = v * (0.5 + torch.rand(b, 3, 1, 1))
    return ((v / 255 - 0.5) / 0.25).contiguous(memory_format=torch.channels_last), angle, theta[:, :, 2]

  def step():
    (x1, a1, t1), (x2, a2, t2) = views(images), views(images)
    with torch.autocast("cpu", torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext():
      z1, z2 = net(torch.cat([x1, x2])).float().chunk(2)
    if objective == "peclr":
      z1, z2 = undo_torch(z1, a1, t1), undo_torch(z2, a2, t2)
    loss = nt_xent_torch(z1, z2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return step


def time_torch(model_name, objective, size, batch, steps, dtype):
  step = torch_step(model_name, objective, size, batch, dtype)
  step()  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  return 2 * batch * steps / (time.perf_counter() - t0)


def matmul_peak(n=2048, reps=10, dtype=jnp.float32):
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    r = f(a)
  r.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
  p.add_argument("--objectives", nargs="+", default=["simclr", "peclr"])
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--conv", nargs="+", default=["cpu", "onednn"], help="config.model.conv values")
  p.add_argument("--dtype", nargs="+", default=["float32"], help="config.model.dtype values")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--config", help="time this config's step as it is, e.g. pretrain:peclr,cpu (ours only)")
  p.add_argument("--set", nargs="*", default=[], help="with --config: overrides, e.g. model.name=hourglass")
  args = p.parse_args()
  if args.config:
    print(
      f"{args.config} {' '.join(args.set)} on {jax.devices()[0].device_kind}; compile time and the first step excluded"
    )
    print("| conv | dtype | img/s | step (ms) | compile s |")
    print("|---|---|---|---|---|")
    for conv in args.conv:
      for dtype in args.dtype:
        ours, _, compile_s, step_s = time_flax(None, None, None, None, args.steps, conv, dtype, args.config, args.set)
        print(f"| {conv} | {dtype} | {ours:.1f} | {step_s * 1e3:.0f} | {compile_s:.0f} |", flush=True)
    return
  try:
    import torch

    torch_version = None if args.no_torch else torch.__version__
  except ImportError:
    torch_version = None
  peak = matmul_peak()
  print(
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
    f"{jax.devices()[0].device_kind}, torch {torch_version or '-'}; batch {args.batch} x 2 views at "
    f"{args.size} px; float32 matmul peak measured {peak / 1e9:.0f} GFLOP/s"
  )
  print("| model | objective | dtype | conv | ours img/s | PyTorch img/s | ratio | GFLOP/img | MFU | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name in args.models:
    for objective in args.objectives:
      for dtype in args.dtype:
        theirs = (
          time_torch(name, objective, args.size, args.batch, args.steps, dtype) if torch_version else float("nan")
        )
        for conv in args.conv:
          ours, flops, compile_s, _ = time_flax(name, objective, args.size, args.batch, args.steps, conv, dtype)
          print(
            f"| {name} | {objective} | {dtype} | {conv} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | "
            f"{flops / 1e9:.2f} | {ours * flops / peak:.0%} | {compile_s:.0f} |",
            flush=True,
          )


if __name__ == "__main__":
  main()
