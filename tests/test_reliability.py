"""Faults, each against an uninterrupted run of the same config: SIGTERM / SIGINT (checkpoint, clean exit, resume),
SIGKILL at a random step (restart reproduces the run, data order included), determinism, a save cut short, failed
writes (checkpoint and metrics), a corrupt image mid-run, and no pickle anywhere."""

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from peclr_jax import checkpoint, configs, inputs, log, loop, pretrain
from peclr_jax.data import synthetic
from peclr_jax.errors import TrainingError, WriteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10  # 2.5 epochs of the 64-record set: the restarts cross epoch boundaries (reshuffles)
OVERRIDES = {"total_steps": STEPS, "log_every": 1, "ckpt_every": 1}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, 64, 16, 0, progress=False)
  return root


def config(data_root, **overrides):
  c = configs.load("pretrain:peclr,tiny")
  c.data.root = data_root
  c.update({**OVERRIDES, **overrides})
  return c


def command(workdir, data_root, *extra):
  return [
    sys.executable,
    "-m",
    "peclr_jax.pretrain",
    "--config=pretrain:peclr,tiny",
    f"--workdir={workdir}",
    f"--config.data.root={data_root}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    *extra,
  ]


def encoder_leaves(state):
  return jax.tree.leaves(
    jax.device_get({"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]})
  )


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
  """The uninterrupted run: losses by step and the final encoder."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  r = pretrain.train(config(data_root), workdir, progress=False)
  return dict(workdir=workdir, loss={m["step"]: m["loss"] for m in r.metrics}, encoder=encoder_leaves(r.state))


def assert_reproduces(workdir, reference):
  """Every step's loss (the last logged, after restarts) and the exported encoder equal the uninterrupted run's."""
  loss = {row["step"]: row["loss"] for row in log.read(workdir)}
  assert loss == reference["loss"]
  variables, _ = checkpoint.load_encoder(os.path.join(workdir, "encoder"))
  for a, b in zip(jax.tree.leaves(variables), reference["encoder"]):
    np.testing.assert_array_equal(a, b)


def wait_for_step(proc, workdir, step, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    rows = log.read(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    if rows and rows[-1]["step"] >= step:
      assert proc.poll() is None, "the run ended before it could be interrupted"
      return
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(0.02)
  raise TimeoutError(f"step {step} not reached in {timeout} s")


def run_to_end(workdir, data_root):
  r = subprocess.run(command(workdir, data_root), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return r.stdout


def test_same_config_and_seed_give_the_same_run(data_root, reference, tmp_path):
  r = pretrain.train(config(data_root), str(tmp_path), progress=False)
  assert {m["step"]: m["loss"] for m in r.metrics} == reference["loss"]
  for a, b in zip(encoder_leaves(r.state), reference["encoder"]):
    np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_exits_cleanly_and_resumes(data_root, reference, tmp_path):
  w = str(tmp_path)
  proc = subprocess.Popen(command(w, data_root), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    wait_for_step(proc, w, 3)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
  step = int(re.search(r"stopped: SIGTERM received: saved a checkpoint at step (\d+)", out).group(1))
  assert 3 <= step < STEPS and "Traceback" not in out
  assert checkpoint.latest_step(w) == step  # written and waited for before the exit
  assert not glob.glob(os.path.join(w, "checkpoints", "*tmp*"))
  assert f"resumed from the checkpoint of step {step}" in run_to_end(w, data_root)
  assert_reproduces(w, reference)


def test_sigkill_at_a_random_step_then_restart_reproduces_the_run(data_root, reference, tmp_path):
  w, kill_at = str(tmp_path), random.randint(2, STEPS - 3)
  proc = subprocess.Popen(command(w, data_root), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    wait_for_step(proc, w, kill_at)
    proc.send_signal(signal.SIGKILL)  # no handler, no final save: possibly mid-way through an async save
    proc.wait(timeout=60)
  finally:
    proc.kill()
  kept = checkpoint.latest_step(w)
  out = run_to_end(w, data_root)
  if kept:
    assert f"resumed from the checkpoint of step {kept}" in out, f"killed at step >= {kill_at}"
  assert_reproduces(w, reference)


def test_sigint_checkpoints_and_resumes_in_process(data_root, reference, tmp_path):
  w = str(tmp_path)

  def interrupt():
    while not (os.path.exists(os.path.join(w, "metrics.jsonl")) and log.read(w) and log.read(w)[-1]["step"] >= 2):
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

  before = signal.getsignal(signal.SIGINT)
  threading.Thread(target=interrupt, daemon=True).start()
  with pytest.raises(checkpoint.Preempted, match="SIGINT received: saved a checkpoint at step") as e:
    pretrain.train(config(data_root), w, progress=False)
  assert e.value.signum == signal.SIGINT and checkpoint.latest_step(w) == e.value.step >= 2
  assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
  pretrain.train(config(data_root), w, progress=False)
  assert_reproduces(w, reference)


def test_a_save_cut_short_is_never_the_latest(reference, tmp_path):
  w = str(tmp_path / "w")
  shutil.copytree(reference["workdir"], w)
  partial = os.path.join(w, "checkpoints", f"{STEPS + 5}.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(partial, "state"))  # what a kill during a save leaves behind
  with open(os.path.join(partial, "state", "half_written"), "wb") as f:
    f.write(b"\0" * 100)
  assert checkpoint.latest_step(w) == STEPS
  assert checkpoint.manager(w).latest_step() == STEPS  # as a restarted run opens it, which removes the leftover
  for _ in range(200):  # (in the background)
    if not os.path.exists(partial):
      break
    time.sleep(0.05)
  assert not os.path.exists(partial)
  assert checkpoint.restore_config(w)["total_steps"] == STEPS


def test_a_failed_checkpoint_write_is_one_clear_error(data_root, tmp_path):
  """A file-size limit makes every checkpoint write fail as a full disk would (EFBIG instead of ENOSPC)."""
  import shlex

  w = str(tmp_path)
  limited = f"trap '' XFSZ; ulimit -f 100; exec {shlex.join(command(w, data_root))}"  # files up to 100 KiB
  r = subprocess.run(["bash", "-c", limited], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]  # Orbax's writer threads log their tracebacks above it
  assert last.startswith(f"error: could not write the checkpoint of step 1 under {w}/checkpoints"), last
  assert "File too large" in last and last.endswith(f"Last complete checkpoint: none in {w}")
  assert checkpoint.latest_step(w) is None


def test_too_little_free_space_fails_before_the_save(data_root, tmp_path, monkeypatch):
  import collections
  import shutil as real

  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(loop, "shutil", type("fake", (), {"disk_usage": lambda path: usage(2**30, 2**30, 2**19)}))
  with pytest.raises(
    WriteError,
    match=r"checkpoint of step 1 under .*: 0\.5 MiB free, about .* MiB needed\. "
    r"Last complete checkpoint: none",
  ):
    pretrain.train(config(data_root), str(tmp_path), progress=False)
  assert real.disk_usage(str(tmp_path)).free > 2**19 and not glob.glob(str(tmp_path / "checkpoints" / "*"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_for_metrics_is_one_clear_error(data_root, tmp_path):
  os.symlink("/dev/full", tmp_path / "metrics.jsonl")  # every write fails with ENOSPC
  with pytest.raises(
    TrainingError,
    match=r"could not write .*metrics.jsonl: .*No space left on device\. "
    r"Last complete checkpoint: none",
  ):
    pretrain.train(config(data_root), str(tmp_path), progress=False)


def test_corrupt_image_mid_run_stops_with_its_path_and_skip_corrupt_continues(data_root, reference, tmp_path):
  root = str(tmp_path / "data")
  shutil.copytree(data_root, root)
  c = config(root, ckpt_every=5)
  src = inputs.source(c.data)
  it = iter(inputs.dataset(c, src))
  index = [next(it)["index"] for _ in range(3)][2][5]  # a record of the batch of step 3
  path = src[int(index)]["image_path"]
  with open(path, "r+b") as f:
    f.truncate(300)
  w = str(tmp_path / "w")
  with pytest.raises(TrainingError) as e:
    pretrain.train(c, w, progress=False)
  msg = str(e.value)
  assert path in msg and "(batch of step 3); saved a checkpoint at step 2" in msg and "skip_corrupt=True" in msg
  assert checkpoint.latest_step(w) == 2
  c.data.skip_corrupt = True
  r = pretrain.train(c, w, progress=False)  # resumes at step 3 and replaces the image
  assert int(r.state.step) == STEPS and r.metrics[0]["step"] == 3
  assert r.metrics[0]["skipped_images"] == 1 and r.metrics[-1]["skipped_images"] >= 1
  assert r.metrics[0]["loss"] != reference["loss"][3]  # step 3 trained on the replacement record


def test_no_pickle_anywhere(reference):
  """No module can unpickle, and every file a run writes is JSON, text, PNG, TensorBoard or tensorstore data."""
  for path in glob.glob(os.path.join(ROOT, "peclr_jax", "**", "*.py"), recursive=True):
    with open(path) as f:
      text = f.read()
    for bad in ("import pickle", "cPickle", "cloudpickle", "import dill", "allow_pickle=True", "torch.load"):
      assert bad not in text, f"{path}: {bad}"
  for path in glob.glob(os.path.join(reference["workdir"], "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        head = f.read(2)
      assert not (len(head) == 2 and head[0] == 0x80 and head[1] <= 5), f"{path} looks like a pickle"
