"""Data parallelism (sashimi_jax.parallel): who asks for several processes, batch sizes that split, batch placement.

The multi-device and multi-process training runs themselves are in test_train.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sashimi_jax import parallel
from sashimi_jax.config import ConfigError

CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def no_cluster(monkeypatch):
    for key in CLUSTER_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_distributed_args_from_flags_environment_and_schedulers(no_cluster):
    assert parallel.distributed_args() is None  # one process
    assert parallel.distributed_args("10.0.0.1:1234", 2, 1) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert parallel.distributed_args("10.0.0.1:1234", 1, 0) is None  # a group of one is no group
    no_cluster.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    no_cluster.setenv("JAX_NUM_PROCESSES", "4")
    no_cluster.setenv("JAX_PROCESS_ID", "3")
    assert parallel.distributed_args() == {"coordinator_address": "h:1", "num_processes": 4, "process_id": 3}
    assert parallel.distributed_args(process_id=0)["process_id"] == 0  # flags win over the environment
    no_cluster.delenv("JAX_PROCESS_ID")
    with pytest.raises(ConfigError, match="--num_processes and --process_id"):
        parallel.distributed_args()
    for key in CLUSTER_ENV:
        no_cluster.delenv(key, raising=False)
    no_cluster.setenv("SLURM_NTASKS", "2")
    assert parallel.distributed_args() == {}  # JAX reads the rest from SLURM itself


def test_batch_sizes_must_split_over_the_mesh():
    mesh = parallel.make_mesh(jax.devices("cpu")[:1])
    parallel.check_batch_size(3, mesh)
    with pytest.raises(ConfigError, match=r"train.batch_size=0 is not a positive multiple of the 1 device"):
        parallel.check_batch_size(0, mesh)


def test_a_batch_lands_on_the_mesh_and_comes_back():
    mesh = parallel.make_mesh(jax.devices("cpu")[:1])
    batch = np.arange(12, dtype=np.int32).reshape(4, 3)
    placed = parallel.shard_batch(batch, mesh)
    assert placed.sharding == parallel.data_sharding(mesh)
    np.testing.assert_array_equal(parallel.to_host(placed), batch)
    np.testing.assert_array_equal(parallel.local_rows(4, mesh), np.arange(4))
    assert "mesh {'data': 1}" in parallel.describe(mesh)
