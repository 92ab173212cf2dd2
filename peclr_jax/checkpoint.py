"""Orbax checkpoints: the train state, the grain iterator position and the config (JSON), saved together.

The step directory is committed atomically by Orbax (a half-written save is never listed as the latest), saves
are asynchronous and waited for before exit, and no pickle is involved anywhere.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir, keep=3, every=None):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every or 1, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                               item_names=("state", "data", "config"))


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


def export_encoder(path, params, batch_stats, model_config):
  """Writes the encoder alone (params + BatchNorm statistics) and its model config (JSON) for downstream use."""
  import json

  path = os.path.abspath(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, "variables"), {"params": params, "batch_stats": batch_stats}, force=True)
  ckptr.wait_until_finished()
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump(model_config, f, indent=1)


def load_encoder(path):
  """(variables, model config dict) written by `export_encoder`; no code is executed while loading."""
  import json

  path = os.path.abspath(path)
  with open(os.path.join(path, "model.json")) as f:
    model_config = json.load(f)
  return ocp.StandardCheckpointer().restore(os.path.join(path, "variables")), model_config
