"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models") on
any process, as a two-time network.

A shortcut model conditions on the step it is asked to take. Here it is the average velocity
u(x, t, s) of the probability-flow ODE (`diffjax.meanflow`), one jump Φ_{t→s}(x) = x + (s − t)·u(x, t, s)
(`diffjax.flow_map.AverageVelocityMap`); their s(x_t, t, d) is u(x, t, t + d) on the CondOT path. The
flow map is a semigroup, Φ_{t→s} = Φ_{r→s} ∘ Φ_{t→r}, so for any r between t and s

    (s − t)·u(x, t, s) = (r − t)·u(x, t, r) + (s − r)·u(x', r, s),    x' = x + (r − t)·u(x, t, r),

which for the midpoint r is their self-consistency target u(x, t, s) = ½(u(x, t, r) + u(x', r, s)).
`shortcut_loss` trains u_θ on two parts of each batch:

- flow matching on the diagonal (a fraction 1 − bootstrap_fraction of the batch): u(x_t, t, t) = v,
  regressed on the conditional velocity α̇ x0 + σ̇ ε (or a teacher's velocity), t uniform on the axis;
- self-consistency (the rest): a dyadic level k ~ U{0, …, K − 1}, K = log2(max_steps), the jump spans
  h = 2^{−k} of the axis from the noise end (τ = 0) to the data end (τ = 1), its two halves h/2; the
  start τ_t = j·h/2 with j ~ U{0, …, 2^{k+1} − 2} (so the jump ends by the data end); x_t = α x0 + σ ε;
  the target is sg of the right-hand side above with the network itself, and at the finest level
  (halves of 1/max_steps) the halves are Euler steps on the diagonal, u(x, t, t) — where the flow
  matching part anchors the hierarchy.

Every term is a mean over dimensions of a squared error; the two parts are averaged over the whole
batch (each example counts once). The exact average velocity zeroes the self-consistency part up to
the accuracy of its own solve, except at the finest level where the Euler halves differ from the
exact map by O(h²) (`tests/test_shortcut.py`). Sampling: `diffjax.flow_map.flow_map_sample` with
`AverageVelocityMap` on a uniform grid of 1, 2, 4, … ≤ max_steps steps (the levels it was trained on).

Shapes: model(x (N, *event), t (N,), s (N,)) -> u (N, *event); x0 (N, *event); N·bootstrap_fraction is
rounded to a whole number of examples (static).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._array import expand
from diffjax._validate import check_key
from diffjax.flow import check_model_output
from diffjax.parameterization import from_x0_eps
from diffjax.processes.base import GaussianProcess

AverageVelocityFn = Callable[[Array, Array, Array], Array]


def shortcut_times(process: GaussianProcess, key: Array, n: int, max_steps: int = 128,
                   t_eps: float | None = None) -> tuple[Array, Array, Array, Array]:  # fmt: skip
    """(t, r, s, finest) of n self-consistency examples (module docstring): the jump t → s over
    2^{−k} of the axis and its midpoint r, on the process's axis; finest (n,) bool marks level K − 1."""
    levels = _num_levels(max_steps)
    k_level, k_start = jax.random.split(key)
    k = jax.random.randint(k_level, (n,), 0, levels)
    half = 2.0 ** (-(k + 1).astype(jnp.float32))  # h/2 in τ units
    j = jnp.floor(jax.random.uniform(k_start, (n,)) * (2.0 ** (k + 1) - 1))  # j ∈ {0, …, 2^{k+1} − 2}
    end, noise = process.data_end(t_eps), float(process.t_noise)

    def time(tau):
        return noise + (end - noise) * tau

    tau = j * half
    return time(tau), time(tau + half), time(jnp.minimum(tau + 2 * half, 1.0)), k == levels - 1


def _num_levels(max_steps: int) -> int:
    if not isinstance(max_steps, int) or max_steps < 2 or max_steps & (max_steps - 1):
        raise ValueError(f"shortcut: max_steps must be a power of two >= 2, got {max_steps!r}.")
    return int(math.log2(max_steps))


def shortcut_loss(
    model: AverageVelocityFn,
    x0: Array,
    key: Array,
    *,
    process: GaussianProcess,
    max_steps: int = 128,
    bootstrap_fraction: float = 0.25,
    t_eps: float | None = None,
    velocity: Callable[[Array, Array], Array] | None = None,
    reduce: bool = True,
) -> Array:
    """The shortcut-model loss (module docstring): a scalar, or per-example losses (N,) (the first
    N − B flow-matching examples, then the B self-consistency ones).

    velocity(x, t) -> v: a teacher's marginal velocity for the diagonal instead of the conditional one
    (distillation). max_steps: the finest step is 1/max_steps of the axis (a power of two)."""
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"shortcut_loss: x0 must be a non-empty batch (batch, *event), got {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"shortcut_loss: x0 must be floating point, got {x0.dtype}.")
    if not 0.0 <= bootstrap_fraction <= 1.0:
        raise ValueError(f"shortcut_loss: bootstrap_fraction must lie in [0, 1], got {bootstrap_fraction}.")
    if process.discrete:
        raise ValueError("shortcut_loss: the process is discrete; shortcut models need continuous times.")
    _num_levels(max_steps)
    n = x0.shape[0]
    b = int(round(bootstrap_fraction * n))
    k_fm, k_sc, k_eps = jax.random.split(check_key(key, "shortcut_loss"), 3)
    end, noise = process.data_end(t_eps), float(process.t_noise)
    # times: the flow-matching examples first, then the self-consistency ones
    t_fm = noise + (end - noise) * jax.random.uniform(k_fm, (n - b,), x0.dtype)
    t_sc, r, s_sc, finest = shortcut_times(process, k_sc, b, max_steps, t_eps)
    t = jnp.concatenate([t_fm, t_sc.astype(x0.dtype)])
    s = jnp.concatenate([t_fm, s_sc.astype(x0.dtype)])
    noised = process.sample_marginal(k_eps, x0, t)
    x_t = noised.x_t
    u = model(x_t, t, s)
    check_model_output(u, x0, "shortcut_loss")
    # targets: the velocity on the diagonal ...
    x_fm = x_t[: n - b]
    if velocity is None:
        v = from_x0_eps(x0, noised.eps, "velocity", x_t, noised.coefficients)[: n - b]
    else:
        v = velocity(x_fm, t_fm)
    # ... and two half jumps of the network (Euler halves on its diagonal at the finest level)
    x_b, t_b, r_b = x_t[n - b :], t_sc.astype(x0.dtype), r.astype(x0.dtype)
    s_b = s_sc.astype(x0.dtype)
    first = model(x_b, t_b, jnp.where(finest, t_b, r_b))
    x_mid = x_b + expand(r_b - t_b, x_b) * first
    second = model(x_mid, r_b, jnp.where(finest, r_b, s_b))
    jump = (expand(r_b - t_b, x_b) * first + expand(s_b - r_b, x_b) * second) / expand(s_b - t_b, x_b)
    target = jax.lax.stop_gradient(jnp.concatenate([v.astype(u.dtype), jump.astype(u.dtype)]))
    per_example = jnp.mean(jnp.square(u - target).reshape(n, -1), axis=-1)
    return jnp.mean(per_example) if reduce else per_example


__all__ = ["shortcut_loss", "shortcut_times"]
