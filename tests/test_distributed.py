"""Multi-host: two processes on localhost (CPU, gloo, jax.distributed) train as one 2-device process does, and
stop together on SIGTERM; launcher detection."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from peclr_jax import checkpoint, configs, log, pretrain, sharding
from peclr_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"total_steps": 8, "log_every": 1, "ckpt_every": 4}


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, 64, 16, 0, progress=False)
  return root


def start(workdir, data_root):
  """Two pretraining processes joined by jax.distributed on localhost, one CPU device each."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    "-m",
    "peclr_jax.pretrain",
    "--config=pretrain:hybrid,tiny",
    f"--workdir={workdir}",
    f"--config.data.root={data_root}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    "--distributed=on",
    f"--coordinator=127.0.0.1:{free_port()}",
    "--num_processes=2",
  ]
  return [
    subprocess.Popen(
      [*cmd, f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for i in range(2)
  ]


def finish(procs, timeout=300):
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:  # never leave a process behind, whatever failed
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def test_two_processes_equal_one_process_through_a_preemption(data_root, tmp_path):
  """2 processes x 1 device (jax.distributed, each loading its half of every batch) = 1 process x 2 devices, to
  1e-5 (losses, norms, exported encoder), with a SIGTERM to both mid-run: they stop after the same step with a
  checkpoint (each process's iterator position in it), and the restart finishes the run.
  The hybrid objective exercises every loss and head."""
  workdir = tmp_path / "multi"
  procs = start(workdir, data_root)
  try:
    while not (
      os.path.exists(workdir / "metrics.jsonl") and log.read(str(workdir)) and log.read(str(workdir))[-1]["step"] >= 2
    ):
      assert all(p.poll() is None for p in procs), finish(procs)
      time.sleep(0.02)
    for p in procs:  # as SLURM or a TPU maintenance event signals every host
      p.send_signal(signal.SIGTERM)
  finally:
    outs = finish(procs)
  stops = [re.search(r"stopped: SIGTERM received: saved a checkpoint at step (\d+)", out) for out in outs]
  assert all(p.returncode == 128 + signal.SIGTERM for p in procs) and all(stops), outs
  step = int(stops[0].group(1))
  assert int(stops[1].group(1)) == step < OVERRIDES["total_steps"]
  assert sorted(os.listdir(workdir / "checkpoints" / str(step) / "data")) == [
    "commit_success.txt",
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]

  procs = start(workdir, data_root)
  outs = finish(procs)
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
  assert f"resumed from the checkpoint of step {step}" in outs[0]
  assert "done: step 8" in outs[0] and "done:" not in outs[1]  # process 0 reports, both finish

  c = configs.load("pretrain:hybrid,tiny")
  c.data.root = data_root
  c.update(OVERRIDES)
  one = pretrain.train(c, str(tmp_path / "single"), progress=False, devices=jax.devices()[:2])
  multi = {row["step"]: row for row in log.read(str(workdir))}  # process 0's; the last row of a step wins
  assert sorted(multi) == [m["step"] for m in one.metrics] == list(range(1, 9))
  for a in one.metrics:
    for k in ("loss", "peclr", "relative", "probe_l1", "grad_norm", "param_norm"):
      np.testing.assert_allclose(multi[a["step"]][k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']}: {k}")
  variables, _ = checkpoint.load_encoder(str(workdir / "encoder"))
  want = jax.device_get({"params": one.state.params["encoder"], "batch_stats": one.state.batch_stats["encoder"]})
  flat_want, flat_got = jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(variables)
  assert len(flat_want) == len(flat_got)
  for (path, a), b in zip(flat_want, flat_got):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
  "env, want",
  [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, None),  # not a launcher: an argument (below)
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"}, "slurm"),
    ({"SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}, None),  # the batch script itself, before srun
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
  ],
)
def test_launcher_detection(env, want):
  assert sharding.detect(env) == want


def test_flags_override_the_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  assert sharding.arguments(env=env) == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
  assert sharding.arguments("h:1", 8, 0, env=env) == dict(coordinator_address="h:1", num_processes=8, process_id=0)
  assert sharding.arguments(env={}) == {}  # left to JAX's cluster detection
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='four'"):
    sharding.arguments(env={"JAX_NUM_PROCESSES": "four"})


def test_off_does_nothing_and_a_bad_mode_is_named():
  assert not sharding.init_distributed("off", coordinator="127.0.0.1:1")
  with pytest.raises(ValueError, match="'maybe'"):
    sharding.init_distributed("maybe")
