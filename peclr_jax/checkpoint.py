"""Orbax checkpoints: the train state, the grain iterator position and the config (JSON), saved together; and
the preemption signal that asks for one.

A step is written under `<step>.orbax-checkpoint-tmp-*` and renamed when complete, so a save cut short (crash,
SIGKILL, full disk) is never listed as the latest and is removed at the next start. Saves are asynchronous and
waited for before exit. No pickle anywhere: arrays via tensorstore, the iterator position and config as JSON.
"""

import contextlib
import os
import signal
import threading

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint; re-running the same command resumes."""

  def __init__(self, signum, step, workdir):
    self.signum, self.step, self.workdir = signum, step, workdir
    at = f"saved a checkpoint at step {step}" if step is not None else "the running runs saved checkpoints"
    super().__init__(f"{signal.Signals(signum).name} received: {at} in {workdir}; run the same command again to resume")


@contextlib.contextmanager
def handling(signals, handler):
  """`handler` for `signals` inside the block, the previous handlers restored after (main thread only: Python
  cannot install handlers elsewhere, so other threads keep the defaults)."""
  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {s: signal.signal(s, handler) for s in signals}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


class Preemption:
  """Turns SIGTERM / SIGINT into a request to checkpoint and stop at the next step boundary.

  One process: Python handlers set a flag (a second SIGINT interrupts at once). Several processes
  (jax.distributed): JAX's own notifier catches SIGTERM and `reached_preemption_sync_point` makes every
  process stop after the same step; SIGINT keeps its default there, as processes cannot agree on it.
  """

  def __enter__(self):
    self.signum, self.multi = None, jax.process_count() > 1
    self._handling = handling(() if self.multi else (signal.SIGTERM, signal.SIGINT), self._handle)
    self._handling.__enter__()
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT == signum:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    return self._handling.__exit__(*exc)

  def reached(self, step):
    """Whether to checkpoint and stop after `step` (every process must call this at every step)."""
    if self.multi:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(int(step)):
        self.signum = self.signum or signal.SIGTERM
    return self.signum is not None


def manager(workdir, keep=3, every=None):
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, save_interval_steps=every or 1, create=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")), options=options, item_names=("state", "data", "config")
  )


def latest_step(workdir):
  """The newest complete checkpoint's step in `workdir` (None if there is none), from the directory listing alone.

  Orbax renames `<step>.orbax-checkpoint-tmp` to `<step>` once the save is complete, so a plain number is a complete
  step; no manager is made (which would synchronise processes: this may run on one process of several).
  """
  path = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  return max(steps, default=None)


def save(mngr, step, state, data_iter, config, force=False):
  args = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore(mngr, abstract_state, data_iter=None, step=None):
  """Restores `step` (default: latest) into the shapes/shardings of `abstract_state`; returns (step, state)."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  args = dict(state=ocp.args.StandardRestore(abstract))
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return step, restored["state"]


def restore_config(workdir, step=None):
  """The config dict saved with a checkpoint (for the downstream step)."""
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')!r}")
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def restore_variables(workdir, step=None):
  """(step, {"params", "batch_stats"}) of a saved train state on this process's first device, read with the shapes
  its metadata records, so the model and optimiser that wrote it need not be rebuilt (evaluation, prediction)."""
  mngr = manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')!r}")
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(mngr.directory) / str(step) / "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  return step, {"params": state["params"], "batch_stats": state["batch_stats"]}


def export_encoder(path, params, batch_stats, model_config):
  """Writes the encoder alone (params + BatchNorm statistics) and its model config (JSON) for downstream use."""
  import json

  path = os.path.abspath(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, "variables"), {"params": params, "batch_stats": batch_stats}, force=True)
  ckptr.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(path, "model.json"), "w") as f:
      json.dump(model_config, f, indent=1)


def load_encoder(path):
  """(variables, model config dict) written by `export_encoder`; no code is executed while loading."""
  import json

  path = os.path.abspath(path)
  with open(os.path.join(path, "model.json")) as f:
    model_config = json.load(f)
  return ocp.StandardCheckpointer().restore(os.path.join(path, "variables")), model_config
