"""Data parallelism and fully sharded data parallelism (FSDP, ZeRO-3) over every device of every process.

Mesh. `make_mesh(data=D, fsdp=F)` arranges the N = D·F devices, process by process, as a D × F grid with
axes ('data', 'fsdp'); `make_data_mesh()` is the 1-axis ('data',) mesh of pure data parallelism (F = 1).

Batch. Every leaf (B, ...) of the global batch is split along its leading axis over *all* devices,
('data', 'fsdp') together (`P(('data', 'fsdp'))`): each device gets B/N distinct rows.

State. Each array of the `TrainState` (params, Adam moments, EMA, post-hoc EMAs) with at least
`FSDP_MIN_SIZE` = 2¹² entries is split along 'fsdp' on its largest axis whose size F divides, e.g. a
conv kernel (3, 3, C_in, C_out) → (3, 3, C_in, C_out/F) per device (`P(None, None, None, 'fsdp')`);
smaller arrays, scalars (step, Adam's count), the PRNG key and arrays with no divisible axis are
replicated (`P()`). The rule depends only on the shape, so the gradient, both Adam moments and the
EMA of a parameter share its layout (`state_shardings` derives the whole state's layout in one map).
Across 'data' everything is replicated: per device the state costs ≈ 1/F of its size.

Step. The step is compiled once by `jax.jit` with these in/out shardings (state donated) and traced
under `jax.set_mesh(mesh)`, where `make_train_step` pins the parameters the loss sees to `P()`: XLA
all-gathers each parameter for the forward and backward pass, reduces the gradient across the mesh
(on GPU a reduce-scatter onto the fsdp shards; XLA:CPU emits all-reduce + slice), and runs the
optimizer update and the EMA on the shards. Because the loss is the mean over the *global* batch,
its gradient is (1/B) Σ_devices Σ_{i ∈ shard} ∇ℓ_i, so every layout gives the single-device update
up to floating-point summation order (tested against 1 device).

Multi-host: every process runs the same program on its own local rows of the global batch
(`shard_batch` → `jax.make_array_from_process_local_data`); process p owns rows
[p·B/P, (p+1)·B/P), which is what `diffjax.data.batches(..., process_index=p)` yields.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.training.state import PyTree

if TYPE_CHECKING:
    from diffjax.training.step import TrainStep

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
FSDP_MIN_SIZE = 2**12  # arrays with fewer entries stay replicated: gathering them costs more than they weigh


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


def _process_ordered(devices) -> list:
    devices = list(jax.devices() if devices is None else devices)
    return sorted(devices, key=lambda d: (d.process_index, d.id))


def _grid_mesh(devices: list, shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    """`jax.make_mesh` over `devices`, unless it reorders them across processes: the row-major order
    of the grid must stay process-major so that process p's devices hold its batch rows."""
    types = (AxisType.Auto,) * len(names)
    mesh = jax.make_mesh(shape, names, types, devices=devices)
    order = [d.process_index for d in mesh.devices.flat]
    if order != sorted(order):
        mesh = Mesh(np.asarray(devices).reshape(shape), names, axis_types=types)
    return mesh


def make_data_mesh(devices=None) -> Mesh:
    """1-axis mesh ('data',) over `devices` (default: all devices of all processes), ordered by
    process so that process p's devices hold rows [p·B/P, (p+1)·B/P) of the global batch: pure data
    parallelism, the state replicated (the fsdp = 1 case of `make_mesh`)."""
    devices = _process_ordered(devices)
    return _grid_mesh(devices, (len(devices),), (DATA_AXIS,))


def make_mesh(data: int | None = None, fsdp: int = 1, devices=None) -> Mesh:
    """2-axis mesh ('data', 'fsdp') of shape (data, fsdp) over `devices` (default: all devices of all
    processes, ordered by process). data=None: N // fsdp. The state is split `fsdp` ways
    (`state_shardings`) and replicated `data` ways; the batch is split over all data·fsdp devices.
    ValueError (before anything is compiled) if data·fsdp is not the number of devices."""
    devices = _process_ordered(devices)
    n = len(devices)
    if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"fsdp={fsdp!r} does not divide the {n} devices: choose fsdp among {divisors} (the "
            "parameters are split fsdp ways, the devices form a (n // fsdp) × fsdp grid; config "
            "field parallel.fsdp)."
        )
    data = n // fsdp if data is None else data
    if data * fsdp != n:
        raise ValueError(f"a data × fsdp = {data} × {fsdp} mesh needs {data * fsdp} devices; there are {n}.")
    return _grid_mesh(devices, (data, fsdp), (DATA_AXIS, FSDP_AXIS))


