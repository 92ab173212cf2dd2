"""Device mesh and batch placement: one `data` axis, batch sharded, state replicated (reference §8.2-8.3).

Multi-host: `init_distributed()` starts `jax.distributed` before any device is touched, when asked
(`--distributed=on`) or when a multi-process launcher is detected (`auto`: JAX_COORDINATOR_ADDRESS set, an srun
step of several tasks, a TPU pod's worker list). The mesh then spans every process's devices; each process feeds
its block of the global batch and `jax.make_array_from_process_local_data` assembles the global array.
"""

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from peclr_jax.errors import ConfigError

MODES = ("auto", "on", "off")


def detect(env=None):
  """The multi-process launcher this process runs under: "slurm", "tpu", or None (an explicit coordinator, flag or
  JAX_COORDINATOR_ADDRESS, is one of `arguments`)."""
  env = os.environ if env is None else env
  if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:  # inside `srun` with several tasks, not the batch step
    return "slurm"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # more than one host in the TPU slice
    return "tpu"
  return None


def arguments(coordinator=None, num_processes=None, process_id=None, env=None):
  """jax.distributed.initialize's arguments from the flags, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; those still unknown are left to JAX's cluster detection."""
  env = os.environ if env is None else env
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
  kw = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  try:
    return {k: v if k == "coordinator_address" else int(v) for k, v in kw.items() if v is not None}
  except ValueError:
    raise ValueError(
      f"JAX_NUM_PROCESSES={num_processes!r} / JAX_PROCESS_ID={process_id!r}: expected integers"
    ) from None


def init_distributed(mode="auto", coordinator=None, num_processes=None, process_id=None, timeout=300):
  """Initialises jax.distributed for `mode` (auto | on | off); returns whether it did.

  Arguments left None are read from the environment (`arguments`) or detected by JAX (Cloud TPU metadata, SLURM
  variables). On CPU the cross-process collectives go through gloo.
  """
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {MODES}")
  kw = arguments(coordinator, num_processes, process_id)
  if mode == "off" or (mode == "auto" and not kw and detect() is None):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # for CPU devices; GPU / TPU have their own
  jax.distributed.initialize(initialization_timeout=timeout, **kw)
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def mesh(devices=None):
  """A 1-D mesh (axis `data`, compiler-propagated Auto sharding) over `devices`, default every device."""
  devices = np.array(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(m):
  return NamedSharding(m, P())


def batch_sharded(m):
  return NamedSharding(m, P("data"))


def put_batch(batch, m):
  """This process's slice of the global batch (dict of numpy arrays) -> global jax arrays sharded on `data`."""
  s = batch_sharded(m)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(s, np.asarray(x)), batch)


def check_batch_size(global_batch, m):
  n = m.devices.size
  if global_batch % n:
    raise ConfigError(f"config.batch_size={global_batch}: expected a multiple of the mesh's {n} devices")
