"""The host loop shared by the trainers: steps, measurements checked on the host, logs, checkpoints, stops.

`run` takes a jitted `step_fn(state, batch) -> (state, measurements)` and steps it from state.step + 1 to the last
step. Every `log_every` steps the measurements go to metrics.jsonl / TensorBoard (plus images_per_s); every
`ckpt_every` steps and at the end, state + data iterator + config are saved. Measurements are fetched and checked
before each log and save: NaN/inf stops with the step and the last good checkpoint named. SIGTERM / SIGINT save the
current step and raise checkpoint.Preempted; a corrupt image saves the last finished step and names the file; a
failed write names the path.
"""

import dataclasses
import os
import shutil
import time

import flax
import jax
import numpy as np
import optax
from tqdm import tqdm

from peclr_jax import checkpoint, log, sharding
from peclr_jax.errors import DataError, TrainingError, WriteError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


@dataclasses.dataclass
class Result:
  """What a trainer returns: the final state, the logged rows, the workdir."""

  state: TrainState
  metrics: list
  workdir: str


def make_workdir(workdir):
  """Creates `workdir` and checks that this process can write there; TrainingError otherwise."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")  # one per process: they may share a disk
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise TrainingError(f"workdir {workdir!r} is not writable: {e}") from e


class Checkpoints:
  """One run's checkpoint writes: asynchronous, each waited for before the next, a free-space check before each,
  and errors that name the step and the last complete checkpoint."""

  def __init__(self, mngr, workdir, state, data_iter, config):
    self.mngr, self.workdir, self.data_iter, self.config = mngr, workdir, data_iter, config
    self.saved = int(state.step)
    self.need = sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1 + 2**20  # one more until the oldest goes

  def kept(self):
    step = checkpoint.latest_step(self.workdir)
    return f"{'none' if step is None else f'step {step}'} in {self.workdir}"

  def write_failed(self, what, e):
    return WriteError(f"could not write {what}: {e}. Last complete checkpoint: {self.kept()}")

  def wait(self):
    """Waits for the latest save; an asynchronous write error surfaces here, whatever its type."""
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self.write_failed(f"the checkpoint of step {self.saved} under {self.mngr.directory}", e) from e

  def save(self, step, state, now=False):
    self.wait()  # the previous save first, so that a failure names its own step
    what = f"the checkpoint of step {step} under {self.mngr.directory}"
    free = shutil.disk_usage(self.workdir).free
    if free < self.need:  # a full disk fails here, cleanly, rather than half-way through Orbax's writer threads
      raise self.write_failed(what, f"{free / 2**20:.1f} MiB free, about {self.need / 2**20:.1f} MiB needed")
    try:
      checkpoint.save(self.mngr, step, state, self.data_iter, self.config)
    except Exception as e:  # noqa: BLE001
      raise self.write_failed(what, e) from e
    self.saved = step
    if now:
      self.wait()

  def close(self):
    try:
      self.mngr.wait_until_finished()  # never leave an async save behind; its error, if any, was raised already
    except Exception:  # noqa: BLE001
      pass


def finite(m, step, ckpts):
  """The step's measurements on the host; TrainingError if any is NaN/inf.

  param_norm is taken after the update, so a finite row also vouches for the state about to be saved.
  """
  m = jax.device_get(m)
  bad = [k for k, v in m.items() if not np.isfinite(v)]
  if bad:
    raise TrainingError(
      f"non-finite {', '.join(bad)} at step {step} (loss={m['loss']}); stopped without saving. "
      f"Last good checkpoint: {ckpts.kept()}"
    )
  return m


def save_now(ckpts, step, m, state):
  """Checkpoints the finished `step` now (a stop between ckpt_every steps); says what was kept."""
  if step > ckpts.saved:
    finite(m, step, ckpts)
    ckpts.save(step, state, now=True)
    return f"saved a checkpoint at step {step}"
  return f"last checkpoint: step {ckpts.saved}" if ckpts.saved > 0 else "no checkpoint yet"


def run(
  step_fn,
  state,
  data_iter,
  config,
  mesh,
  mngr,
  workdir,
  steps,
  *,
  keys,
  stop_at=None,
  desc="",
  progress=True,
  views=1,
  postfix=(),
):
  """Steps from state.step + 1 to `steps` (or `stop_at`); returns (state, logged rows).

  `keys` are the batch entries the step takes; images_per_s counts `views` images per example; `postfix` maps
  measurement names to the formats shown on the progress bar.
  """
  start = int(state.step)
  last = steps if stop_at is None else min(steps, stop_at)
  writer = log.Writer(workdir)
  ckpts = Checkpoints(mngr, workdir, state, data_iter, config)
  bar = tqdm(
    total=steps, initial=start, desc=desc, disable=not progress or jax.process_index() != 0, dynamic_ncols=True
  )
  rows, m, skipped = [], None, 0
  t_log, n_log = time.perf_counter(), 0
  try:
    with checkpoint.Preemption() as stop:
      for step in range(start + 1, last + 1):
        try:
          record = next(data_iter)
        except DataError as e:  # the iterator still points at this batch, so a resume retries it
          # A save needs every process, and the others are not stopping: with several, the last one is kept.
          kept = (
            save_now(ckpts, step - 1, m, state) if jax.process_count() == 1 else f"last checkpoint: step {ckpts.saved}"
          )
          raise TrainingError(
            f"{e} (batch of step {step}); {kept}. Fix or remove the file, or set "
            f"--config.data.skip_corrupt=True, and run again to resume"
          ) from None
        skipped += int(np.sum(record.get("skipped", 0)))
        state, m = step_fn(state, sharding.put_batch({k: v for k, v in record.items() if k in keys}, mesh))
        n_log += config.batch_size

        is_log = step % config.log_every == 0 or step == last
        is_ckpt = step % config.ckpt_every == 0 or step == last
        if is_log or is_ckpt:
          m = finite(m, step, ckpts)
        if is_log:
          now = time.perf_counter()
          m["images_per_s"] = views * n_log / (now - t_log)
          if config.data.get("skip_corrupt", False):
            m["skipped_images"] = skipped  # corrupt images this process replaced since the (re)start
          t_log, n_log = now, 0
          try:
            writer.write(step, m)
          except OSError as e:
            raise ckpts.write_failed(writer.path, e) from e
          rows.append({"step": step, **{k: float(v) for k, v in m.items()}})
          bar.set_postfix({k: format(m[k], f) for k, f in dict(postfix).items()})
        if is_ckpt:
          ckpts.save(step, state)
        bar.update(1)

        if stop.reached(step):
          save_now(ckpts, step, m, state)
          raise checkpoint.Preempted(stop.signum, step, workdir)
    ckpts.wait()
  finally:
    bar.close()
    writer.close()
    ckpts.close()
  return state, rows
