"""Orbax checkpoints of a `TrainState`: periodic asynchronous saves, keep-last-N, verified
restore with fallback, restore onto any mesh and layout (replicated or fsdp-split), and a SIGTERM
flag for preemption.

Layout: `<directory>/<step>/{state, meta}`; `state` is the pytree (Orbax `StandardSave`), `meta`
a JSON record with the step and a checksum per array. A checkpoint is *good* if Orbax restores it
and the restored arrays reproduce the checksums; a bad newest checkpoint is reported with a
`CorruptCheckpointWarning`, moved to `<directory>_corrupt/`, and the next older one is used.
The step number is the data position (the batch of step s is a pure function of s) and the PRNG
key is part of the state, so a resumed run continues bit-exactly.

All processes call `save`/`restore` (Orbax coordinates multi-process writes: every process writes
its shards, process 0 the metadata).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax
from jax.experimental import multihost_utils

from diffjax.training.state import TrainState


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be restored or failed its checksum; an older one is used."""


class CorruptCheckpointError(RuntimeError):
    """No checkpoint in the directory can be restored."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the earlier ones are intact."""


# -- checksums ---------------------------------------------------------------------------------
def _as_uint32_words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector (1- and 2-byte types zero-extended, 8-byte types
    split into two words)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size in (1, 2):
        words = lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16)
        return words.astype(jnp.uint32).ravel()
    return lax.bitcast_convert_type(x, jnp.uint32).ravel()


@jax.jit
def _checksums(tree) -> list[jax.Array]:
    """Per leaf (Σ w_i, Σ i·w_i) mod 2³² over its uint32 words w_i (i = 1, 2, ...): exact modular
    arithmetic, so the result does not depend on sharding or reduction order."""

    def one(x):
        w = _as_uint32_words(jnp.asarray(x))
        i = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
        return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * i, dtype=jnp.uint32)])

    return [one(x) for x in jax.tree.leaves(tree)]


def _host_checksum(x: np.ndarray) -> list[int]:
    """`_checksums` of one host array in numpy: uint64 arithmetic wraps mod 2⁶⁴, so the sums taken
    mod 2³² are exact."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    size = x.dtype.itemsize
    words = x.view({1: np.uint8, 2: np.uint16}.get(size, np.uint32)).ravel().astype(np.uint64)
    i = np.arange(1, words.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return [int(np.sum(words) & 0xFFFFFFFF), int(np.sum(words * i) & 0xFFFFFFFF)]


def tree_checksums(tree) -> list[list[int]]:
    """JSON-able checksums of every array in `tree` (flatten order); see `_checksums`. Arrays this
    process holds whole are summed on the host (no compilation: restoring a network took seconds
    of compiling the per-leaf program); a tree with arrays split over processes uses `_checksums`."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return [_host_checksum(np.asarray(jax.random.key_data(x) if _is_key(x) else x)) for x in leaves]
    return [[int(v) for v in np.asarray(c)] for c in _checksums(tree)]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _sharding_of(x, default):
    """Where a restored array goes: the target leaf's sharding, `default` for a host array."""
    return getattr(x, "sharding", None) or default


# -- preemption --------------------------------------------------------------------------------
class SigtermFlag:
    """Context manager: while active, SIGTERM sets `.requested` instead of killing the process, so
    the loop can save and stop at the next step boundary. Only installed in the main thread of a
    single-process run; multi-process runs use JAX's preemption sync point (`Checkpointer.
    reached_preemption`), which watches SIGTERM itself and makes all processes agree on a step."""

    def __init__(self, enabled: bool = True):
        self.enabled = (
            enabled
            and jax.process_count() == 1
            and threading.current_thread() is threading.main_thread()
        )
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)
        return False


