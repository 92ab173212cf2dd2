"""Metric writers (process 0 only): JSONL always, TensorBoard through tensorboardX when installed."""

import json
import os
import time

import jax


class Writer:
  def __init__(self, workdir, tensorboard=True):
    self.enabled = jax.process_index() == 0
    self.tb = None
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not self.enabled:
      return
    self.f = open(self.path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:
        pass

  def write(self, step, metrics):
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    self.f.write(json.dumps(row) + "\n")
    self.f.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, float(v), int(step))

  def close(self):
    if self.enabled:
      try:
        self.f.close()
      except OSError:  # a failed flush (full disk) was already reported by write()
        pass
      if self.tb is not None:
        self.tb.close()


def read(workdir):
  """The rows of metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
