"""The training state pytree and the optimizer (AdamW with warmup, optional cosine decay, clipping).

`TrainState` holds everything a run needs to continue bit-exactly: the number of updates applied,
the parameters, the optimizer state, an exponential moving average (EMA) of the parameters and the
PRNG key of the next step. The key is stored as raw key data (uint32 array, `jax.random.key_data`)
so that a checkpoint is a plain tree of arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, UInt32

from diffjax._pytree import pytree_dataclass

PyTree = Any


@pytree_dataclass
class TrainState:
    """step: int32 scalar, updates applied so far (= index of the next data batch); params: any
    pytree of arrays (e.g. an `nnx.State`); opt_state: the optax state; ema_params: EMA of params
    (same tree); key: uint32 key data of the next step's PRNG key; posthoc: None, or a tuple of
    power-function EMAs of params tracked for post-hoc EMA (`diffjax.training.posthoc_ema`)."""

    step: Int[Array, ""]
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    key: UInt32[Array, "..."]
    posthoc: PyTree = None


def as_key_data(key) -> jax.Array:
    """Raw uint32 key data of a typed key (`jax.random.key`), a raw `PRNGKey` or an int seed."""
    if isinstance(key, int):
        key = jax.random.key(key)
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.dtype != jnp.uint32:
        raise ValueError(
            f"key must be a jax.random.key, a raw uint32 PRNGKey or an int seed; got dtype "
            f"{key.dtype}."
        )
    return key


def create_train_state(
    params: PyTree, optimizer: optax.GradientTransformation, key, num_posthoc: int = 0
) -> TrainState:
    """Step 0 state: `optimizer.init(params)`, EMA = a copy of params, `key` as key data, and
    `num_posthoc` power-function EMAs (copies of params) for post-hoc EMA (None if 0). The optimizer
    state and the copies (distinct buffers, so the state can be donated) come from one compiled
    program, not one per parameter shape (≈ 100 small programs for a U-Net)."""
    params = jax.tree.map(jnp.asarray, params)

    def initial(params):
        copy = lambda: jax.tree.map(jnp.copy, params)  # noqa: E731
        return optimizer.init(params), copy(), tuple(copy() for _ in range(num_posthoc))

    opt_state, ema_params, posthoc = jax.jit(initial)(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        ema_params=ema_params,
        key=as_key_data(key),
        posthoc=posthoc or None,
    )


def make_schedule(
    learning_rate: float, warmup_steps: int = 0, total_steps: int | None = None,
    final_fraction: float = 0.0,
) -> optax.Schedule:
    """Learning rate at step s: linear warmup lr·s/W for s < W, then constant lr, or (if
    `total_steps` T is given) cosine decay from lr to final_fraction·lr at s = T."""
    if learning_rate <= 0 or warmup_steps < 0:
        raise ValueError(
            f"need learning_rate > 0 and warmup_steps >= 0, got {learning_rate}, {warmup_steps}."
        )
    if total_steps is not None:
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps={total_steps} must exceed warmup_steps={warmup_steps} (or be None "
                "for a constant rate after warmup)."
            )
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, total_steps, learning_rate * final_fraction
        )
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.constant_schedule(learning_rate)],
        [warmup_steps],
    )  # fmt: skip


def make_optimizer(
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule): clip the gradient to global norm `clip_norm` (None: no clipping),
    then AdamW (Loshchilov & Hutter 2019) with the `make_schedule` learning rate. The schedule is
    returned too so that `make_train_step` can report the rate of each step."""
    schedule = make_schedule(learning_rate, warmup_steps, total_steps)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if clip_norm is None:
        return adamw, schedule
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}.")
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw), schedule
