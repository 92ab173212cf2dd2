"""Where a pretraining step's time goes, ours against PyTorch's, by kind of operation, in the same run.

    python benchmarks/profile_step.py [--models resnet18 resnet50] [--objectives peclr] [--size 128] [--batch 32]
                                      [--steps 3] [--conv onednn] [--no-torch]

Ours: the step of benchmarks/train_step.py under `jax.profiler.trace`; each executed XLA thunk is named for its HLO
instruction, which the compiled module maps to a kind (a oneDNN custom call, an XLA convolution, a matrix product, a
fusion holding a reduction, a gather, a reduce-window or select-and-scatter, other fusions, copies). PyTorch's: the
same step as train_step.py's under `torch.profiler`, its top-level operators and autograd functions grouped the same
way. Times are per step, in ms. XLA runs independent thunks on several threads at once, so our rows can sum to more
than the step's wall time (the last row, timed without the profiler).
"""

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import train_step

# HLO opcodes (and a fusion's fused ops) to the rows of the table, first match wins.
KINDS = [
  ("convolution (oneDNN custom call)", ("custom-call",)),
  ("convolution (XLA)", ("convolution",)),
  ("matrix product", ("dot",)),
  ("max-pool and its gradient", ("reduce-window", "select-and-scatter")),
  ("gather (augmentation warp)", ("gather",)),
  ("reduction (BatchNorm statistics, losses)", ("reduce",)),
  ("elementwise (BatchNorm, ReLU, optimiser)", ("fusion", "add", "multiply", "maximum", "select", "compare")),
  ("copy / transpose / layout", ("copy", "transpose", "bitcast", "slice", "concatenate", "pad", "dynamic-slice")),
]
TORCH_KINDS = [  # matched against the lower-cased operator (forward) or autograd function (backward) name
  ("convolution (oneDNN custom call)", ("conv",)),
  ("matrix product", ("addmm", "mm", "matmul", "linear")),
  ("max-pool and its gradient", ("max_pool", "maxpool")),
  ("gather (augmentation warp)", ("grid_sampler", "gridsampler", "affine_grid")),
  ("reduction (BatchNorm statistics, losses)", ("batch_norm", "batchnorm", "softmax", "nll_loss", "norm", "sum")),
  ("elementwise (BatchNorm, ReLU, optimiser)", ("relu", "threshold", "add", "mul", "div", "sub", "optimizer")),
  ("copy / transpose / layout", ("copy", "contiguous", "cat", "clone", "permute", "stack", "view", "t_", "transpose")),
]


def instruction_kinds(hlo_text):
  """Instruction name -> row of KINDS, from the compiled module's text (a fusion by the ops of its computation)."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      current = computations.setdefault(m.group(1), [])
      continue
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\s*\S+)*?\s([a-z][\w\-]*)\(", line)
    if m and current is not None:
      calls = re.findall(r"calls=%?([\w.\-]+)", line)
      current.append((m.group(1), m.group(2), calls))

  def ops(name, seen=()):
    out = set()
    for _, op, calls in computations.get(name, []):
      out.add(op)
      for c in calls:
        if c not in seen:
          out |= ops(c, (*seen, c))
    return out

  kinds = {}
  for insts in computations.values():
    for name, op, calls in insts:
      fused = {op}
      for c in calls:
        fused |= ops(c)
      kinds[name] = next((k for k, keys in KINDS if fused & set(keys)), "other")
  return kinds


def profile_ours(model, objective, size, batch, steps, conv):
  step, state, b = train_step.flax_step(model, objective, size, batch, conv)
  compiled = step.lower(state, b).compile()
  kinds = instruction_kinds(compiled.as_text())
  state, m = compiled(state, b)
  jax.block_until_ready(m)
  t0 = time.perf_counter()  # the wall time without the profiler's overhead
  for _ in range(steps):
    state, m = compiled(state, b)
  jax.block_until_ready(m)
  wall = (time.perf_counter() - t0) / steps
  out = tempfile.mkdtemp(prefix="peclr_profile_")
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for _ in range(steps):
      state, m = compiled(state, b)
    jax.block_until_ready(m)
  trace = json.load(gzip.open(glob.glob(f"{out}/**/perfetto_trace.json.gz", recursive=True)[0]))
  times = collections.Counter()
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and e["name"] in kinds:
      times[kinds[e["name"]]] += e["dur"] / 1e3 / steps
  return times, wall * 1e3


def profile_torch(model, objective, size, batch, steps):
  import torch

  times = collections.Counter()
  step = train_step.torch_step(model, objective, size, batch, "float32")
  step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  wall = (time.perf_counter() - t0) / steps
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  backward = "autograd::engine::evaluate_function: "
  for e in prof.events():
    if e.cpu_parent is not None:  # top-level events only, so nothing counts twice
      continue
    if e.name.startswith("aten::"):
      name = e.name[len("aten::") :]
    elif e.name.startswith(backward):
      name = e.name[len(backward) :]
    elif e.name.startswith("Optimizer.step"):
      name = "optimizer"
    else:
      continue
    kind = next((k for k, keys in TORCH_KINDS if any(key in name.lower() for key in keys)), "other")
    times[kind] += e.cpu_time_total / 1e3 / steps
  return times, wall * 1e3


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
  p.add_argument("--objectives", nargs="+", default=["peclr"])
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--conv", default="onednn")
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  for model in args.models:
    for objective in args.objectives:
      ours, ours_wall = profile_ours(model, objective, args.size, args.batch, args.steps, args.conv)
      theirs, theirs_wall = (collections.Counter(), float("nan"))
      if not args.no_torch:
        theirs, theirs_wall = profile_torch(model, objective, args.size, args.batch, args.steps)
      print(f"\n{model} {objective}, batch {args.batch} x 2 views, {args.size} px, conv={args.conv}; ms per step")
      print("| kind | ours | PyTorch |")
      print("|---|---|---|")
      for kind in [k for k, _ in KINDS] + ["other"]:
        if ours[kind] or theirs[kind]:
          print(f"| {kind} | {ours[kind]:.0f} | {theirs[kind]:.0f} |")
      print(f"| sum of the rows | {sum(ours.values()):.0f} | {sum(theirs.values()):.0f} |")
      print(f"| **step (wall)** | **{ours_wall:.0f}** | **{theirs_wall:.0f}** |", flush=True)


if __name__ == "__main__":
  main()
