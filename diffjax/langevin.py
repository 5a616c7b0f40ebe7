"""Unadjusted Langevin dynamics (§1 of `shared/seeds/001`), compiled with `lax.scan`.

    x_{k+1} = x_k + ε ∇log p(x_k) + √(2ε) ξ_k,    ξ_k ~ N(0, I)

leaves p invariant as ε → 0 (the discretisation bias is O(ε)).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array


def langevin_dynamics(
    score_fn: Callable[[Array], Array],
    x_init: Array,
    key: Array,
    step_size: float,
    num_steps: int,
    save_every: int = 0,
) -> Array | tuple[Array, Array]:
    """Run ULA from x_init (batch, *event) with the score ∇log p; returns the final samples, and
    with save_every > 0 also the trajectory (num_steps // save_every + 1, batch, *event)."""
    if num_steps < 1:
        raise ValueError(f"langevin_dynamics: num_steps must be >= 1, got {num_steps}.")
    if not save_every >= 0:
        raise ValueError(f"langevin_dynamics: save_every must be >= 0, got {save_every}.")
    step_size = jnp.asarray(step_size, x_init.dtype)

    def step(x, k):
        noise = jax.random.normal(k, x.shape, x.dtype)
        return x + step_size * score_fn(x) + jnp.sqrt(2.0 * step_size) * noise, None

    keys = jax.random.split(key, num_steps)
    if not save_every:
        return lax.scan(step, x_init, keys)[0]
    if num_steps % save_every:
        raise ValueError("langevin_dynamics: num_steps must be a multiple of save_every.")

    def chunk(x, ks):
        x = lax.scan(step, x, ks)[0]
        return x, x

    x_final, saved = lax.scan(chunk, x_init, keys.reshape(-1, save_every, *keys.shape[1:]))
    return x_final, jnp.concatenate([x_init[None], saved])
