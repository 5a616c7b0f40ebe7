"""DDIM (Song, Meng & Ermon 2021, eq. 12) for any process:

    x_next = α_next x̂0 + √(σ_next² − c²) ε̂ + c z,   c² = η² σ²_{t|s} σ_next²/σ_t²,

with σ²_{t|s}/σ_t² = 1 − e^{λ_t − λ_next} (λ the log-SNR). η = 0 is the deterministic map (the exact
update of the probability-flow ODE with x̂0, ε̂ held fixed: first order, DPM-Solver++ of order 1);
η = 1 is ancestral sampling. Needs only α and σ (runs on the DDPM chain); 1 evaluation per step.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax._pytree import pytree_dataclass, static_field
from diffjax.solvers.base import Solver


@pytree_dataclass
class DDIM(Solver):
    eta: float = static_field(default=0.0)
    needs_rates: ClassVar[bool] = False

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ddim: eta must lie in [0, 1], got {self.eta}.")

    def step(self, term, x, carry, t, t_next, key):
        x0, eps = term.denoise(x, t)
        process = term.process
        a_n, s_n = process.alpha(t_next), process.sigma(t_next)
        if self.eta == 0.0:
            return a_n * x0 + s_n * eps, carry
        c2_over_s2 = self.eta**2 * -jnp.expm1(process.log_snr(t) - process.log_snr(t_next))
        z = jax.random.normal(key, x.shape, x.dtype)
        return a_n * x0 + s_n * (jnp.sqrt(1.0 - c2_over_s2) * eps + jnp.sqrt(c2_over_s2) * z), carry
