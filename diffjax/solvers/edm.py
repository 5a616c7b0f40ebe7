"""Karras et al. (2022) Alg. 2 (stochastic churn + Heun) for any process, in the scaled variable
x̃ = x/α whose noise level is ν = σ/α (EDM's σ): dx̃/dν = ε̂ along the flow.

Per step: γ = min(S_churn/N, √2 − 1) if S_tmin ≤ ν_t ≤ S_tmax else 0; raise the noise to
ν̂ = ν_t(1 + γ) (at the time t̂ with σ/α = ν̂, capped at t_noise) by adding √(ν̂² − ν_t²) S_noise z to
x̃; then a Heun step in ν from ν̂ to ν_next (an Euler/DDIM step when reaching t_data, or from α = 0
where ν is infinite). S_churn = 0 is the deterministic EDM sampler (Alg. 1, order 2). S_tmin, S_tmax
are in units of ν = σ/α. 2 evaluations per step (one fewer on a last step to t_data and on a first
step from α = 0).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax._pytree import pytree_dataclass, static_field
from diffjax.solvers.base import Solver


@pytree_dataclass
class EDM(Solver):
    s_churn: float = static_field(default=0.0)
    s_tmin: float = static_field(default=0.0)
    s_tmax: float = static_field(default=math.inf)
    s_noise: float = static_field(default=1.0)
    order: ClassVar[int] = 2
    evals_per_step: ClassVar[int] = 2

    def __post_init__(self):
        if self.s_churn < 0 or self.s_noise < 0:
            raise ValueError(f"edm: need s_churn >= 0 and s_noise >= 0, got {self.s_churn}, {self.s_noise}.")

    def num_evaluations(self, num_steps, *, ends_at_data=False, starts_at_zero_alpha=False,
                        finite_at_data=False):  # fmt: skip
        return 2 * num_steps - int(ends_at_data) - int(starts_at_zero_alpha)  # Euler to σ = 0 (Alg. 1)

    def init(self, term, y0, ts):
        return min(self.s_churn / (ts.shape[0] - 1), math.sqrt(2.0) - 1.0)  # γ_max (static)

    def step(self, term, x, gamma_max, t, t_next, key):
        process = term.process
        a_t, s_t = process.alpha(t), process.sigma(t)
        t_hat, a_hat, s_hat, x_hat = t, a_t, s_t, x
        if self.s_churn > 0:
            nu = s_t / a_t
            churn = (a_t > 0) & (nu >= self.s_tmin) & (nu <= self.s_tmax)
            gamma = jnp.where(churn, gamma_max, 0.0)
            t_up = process.time_at_log_snr(process.log_snr(t) - 2.0 * jnp.log1p(gamma),
                                           process.t_noise, t)  # fmt: skip
            a_up, s_up = process.alpha(t_up), process.sigma(t_up)
            extra = jnp.sqrt(jnp.maximum((s_up / a_up) ** 2 - nu**2, 0.0))
            z = jax.random.normal(key, x.shape, x.dtype)
            x_up = (a_up / a_t) * x + a_up * extra * self.s_noise * z
            t_hat, a_hat, s_hat = (jnp.where(churn, u, v) for u, v in
                                   ((t_up, t), (a_up, a_t), (s_up, s_t)))  # fmt: skip
            x_hat = jnp.where(churn, x_up, x)
        a_n, s_n = process.alpha(t_next), process.sigma(t_next)
        x0, eps1 = term.denoise(x_hat, t_hat)
        x_euler = a_n * x0 + s_n * eps1  # x̃ + (ν_next − ν̂) ε̂ in x-units

        def correct():
            eps2 = term.denoise(x_euler, t_next)[1]
            return (a_n / a_hat) * x_hat + (s_n - a_n * s_hat / a_hat) * 0.5 * (eps1 + eps2)

        skip = (t_next == process.t_data) | (a_hat == 0)
        return jax.lax.cond(skip, lambda: x_euler, correct), gamma_max
