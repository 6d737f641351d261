"""Multi-device execution with JAX's SPMD machinery (Mesh, NamedSharding, jit): no hand-written
communication. One mesh axis, "data":

- amortized / semi-amortized training is data-parallel: parameters and optimizer state are
  replicated, every minibatch is split across devices (XLA inserts the gradient all-reduce);
- a per-datapoint table (non-amortized training, local fits) is sharded by rows: row i lives
  on one device, and minibatch gathers/scatters stay correct because they are ordinary
  indexing under jit.

On several hosts, call `jax.distributed.initialize()` first (the experiment scripts do with
--distributed); `jax.devices()` then spans every host.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def data_mesh(num_devices: int) -> Mesh:
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but only {len(devices)} JAX devices are visible "
                         f"({devices[0].platform}); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                         "simulates N devices")
    return Mesh(np.array(devices[:num_devices]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def by_rows(mesh: Mesh) -> NamedSharding:
    """Leading axis split across the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of `tree` (leading N axis, N divisible by the device count) by rows."""
    size = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        if leaf.ndim == 0 or leaf.shape[0] % size:
            raise ValueError(f"cannot shard an array of shape {leaf.shape} by rows over {size} devices")
    return jax.device_put(tree, by_rows(mesh))


def data_parallel(step: Callable, mesh: Mesh) -> Callable:
    """step(key, state, batch) whose batch (every leaf) is split across the mesh by rows."""

    def sharded_step(key, state, batch):
        batch = jax.tree.map(lambda b: jax.lax.with_sharding_constraint(b, by_rows(mesh)), batch)
        return step(key, state, batch)

    return sharded_step
