"""The convolutions of a ResNet-18 step at 128 px, one by one: forward, input gradient and weight gradient, with XLA's
weight gradient against the chunked one (peclr_jax/models/conv.py, `--config.model.conv_grad=chunked`).

    python benchmarks/conv_grad.py [--batch 64] [--size 128]

Prints GFLOP/s per layer shape and the milliseconds summed over the network (each shape times its count).
"""

import argparse
import time

import jax
import numpy as np
from jax import lax

from peclr_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")


def bench(f, *args, n=5):
  jax.block_until_ready(f(*args))
  t0 = time.perf_counter()
  for _ in range(n):
    r = f(*args)
  jax.block_until_ready(r)
  return (time.perf_counter() - t0) / n


def layers(size):
  """(input side, in, out, kernel, stride, count) of ResNet-18's convolutions (stem, then the four stages)."""
  s = size // 4
  return [(size, 3, 64, 7, 2, 1), (s, 64, 64, 3, 1, 4), (s, 64, 128, 3, 2, 1), (s, 64, 128, 1, 2, 1),
          (s // 2, 128, 128, 3, 1, 3), (s // 2, 128, 256, 3, 2, 1), (s // 2, 128, 256, 1, 2, 1),
          (s // 4, 256, 256, 3, 1, 3), (s // 4, 256, 512, 3, 2, 1), (s // 4, 256, 512, 1, 2, 1),
          (s // 8, 512, 512, 3, 1, 3)]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=128)
  args = p.parse_args()
  print(f"ResNet-18 convolutions, batch {args.batch}, {args.size} px, {jax.device_count()} {jax.devices()[0].platform} "
        "device(s); GFLOP/s (ms)")
  print("| layer | count | forward | input grad | weight grad, XLA | weight grad, chunked | chunks |")
  print("|---|---|---|---|---|---|---|")
  total = np.zeros(4)
  for h, cin, cout, k, s, count in layers(args.size):
    pad = [(k // 2, k // 2)] * 2
    x = jax.random.normal(jax.random.key(0), (args.batch, h, h, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
    plain = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)  # noqa: B023
    chunked = lambda x, w: conv.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)  # noqa: B023
    g = jax.random.normal(jax.random.key(2), plain(x, w).shape)
    flops = 2 * np.prod(g.shape) * k * k * cin
    times = [bench(jax.jit(plain), x, w),
             bench(jax.jit(lambda x, w, g: jax.vjp(lambda x: plain(x, w), x)[1](g)[0]), x, w, g),  # noqa: B023
             bench(jax.jit(lambda x, w, g: jax.vjp(lambda w: plain(x, w), w)[1](g)[0]), x, w, g),  # noqa: B023
             bench(jax.jit(lambda x, w, g: jax.vjp(lambda w: chunked(x, w), w)[1](g)[0]), x, w, g)]  # noqa: B023
    if cin == 3:
      times[1] = 0.0  # the image needs no gradient
    total += count * np.array(times)
    cells = " | ".join(f"{flops / t / 1e9:.0f} ({t * 1e3:.1f})" if t else "-" for t in times)
    chunks = conv.num_chunks(args.batch, int(np.prod(g.shape[1:3])))
    print(f"| {h}px {cin}->{cout} {k}x{k}/{s} | {count} | {cells} | {chunks} |")
  print(f"| **network** | | {total[0] * 1e3:.0f} ms | {total[1] * 1e3:.0f} ms | {total[2] * 1e3:.0f} ms | "
        f"{total[3] * 1e3:.0f} ms | |")


if __name__ == "__main__":
  main()
