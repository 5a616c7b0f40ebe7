"""Training: a `TrainState` pytree, one pure compiled `train_step`, data parallelism and fully
sharded data parallelism (FSDP: `make_mesh(fsdp=F)`) over all devices and processes, Orbax
checkpoints with exact resume, metrics logging and the loop.

Typical use (see `experiments/train.py`):

    graphdef, params = nnx.split(model)
    optimizer, schedule = make_optimizer(2e-4, warmup_steps=500)
    loss_fn = model_loss(graphdef, functools.partial(dj.dsm_loss, process=sde))
    step = make_train_step(loss_fn, optimizer, ema_decay=0.999, schedule=schedule)
    state = create_train_state(params, optimizer, jax.random.key(0))
    train(TrainConfig(workdir, num_steps), step, state, lambda s: batches(x, y, B, 0, s, ...))
"""

from diffjax.training.checkpoint import (
    Checkpointer,
    CheckpointWriteError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    SigtermFlag,
    tree_checksums,
)
from diffjax.training.logging import MetricsLogger
from diffjax.training.loop import NonFiniteError, TrainConfig, TrainResult, train
from diffjax.training.parallel import (
    DATA_AXIS,
    FSDP_AXIS,
    FSDP_MIN_SIZE,
    CompiledStep,
    compile_train_step,
    data_sharding,
    fsdp_size,
    fsdp_spec,
    gather,
    make_data_mesh,
    make_mesh,
    maybe_initialize_distributed,
    place,
    replicate,
    replicated_sharding,
    shard_batch,
    shard_state,
    state_shardings,
)
from diffjax.training.state import TrainState, as_key_data, create_train_state, make_optimizer, make_schedule
from diffjax.training.step import (
    all_finite,
    gathered,
    make_train_step,
    model_loss,
    takes_step,
    uses_step,
    uses_unconditional,
)
from diffjax.training.workdir import (
    RunMismatchError,
    TrainedModel,
    check_resumable,
    load_model,
    read_record,
    run_record,
)

__all__ = [
    "DATA_AXIS", "FSDP_AXIS", "FSDP_MIN_SIZE", "CheckpointWriteError", "Checkpointer", "CompiledStep",
    "CorruptCheckpointError", "CorruptCheckpointWarning", "MetricsLogger",
    "NonFiniteError", "RunMismatchError", "SigtermFlag", "TrainConfig", "TrainResult", "TrainState",
    "TrainedModel", "all_finite", "as_key_data", "check_resumable", "compile_train_step",
    "create_train_state", "data_sharding", "fsdp_size", "fsdp_spec", "gather", "gathered",
    "make_data_mesh", "make_mesh", "make_optimizer", "make_schedule",
    "load_model", "make_train_step", "maybe_initialize_distributed", "model_loss", "read_record",
    "place", "replicate", "replicated_sharding", "run_record", "shard_batch", "shard_state",
    "state_shardings", "takes_step", "train", "tree_checksums", "uses_step", "uses_unconditional",
]  # fmt: skip
