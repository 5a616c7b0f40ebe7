"""Ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x0 = x̂0) of the process,

    mean = (α_{t|s} σ_s²/σ_t²) x_t + (α_s σ²_{t|s}/σ_t²) x̂0,   var = σ²_{t|s} σ_s²/σ_t²  ('posterior'),

or with the forward transition variance σ²_{t|s} ('transition'; Ho et al.'s σ_t² = β_t, the upper
bound of their §3.2), and no noise on a step that reaches the data (σ_s = 0). On the DDPM chain's own
grid T, T−1, …, 0 this is exactly Ho et al. (2020), Alg. 2; on coarser grids it is the respaced chain
(Nichol & Dhariwal 2021). Needs only α and σ (runs on `DDPMChain`); 1 evaluation per step.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass, static_field
from diffjax.solvers.base import Solver

VARIANCES = ("posterior", "transition")


@pytree_dataclass
class Ancestral(Solver):
    variance: str = static_field(default="posterior")
    needs_rates: ClassVar[bool] = False

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(f"ancestral: variance must be one of {VARIANCES}, got {self.variance!r}.")

    def step(self, term, x, carry, t, t_next, key):
        x0, _ = term.denoise(x, t)
        process = term.process
        mean, var = process.posterior(x, x0, t, t_next)
        if self.variance == "transition":
            var = expand(jnp.where(process.sigma(t_next) > 0, process.transition(t, t_next)[1], 0.0), x)
        return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype), carry
