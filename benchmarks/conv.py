"""A ResNet step's convolutions one by one: forward, input gradient and weight gradient, XLA's convolution against
the CPU formulation (peclr_jax/models/conv.py, `--config.model.conv=cpu`), oneDNN's through jax.ffi
(peclr_jax/models/onednn.py, `--config.model.conv=onednn`) and, with the `bench` extra, PyTorch's (`F.conv2d`,
channels-last; oneDNN on a CPU).

    python benchmarks/conv.py [--model resnet18|resnet50] [--batch 64] [--size 128] [--conv xla cpu onednn]
                              [--no-torch]

Prints GFLOP/s per layer shape (ms in brackets) and the milliseconds summed over the network (each shape times its
count in the network).
"""

import argparse
import time

import jax
import numpy as np
from jax import lax

from peclr_jax.models import conv, onednn

DN = ("NHWC", "HWIO", "NHWC")


def bench(f, *args, n=5):
  jax.block_until_ready(f(*args))
  t0 = time.perf_counter()
  for _ in range(n):
    r = f(*args)
  jax.block_until_ready(r)
  return (time.perf_counter() - t0) / n


def torch_times(batch, h, cin, cout, k, s):
  """PyTorch's seconds for the forward pass, the input gradient and the weight gradient of the same convolution."""
  import torch
  import torch.nn.functional as F

  cl = torch.channels_last
  x = torch.randn(batch, cin, h, h).contiguous(memory_format=cl).requires_grad_(cin != 3)
  w = (torch.randn(cout, cin, k, k) * 0.1).contiguous(memory_format=cl).requires_grad_()

  def bench_torch(f, n=5):
    f()
    t0 = time.perf_counter()
    for _ in range(n):
      f()
    return (time.perf_counter() - t0) / n

  with torch.no_grad():
    fwd = bench_torch(lambda: F.conv2d(x, w, stride=s, padding=k // 2))
  y = F.conv2d(x, w, stride=s, padding=k // 2)
  g = torch.randn_like(y)
  dx = bench_torch(lambda: torch.autograd.grad(y, x, g, retain_graph=True)) if cin != 3 else 0.0
  dw = bench_torch(lambda: torch.autograd.grad(y, w, g, retain_graph=True))
  return fwd, dx, dw


def layers(model, size):
  """(input side, in, out, kernel, stride, count) of the network's convolutions: the stem, then the four stages."""
  s = size // 4
  if model == "resnet18":
    return [
      (size, 3, 64, 7, 2, 1),
      (s, 64, 64, 3, 1, 4),
      (s, 64, 128, 3, 2, 1),
      (s, 64, 128, 1, 2, 1),
      (s // 2, 128, 128, 3, 1, 3),
      (s // 2, 128, 256, 3, 2, 1),
      (s // 2, 128, 256, 1, 2, 1),
      (s // 4, 256, 256, 3, 1, 3),
      (s // 4, 256, 512, 3, 2, 1),
      (s // 4, 256, 512, 1, 2, 1),
      (s // 8, 512, 512, 3, 1, 3),
    ]
  out = [(size, 3, 64, 7, 2, 1)]  # ResNet-50 v1.5: 1x1 -> 3x3 (strided) -> 1x1, projection shortcut per stage
  cin, side = 64, s
  for i, blocks in enumerate((3, 4, 6, 3)):
    c, stride = 64 * 2**i, 1 if i == 0 else 2
    out += [
      (side, cin, c, 1, 1, 1),
      (side, c, c, 3, stride, 1),
      (side // stride, c, 4 * c, 1, 1, 1),
      (side, cin, 4 * c, 1, stride, 1),
    ]  # the first block
    side //= stride
    out += [(side, 4 * c, c, 1, 1, blocks - 1), (side, c, c, 3, 1, blocks - 1), (side, c, 4 * c, 1, 1, blocks - 1)]
    cin = 4 * c
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--conv", nargs="+", default=["xla", "cpu", "onednn"], choices=["xla", "cpu", "onednn"])
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  impls = {"xla": lax.conv_general_dilated, "cpu": conv.conv_general_dilated, "onednn": conv.onednn_or_cpu}
  if "onednn" in args.conv and onednn.available() is not None:
    print(f"oneDNN unavailable: {onednn.available()}")
    args.conv.remove("onednn")
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      with_torch = False
  sides = list(args.conv) + ["PyTorch"] * with_torch
  print(
    f"{args.model} convolutions, batch {args.batch}, {args.size} px, {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s); GFLOP/s (ms), {' / '.join(sides)}"
  )
  print("| layer | count | forward | input grad | weight grad |")
  print("|---|---|---|---|---|")
  total = np.zeros((3, len(sides)))
  for h, cin, cout, k, s, count in layers(args.model, args.size):
    pad = [(k // 2, k // 2)] * 2
    x = jax.random.normal(jax.random.key(0), (args.batch, h, h, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
    times = np.zeros((3, len(sides)))
    for j, impl in enumerate(impls[c] for c in args.conv):
      f = lambda x, w, impl=impl: impl(x, w, (s, s), pad, dimension_numbers=DN)  # noqa: B023
      g = jax.random.normal(jax.random.key(2), f(x, w).shape)
      times[0, j] = bench(jax.jit(f), x, w)
      times[1, j] = bench(jax.jit(lambda x, w, g, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0]), x, w, g)
      times[2, j] = bench(jax.jit(lambda x, w, g, f=f: jax.vjp(lambda w: f(x, w), w)[1](g)[0]), x, w, g)
    if with_torch:
      times[:, -1] = torch_times(args.batch, h, cin, cout, k, s)
    if cin == 3:
      times[1] = 0.0  # the image needs no gradient
    total += count * times
    flops = 2 * np.prod(g.shape) * k * k * cin

    cells = [" / ".join(f"{flops / v / 1e9:.0f} ({v * 1e3:.1f})" for v in t) if t[0] else "-" for t in times]
    print(f"| {h}px {cin}->{cout} {k}x{k}/{s} | {count} | {' | '.join(cells)} |")
  cells = " | ".join(" / ".join(f"{v * 1e3:.0f}" for v in t) + " ms" for t in total)
  print(f"| **network** | | {cells} |")
  print(
    "sum over forward and both gradients: " + ", ".join(f"{n} {v * 1e3:.0f} ms" for n, v in zip(sides, total.sum(0)))
  )


if __name__ == "__main__":
  main()
