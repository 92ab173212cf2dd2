"""Weak scaling of the pretraining step: step time at 1, 2 and 4 devices for a fixed per-device batch, and the same
step run by 2 processes joined by jax.distributed (one device each, gloo on CPU).

    python benchmarks/scaling.py [--devices 1 2 4] [--per-device 16] [--model resnet18] [--width 16] [--size 64]
                                 [--conv auto]

Each setting runs in its own process(es) (on CPU the devices are emulated with
XLA_FLAGS=--xla_force_host_platform_device_count=N, which share this machine's cores, so CPU numbers show the
overhead of sharding, not a speed-up). Compile time and the first step are excluded. Efficiency = step time at 1
device / step time at N (1.0 is perfect weak scaling). GFLOP/img is XLA's cost analysis of one device's program.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def worker(args):
  import jax

  if args.processes > 1:
    from peclr_jax import sharding

    sharding.init_distributed("on", args.coordinator, args.processes, args.process_id)
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import train_step  # noqa: E402 - the same step as the throughput benchmark

  local = args.per_device * jax.local_device_count()
  step, state, batch = train_step.flax_step(args.model, "peclr", args.size, local, args.conv, width=args.width)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  repl = NamedSharding(mesh, P())
  state = jax.tree.map(lambda x: jax.make_array_from_process_local_data(repl, np.asarray(x)), state)
  compiled = step.lower(state, batch).compile()
  flops = train_step.flops_per_image(compiled, 2 * args.per_device)  # one device's program
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  if jax.process_index() == 0:
    print(
      json.dumps(
        dict(
          devices=jax.device_count(),
          processes=jax.process_count(),
          flops=flops,
          step_s=(time.perf_counter() - t0) / args.steps,
        )
      ),
      flush=True,
    )


def run(args, devices, processes):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes}",
    JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
  )
  base = [
    sys.executable,
    os.path.abspath(__file__),
    "--worker",
    "--per-device",
    str(args.per_device),
    "--model",
    args.model,
    "--width",
    str(args.width),
    "--size",
    str(args.size),
    "--steps",
    str(args.steps),
    "--conv",
    args.conv,
  ]
  if processes > 1:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    base += ["--processes", str(processes), "--coordinator", f"127.0.0.1:{port}"]
  procs = [
    subprocess.Popen([*base, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, text=True)
    for i in range(processes)
  ]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  return json.loads([line for line in outs[0].splitlines() if line.startswith("{")][-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4])
  p.add_argument("--per-device", type=int, default=16)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--conv", default="auto", help="config.model.conv")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker(args)
  print(
    f"PeCLR step, {args.model} width {args.width}, {args.size} px, conv {args.conv}, {args.per_device} images per "
    f"device (x 2 views), {os.cpu_count()} cores"
  )
  print("| devices | processes | global batch | step s | images/s | efficiency | GFLOP/img |")
  print("|---|---|---|---|---|---|---|")
  base = None
  for devices, processes in [*((d, 1) for d in args.devices), (2, 2)]:
    r = run(args, devices, processes)
    base = base or r["step_s"]
    print(
      f"| {devices} | {processes} | {args.per_device * devices} | {r['step_s']:.3f} | "
      f"{2 * args.per_device * devices / r['step_s']:.0f} | {base / r['step_s']:.2f} | {r['flops'] / 1e9:.2f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
