"""Unadjusted Langevin dynamics (§1 of `shared/seeds/001`): Euler–Maruyama on dX = ∇log p dt + √2 dW,

    x_{k+1} = x_k + ε ∇log p(x_k) + √(2ε) ξ_k,    ξ_k ~ N(0, I),

which leaves p invariant as ε → 0 (the discretisation bias is O(ε)). Run by the shared integrator.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array

from diffjax.solvers import EulerMaruyama, Langevin, integrate


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
    if save_every and num_steps % save_every:
        raise ValueError("langevin_dynamics: num_steps must be a multiple of save_every.")
    ts = jnp.arange(num_steps + 1, dtype=x_init.dtype)  # in steps: Δτ = 1 exactly
    sol = integrate(EulerMaruyama(), Langevin(score_fn, step_size), x_init, ts, key, save_every=save_every)
    return (sol.y, sol.trajectory) if save_every else sol.y
