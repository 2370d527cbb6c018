"""Data parallelism: the process group, one device mesh over all devices, and batch placement.

One jitted program runs on a :class:`jax.sharding.Mesh` over *all* devices of all hosts with a single
axis ``"data"``: batches are split along it, parameters and optimizer state are replicated, and XLA
inserts the gradient all-reduce. The same code serves 1 CPU, N simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), 8 GPUs, or several hosts.

Multi-host runs start with :func:`maybe_initialize_distributed`; every host then computes the same
global batch index and loads only the rows of its own devices (:func:`shard_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sashimi_jax.config import ConfigError

DATA_AXIS = "data"
_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_args(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments asked for by flags or the environment, or None for one process.

    Precedence: explicit arguments, then ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``,
    then a cluster JAX detects on its own (SLURM with several tasks, Open MPI with several ranks: empty dict).
    """
    env = {k: os.environ.get(k) for k in _ENV}
    addr = coordinator_address or env["JAX_COORDINATOR_ADDRESS"]
    nproc = num_processes if num_processes is not None else env["JAX_NUM_PROCESSES"]
    pid = process_id if process_id is not None else env["JAX_PROCESS_ID"]
    if addr:
        if nproc is None or pid is None:
            raise ConfigError(
                "a coordinator address was given without the number of processes and this process's id; "
                "set --num_processes and --process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)."
            )
        if int(nproc) == 1:
            return None
        return {"coordinator_address": addr, "num_processes": int(nproc), "process_id": int(pid)}
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}
    return None


def maybe_initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Call ``jax.distributed.initialize`` when flags or the environment ask for several processes.

    Must run before anything touches a JAX device. CPU collectives use gloo unless
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise. Returns True when a process group was started.
    """
    kwargs = distributed_args(coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: ``jax.devices()``, every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer state and scalar outputs: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (batch) axis split over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """Raise ConfigError unless the global batch splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size < 1 or batch_size % n:
        raise ConfigError(
            f"{what}={batch_size} is not a positive multiple of the {n} device(s) in the mesh; "
            f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})."
        )


def local_rows(global_batch: int, mesh: Mesh) -> np.ndarray:
    """Indices (int64, sorted) of the global batch rows held by this process's devices."""
    index_map = data_sharding(mesh).addressable_devices_indices_map((global_batch,))
    rows = set()
    for (sl,) in index_map.values():
        rows.update(range(*sl.indices(global_batch)))
    return np.asarray(sorted(rows), dtype=np.int64)


def shard_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a global batch (every host passes the same array) on the mesh, split along axis 0.

    Each process transfers only the rows of its own devices (``jax.make_array_from_process_local_data``).
    Args:
      batch: NumPy (B, ...) with B a multiple of the device count.
    Returns:
      a global ``jax.Array`` of shape (B, ...) sharded over ``"data"``.
    """
    sharding = data_sharding(mesh)
    rows = local_rows(batch.shape[0], mesh)
    if len(rows) and rows[-1] - rows[0] + 1 != len(rows):  # this host's devices are not adjacent in the mesh
        return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])
    local = np.ascontiguousarray(batch[rows[0] : rows[-1] + 1]) if len(rows) else batch[:0]
    return jax.make_array_from_process_local_data(sharding, local, batch.shape)


def shard_local_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a batch of which each process holds its own rows (B / processes of them, e.g. read from its own
    data shard) on the mesh as one global ``jax.Array`` (B, ...) split over ``"data"``."""
    shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(data_sharding(mesh), local, shape)


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or fully addressable) array as NumPy on this host, without cross-host traffic."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_data(0))


def tree_to_host(tree: Any) -> Any:
    """:func:`to_host` on every leaf of a pytree of replicated arrays."""
    return jax.tree.map(to_host, tree)


def describe(mesh: Mesh) -> str:
    """One line about the processes, devices and mesh, e.g. for the start of a training log."""
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{mesh.devices.size} device(s) [{', '.join(kinds)}] on {jax.default_backend()}; "
        f"mesh {dict(mesh.shape)} (batch split over '{DATA_AXIS}', parameters replicated)"
    )
