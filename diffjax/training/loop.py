"""The training loop: resume, step, log, checkpoint, stop cleanly.

    state ← newest good checkpoint in workdir, else the given initial state
    for s = state.step, ..., num_steps − 1:
        state ← train_step(state, batch_s)          (compiled once, data/fsdp parallel, donated)
        stop with NonFiniteError if the step was not finite (nothing saved)
        log every log_every; hooks every their period; checkpoint every checkpoint_every
        on SIGTERM: save and return (preempted=True)
    save the final state

The state lives on `mesh` as `state_shardings` lays it out (replicated on a data mesh; arrays split
along 'fsdp' on a `make_mesh(fsdp=F)` mesh), and checkpoints are restored into that layout whatever
mesh wrote them.

Batches come from `batches(start_step)`, an iterator of this process's local shards of the
global batches at steps start_step, start_step + 1, ... (e.g. `diffjax.data.batches`), so a resumed
run reads exactly the batches the interrupted one would have read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from diffjax.training.checkpoint import Checkpointer, SigtermFlag
from diffjax.training.logging import MetricsLogger
from diffjax.training.parallel import (
    FSDP_MIN_SIZE,
    compile_train_step,
    make_data_mesh,
    place,
    shard_batch,
    state_shardings,
)
from diffjax.training.state import TrainState
from diffjax.training.step import TrainStep
from diffjax.training.workdir import RunMismatchError, check_resumable

Hook = tuple[int, Callable[[int, TrainState], None]]


class NonFiniteError(FloatingPointError):
    """The loss or a gradient was NaN/Inf; the update was not applied. `.step` is the failing
    step, `.metrics` its metrics and `.state` the (unchanged) state before it."""

    def __init__(self, step: int, metrics: Mapping[str, Any], state: TrainState, checkpoint):
        self.step, self.metrics, self.state = step, dict(metrics), state
        where = f"the last good checkpoint (step {checkpoint})" if checkpoint is not None else (
            "no checkpoint (none was written yet)"
        )
        super().__init__(
            f"Non-finite loss or gradient at step {step} (loss={metrics.get('loss')}, "
            f"grad_norm={metrics.get('grad_norm')}); the update was not applied and nothing was "
            f"saved. The work directory keeps {where}. Lower the learning rate, tighten "
            "clip_norm, check the batch for NaN/Inf, or use float32 compute, then rerun to "
            "resume from that checkpoint."
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """workdir: checkpoints (`workdir/checkpoints`) and logs; num_steps: total updates of the run
    (counting resumed ones); checkpoint_every / keep: checkpoint period and number kept;
    log_every: metrics period; async_checkpoints: write checkpoints in the background;
    handle_sigterm: save and stop on SIGTERM; metadata: JSON-able record stored with every
    checkpoint (e.g. the experiment config); its entry "run" (`workdir.run_record`) is checked
    against the checkpoints already in workdir before anything is restored."""

    workdir: str
    num_steps: int
    checkpoint_every: int = 1000
    keep: int = 3
    log_every: int = 100
    async_checkpoints: bool = True
    handle_sigterm: bool = True
    metadata: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.num_steps < 0 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "TrainConfig: need num_steps >= 0, log_every >= 1 and checkpoint_every >= 1; got "
                f"{self.num_steps}, {self.log_every}, {self.checkpoint_every}."
            )


@dataclasses.dataclass
class TrainResult:
    """state: final state (on `mesh`, laid out by `state_shardings`); step: updates done;
    start_step: where this run began (> 0 if resumed); preempted: stopped early on SIGTERM (after
    saving)."""

    state: TrainState
    step: int
    start_step: int
    preempted: bool
    last_metrics: dict


def train(
    config: TrainConfig,
    train_step: TrainStep,
    state: TrainState,
    batches: Callable[[int], Iterator[Any]],
    *,
    mesh: Mesh | None = None,
    hooks: Sequence[Hook] = (),
    on_start: Callable[[int], None] | None = None,
    fsdp_min_size: int = FSDP_MIN_SIZE,
) -> TrainResult:
    """Run (or resume) training to `config.num_steps`; see the module docstring.

    train_step: the pure `make_train_step` function (compiled here for `mesh`); state: the
    initial state (host or single-device arrays, identical on every process); mesh: default
    `make_data_mesh()` (data parallel, state replicated); `make_mesh(fsdp=F)` splits the state F ways
    (arrays of ≥ fsdp_min_size entries, `state_shardings`); hooks: (period,
    fn(step, state)) called after every period-th step on every process, e.g. to write sample
    grids (write files from process 0 only; the state's buffers are donated to the next step,
    so take what is needed before returning); on_start(start_step): called once the checkpoints have
    been checked and restored, before the first step (e.g. to record the run's config)."""
    mesh = make_data_mesh() if mesh is None else mesh
    layout = state_shardings(state, mesh, fsdp_min_size)
    state = place(state, layout)
    ckpt = Checkpointer(
        os.path.join(config.workdir, "checkpoints"), save_every=config.checkpoint_every,
        keep=config.keep, async_save=config.async_checkpoints,
    )  # fmt: skip
    run = (config.metadata or {}).get("run")
    if run is not None:  # a different run's checkpoints are reported by field, never restored
        try:
            check_resumable(ckpt.metadata(), run, config.workdir)
        except RunMismatchError:
            ckpt.close()
            raise
    state = ckpt.restore_latest(state) or state
    start = int(state.step)
    if on_start is not None:
        on_start(start)
    step_fn = compile_train_step(train_step, mesh, state_sharding=layout)
    logger = MetricsLogger(config.workdir, num_steps=config.num_steps, start_step=start)
    save_meta = dict(config.metadata or {})
    step, preempted, m = start, False, {}
    try:
        with SigtermFlag(config.handle_sigterm) as sigterm:
            data = batches(start)
            batch = shard_batch(next(data), mesh) if start < config.num_steps else None
            while step < config.num_steps:
                state, metrics = step_fn(state, batch)
                if step + 1 < config.num_steps:  # host work overlaps the device step
                    batch = shard_batch(next(data), mesh)
                m = jax.device_get(metrics)
                if not bool(m["finite"]):
                    raise NonFiniteError(step, m, state, ckpt.latest_step())
                step += 1
                logger.advance(step)
                if step % config.log_every == 0 or step == config.num_steps:
                    logger.log(step, m)
                for period, fn in hooks:
                    if step % period == 0:
                        fn(step, state)
                ckpt.save(step, state, metadata=save_meta)
                if sigterm.requested or ckpt.reached_preemption(step):
                    preempted = True
                    break
            ckpt.save(step, state, force=True, metadata=save_meta)
        ckpt.wait()
        logger.summary(
            step, start_step=start, preempted=preempted, loss=_maybe(m, "loss"),
            checkpoint=ckpt.latest_step(),
        )  # fmt: skip
    finally:
        ckpt.close()  # waits for pending saves: the last good checkpoint is always complete
        logger.close()
    return TrainResult(state, step, start, preempted, {k: np.asarray(v) for k, v in m.items()})


def _maybe(metrics, name):
    return float(metrics[name]) if name in metrics else None