# -- the manager -------------------------------------------------------------------------------
class Checkpointer:
    """Orbax `CheckpointManager` for `TrainState`s in `directory`.

    save_every: `save(step, ...)` writes when step % save_every == 0 (or `force`); keep: number of
    checkpoints kept (oldest deleted first); async_save: write in a background thread after the
    arrays have been copied to host memory (the device buffers may then be donated)."""

    def __init__(
        self, directory: str | os.PathLike, *, save_every: int, keep: int = 3,
        async_save: bool = True,
    ):  # fmt: skip
        if save_every < 1 or keep < 1:
            raise ValueError(f"need save_every >= 1 and keep >= 1, got {save_every}, {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self._options = ocp.CheckpointManagerOptions(  # the save interval is decided in `save`
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        listing = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        partial = [name for name in listing if "tmp" in name]  # Orbax's unfinished saves
        if partial and jax.process_index() == 0:
            warnings.warn(
                f"{self.directory}: discarding {len(partial)} half-written checkpoint(s) {partial} of an "
                "interrupted save; the complete checkpoints are kept.", CorruptCheckpointWarning,
                stacklevel=2,
            )  # fmt: skip
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=self._options, item_names=("state", "meta")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """All processes agree that a preemption notice arrived and `step` is the step to save
        at (always False in a single-process run)."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def save(
        self, step: int, state: TrainState, *, force: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:  # fmt: skip
        """Save `state` (after `step` updates) if step is on the interval or `force`; returns
        whether a save was started. `metadata`: extra JSON-able fields (e.g. the config)."""
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False  # already saved (e.g. the final step was also an interval step)
        meta = {
            "step": step,
            "checksums": tree_checksums(state),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "time": time.time(),
            **dict(metadata or {}),
        }
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._writing(step):
            return self._manager.save(step, args=args, force=True)

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turn a failed write (disk full, permissions, …) into a CheckpointWriteError that says where,
        how much room is left and which checkpoints are intact."""
        try:
            yield
        except Exception as err:
            free = shutil.disk_usage(os.path.dirname(self.directory) or ".").free
            what = f"checkpoint step {step}" if step is not None else "a pending checkpoint"
            raise CheckpointWriteError(
                f"Could not write {what} to {self.directory}: {type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0][:200]} ({free / 2**20:.0f} MiB free on that disk). "
                f"The earlier checkpoints {self.all_steps()} are intact; free some space (or choose "
                "another work directory) and rerun to resume from the newest of them."
            ) from err

    def restore(self, step: int, target: TrainState) -> TrainState:
        """The checkpoint at `step`, placed like `target`: a state of concrete arrays or of
        `jax.ShapeDtypeStruct`s whose shardings say where every array goes, on any mesh — e.g.
        written 8-way fsdp-split and read onto 1 device, or written replicated and read split
        (`parallel.state_shardings`); every process reads only its own shards. A leaf without a
        sharding (a host array) goes to the default device. The values are bit-identical whatever
        the layouts (the checksums are layout-independent and are checked). Raises
        CorruptCheckpointError if it cannot be read or fails its checksums."""
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=_sharding_of(x, default)),
            target,
        )  # fmt: skip
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = restored.state, restored.meta
        except Exception as err:  # Orbax/tensorstore raise many types for damaged files
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be read: "
                f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
            ) from err
        if not isinstance(meta, Mapping) or "checksums" not in meta:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self.directory} has no readable metadata."
            )
        if tree_checksums(state) != meta["checksums"]:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self.directory}: the restored arrays do not match "
                "the checksums recorded at save time (damaged files)."
            )
        return state

    def restore_latest(self, target: TrainState) -> TrainState | None:
        """The newest good checkpoint placed like `target`, or None if there is none. Bad newer
        checkpoints are warned about and moved to `<directory>_corrupt/` (so that their step
        numbers can be saved again); if every checkpoint is bad, CorruptCheckpointError."""
        steps = self.all_steps()
        bad = []
        for step in reversed(steps):
            try:
                state = self.restore(step, target)
            except CorruptCheckpointError as err:
                warnings.warn(
                    f"{err} Falling back to the previous checkpoint.",
                    CorruptCheckpointWarning, stacklevel=2,
                )  # fmt: skip
                bad.append(step)
                continue
            self._quarantine(bad)
            return state
        if bad:
            raise CorruptCheckpointError(
                f"None of the checkpoints {steps} in {self.directory} can be restored. Move the "
                "directory away to start from scratch."
            )
        return None

    def _quarantine(self, steps: list[int]) -> None:
        if not steps:
            return
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            target_dir = self.directory + "_corrupt"
            os.makedirs(target_dir, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst = os.path.join(target_dir, f"{step}-{int(time.time())}")
                if os.path.exists(src):
                    shutil.move(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("diffjax_checkpoint_quarantine")
        self._manager.close()
        self._manager = self._open()

    def metadata(self, step: int | None = None) -> dict | None:
        """The JSON record saved with checkpoint `step` (default: the newest), without restoring the
        arrays; None when there is no checkpoint or its record cannot be read."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception:  # a damaged record: `restore` reports it when the state is needed
            return None
        return dict(restored.meta) if isinstance(restored.meta, Mapping) else None

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        with self._writing(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
