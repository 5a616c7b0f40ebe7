"""Data parallelism over every device (all processes): the current JAX form of a pmapped step.

A 1-axis mesh ('data',) spans all devices, process by process. The global batch is sharded along
its leading axis (`P('data')`), the train state is replicated (`P()`), and the step is compiled
once by `jax.jit` with these shardings. Because the loss is the mean over the *global* batch, its
gradient is (1/B) Σ_devices Σ_{i ∈ shard} ∇ℓ_i: XLA's SPMD partitioner computes each device's
partial sum and inserts the cross-device all-reduce itself, so the replicated update equals the
single-device update up to floating-point summation order (tested against 1 device).

Multi-host: every process runs the same program on its own local shard of the global batch
(`shard_batch` → `jax.make_array_from_process_local_data`); process p owns rows
[p·B/P, (p+1)·B/P), which is what `diffjax.data.batches(..., process_index=p)` yields.
"""

from __future__ import annotations

import socket
import time

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.training.state import PyTree
from diffjax.training.step import TrainStep

DATA_AXIS = "data"


def wait_for_coordinator(address: str, timeout_s: float, every_s: float = 10.0) -> None:
    """Poll the coordinator's TCP port until it accepts a connection, printing a line every
    `every_s` seconds; TimeoutError naming the address after `timeout_s` (JAX itself would wait and
    then abort the process natively, with no Python error)."""
    host, _, port = address.rpartition(":")
    start = last = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(every_s, 2.0)):
                return
        except OSError:
            now = time.monotonic()
            if now - start >= timeout_s:
                raise TimeoutError(
                    f"No coordinator answered at {address} within {timeout_s:.0f} s. Start process 0 "
                    "(it runs the coordinator) first, check the address and port, or raise the "
                    "timeout (distributed.timeout_s)."
                ) from None
            if now - last >= every_s:
                print(f"waiting for the coordinator at {address} ({now - start:.0f} s)", flush=True)
                last = now
            time.sleep(0.2)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: float = 300.0,
) -> bool:
    """Call `jax.distributed.initialize` when a multi-process run is configured (num_processes
    > 1); a no-op returning False otherwise. Must run before any other JAX call. CPU processes
    talk through gloo collectives. Processes other than 0 first wait (at most timeout_s, with
    progress lines) for the coordinator, so that a coordinator that never starts is a clear error."""
    if num_processes is None or num_processes <= 1:
        return False
    if coordinator_address is None or process_id is None:
        raise ValueError(
            "Multi-process training needs coordinator_address ('host:port' of process 0) and "
            f"process_id (0..{num_processes - 1}) as well as num_processes."
        )
    try:  # CPU cross-process collectives; the option is absent where gloo is the only choice
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):
        pass
    if process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
        initialization_timeout=int(timeout_s),
    )  # fmt: skip
    return True


def make_data_mesh(devices=None) -> Mesh:
    """1-axis mesh ('data',) over `devices` (default: all devices of all processes), ordered by
    process so that process p's devices hold rows [p·B/P, (p+1)·B/P) of the global batch."""
    devices = list(jax.devices() if devices is None else devices)
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)
    order = [d.process_index for d in mesh.devices.flat]
    if order != sorted(order):  # make_mesh reordered devices across processes: keep ours
        mesh = Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    return mesh


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along 'data'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Host (or single-device) values → global arrays replicated on every device of `mesh`. Every
    process must pass the same values (e.g. parameters initialised from the same seed)."""
    sharding = replicated_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    return jax.tree.map(put, tree)


def shard_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """This process's rows (B/P, ...) of every leaf → global arrays (B, ...) sharded along
    'data'. `None` leaves (e.g. no labels) stay None."""
    sharding = data_sharding(mesh)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"shard_batch: the local batch has shape {x.shape}; its leading size must be a "
                f"multiple of this process's {local_devices} devices. Choose a global batch size "
                f"divisible by the {mesh.devices.size} devices."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)


def compile_train_step(train_step: TrainStep, mesh: Mesh, donate: bool = True) -> TrainStep:
    """`jax.jit(train_step)` with the state replicated, the batch sharded along 'data' and the
    metrics replicated; `donate` reuses the old state's buffers for the new one (the input state
    must not be used after the call)."""
    state_sharding, batch_sharding = replicated_sharding(mesh), data_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, state_sharding),
        donate_argnums=(0,) if donate else (),
    )