def fsdp_size(mesh: Mesh) -> int:
    """The number of shards of the state: the size of the mesh's 'fsdp' axis (1 without one)."""
    return int(mesh.shape.get(FSDP_AXIS, 1))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over: ('data', 'fsdp'), or ('data',) for a data mesh."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices: `P('data')`, or `P(('data', 'fsdp'))`."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """The layout of one state array of `shape` over `fsdp` shards: 'fsdp' on its largest axis whose
    size fsdp divides (the first of equal ones), if it has ≥ min_size entries; `P()` (replicated)
    otherwise, and always for fsdp = 1 and scalars."""
    if fsdp <= 1 or not shape or int(np.prod(shape)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):  # stable: first of equal sizes
        if shape[axis] % fsdp == 0:
            return P(*(FSDP_AXIS if a == axis else None for a in range(len(shape))))
    return P()


def state_shardings(state: PyTree, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> PyTree:
    """A `NamedSharding` for every array of `state` (a `TrainState`, or any pytree of arrays or
    `jax.ShapeDtypeStruct`s): `fsdp_spec` of its shape (module docstring). Parameters, their
    gradients, Adam moments and EMAs get the same layout because they have the same shapes; the step,
    Adam's count and the key are replicated. All replicated on a mesh without an 'fsdp' axis."""
    fsdp = fsdp_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp, min_size)), state)


def _identity(tree):
    return tree


def _relayout(tree: PyTree, shardings: PyTree) -> PyTree:
    """Global arrays moved on device to `shardings` (all-gather / slice). One module-level function,
    so each layout compiles once (a fresh lambda per call would recompile every time)."""
    return jax.jit(_identity, out_shardings=shardings)(tree)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host (or single-device) values → global arrays laid out by `shardings` (a matching tree of
    shardings). Every process must pass the same values (e.g. parameters initialised from the same
    seed); each builds only its own devices' shards."""

    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and x.is_fully_addressable is False:  # a global array: reshard on device
            return _relayout(x, sharding)
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    return jax.tree.map(put, tree, shardings)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Host (or single-device) values → global arrays replicated on every device of `mesh`. Every
    process must pass the same values (e.g. parameters initialised from the same seed)."""
    sharding = replicated_sharding(mesh)
    return place(tree, jax.tree.map(lambda _: sharding, tree))


def shard_state(state: PyTree, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> PyTree:
    """`state` laid out on `mesh` by `state_shardings` (fsdp-split arrays, the rest replicated)."""
    return place(state, state_shardings(state, mesh, min_size))


def gather(tree: PyTree, mesh: Mesh) -> PyTree:
    """Global arrays (e.g. fsdp-split EMA parameters) → replicated copies on every device of `mesh`
    (an all-gather on device; every process then holds every value, e.g. to sample or to save)."""
    sharding = replicated_sharding(mesh)
    return _relayout(tree, jax.tree.map(lambda _: sharding, tree))


def shard_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """This process's rows (B/P, ...) of every leaf → global arrays (B, ...) split over all devices
    (`data_sharding`). `None` leaves (e.g. no labels) stay None."""
    sharding = data_sharding(mesh)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"shard_batch: the local batch has shape {x.shape}; its leading size must be a "
                f"multiple of this process's {local_devices} devices. Choose a global batch size "
                f"divisible by the {mesh.devices.size} devices (data × fsdp = "
                f"{' × '.join(str(mesh.shape[a]) for a in batch_axes(mesh))})."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)


def compile_train_step(
    train_step: TrainStep, mesh: Mesh, donate: bool = True, state_sharding: PyTree | None = None
) -> TrainStep:
    """`jax.jit(train_step)` with the state laid out by `state_sharding` (a tree of shardings matching
    the state, e.g. `state_shardings(state, mesh)`; None: replicated) on input and output, the batch
    split over all devices (`data_sharding`) and the metrics replicated. The step is traced under
    `jax.set_mesh(mesh)`, so that `make_train_step` gathers the fsdp-split parameters for the loss
    (module docstring). `donate` reuses the old state's buffers for the new one (the input state must
    not be used after the call)."""
    replicated, batch_sharding = replicated_sharding(mesh), data_sharding(mesh)
    state_sharding = replicated if state_sharding is None else state_sharding
    jitted = jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,) if donate else (),
    )

    return CompiledStep(jitted, mesh)


class CompiledStep:
    """A jitted train step that is traced and run under `jax.set_mesh(mesh)`: `step(state, batch)`,
    and `step.lower(state, batch)` for XLA's view (`.compile().memory_analysis()`, `.as_text()`)."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, state, batch):
        with jax.set_mesh(self.mesh):
            return self.jitted(state, batch)

    def lower(self, state, batch):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(state, batch)
