"""Device mesh and batch placement: one `data` axis, batch sharded, state replicated (reference §8.2-8.3).

Multi-host: `init_distributed()` calls `jax.distributed.initialize` only when asked (flag or PECLR_DISTRIBUTED=1),
before any device is touched; each process then feeds its share of the global batch and
`jax.make_array_from_process_local_data` assembles the global array.
"""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def init_distributed(enable=None, coordinator=None, num_processes=None, process_id=None):
  """Initialises jax.distributed when enabled (explicitly or by PECLR_DISTRIBUTED=1); a no-op otherwise."""
  if enable is None:
    enable = os.environ.get("PECLR_DISTRIBUTED", "0") == "1"
  if enable:
    # With no arguments JAX auto-detects the cluster (Cloud TPU, SLURM, Kubernetes).
    kw = {k: v for k, v in dict(coordinator_address=coordinator, num_processes=num_processes,
                                process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kw)
  return enable


def mesh(devices=None):
  """A 1-D mesh (axis `data`, compiler-propagated Auto sharding) over `devices`, default every device."""
  devices = np.array(jax.devices() if devices is None else devices)
  try:
    return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  except (AttributeError, TypeError):  # older jax: Mesh is Auto by default
    return jax.sharding.Mesh(devices, ("data",))


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
    raise ValueError(f"config.batch_size={global_batch} must be divisible by the {n} devices of the mesh")
