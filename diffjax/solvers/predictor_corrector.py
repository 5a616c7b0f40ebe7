"""Predictor–corrector sampling (Song et al. 2021, Algs. 4–5).

At each time t, `n_corrector` Langevin steps x ← x + ε ∇log p_t + √(2ε) z with the signal-to-noise
step size ε = 2 a (r ‖z‖/‖∇log p_t‖)², a = (α_t/α_s)² (the discrete α_i of VP, 1 for VE), the norms
being batch means of per-example norms as in Song et al.'s code (per-example ratios of two
chi-distributed norms make rare huge steps in low dimension), then a predictor step to s:

    'reverse_diffusion'  x ← (2 − α_{t|s}) x + σ²_{t|s} ∇log p_t + σ_{t|s} z
                         (Song et al. eq. 46; for α_{t|s} ≈ 1, i.e. not from the α = 0 noise end
                         of a flow path)
    'euler_maruyama'     an Euler–Maruyama step of the reverse SDE.

Song et al. use r = 0.16 for VE and 0.01–0.17 for VP. 1 + n_corrector evaluations per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._array import per_example_norm
from diffjax._pytree import pytree_dataclass, static_field
from diffjax.solvers.base import Solver
from diffjax.solvers.euler_maruyama import EulerMaruyama

PREDICTORS = ("reverse_diffusion", "euler_maruyama")


@pytree_dataclass
class PredictorCorrector(Solver):
    snr: float = static_field(default=0.16)
    n_corrector: int = static_field(default=1)
    predictor: str = static_field(default="reverse_diffusion")

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(
                f"predictor_corrector: predictor must be one of {PREDICTORS}, got {self.predictor!r}."
            )
        if not isinstance(self.n_corrector, int | np.integer) or self.n_corrector < 0:
            raise ValueError(f"predictor_corrector: need an int n_corrector >= 0, got {self.n_corrector}.")
        if not self.snr > 0:
            raise ValueError(f"predictor_corrector: snr must be > 0, got {self.snr}.")

    @property
    def evals_per_step(self) -> int:
        return 1 + self.n_corrector

    def step(self, term, x, carry, t, t_next, key):
        process = term.process
        keys = jax.random.split(key, self.n_corrector + 1)
        a = jnp.minimum((process.alpha(t) / process.alpha(t_next)) ** 2, 1.0)

        def langevin(x, k):
            grad = term.score(x, t)
            z = jax.random.normal(k, x.shape, x.dtype)
            ratio = jnp.mean(per_example_norm(z)) / jnp.mean(per_example_norm(grad))
            eps = 2.0 * a * (self.snr * ratio) ** 2
            return (x + eps * grad + jnp.sqrt(2.0 * eps) * z).astype(x.dtype), None

        x, _ = jax.lax.scan(langevin, x, keys[:-1])
        if self.predictor == "euler_maruyama":
            return EulerMaruyama().step(term, x, carry, t, t_next, keys[-1])
        a_ts, var_ts = process.transition(t, t_next)
        grad = term.score(x, t)
        z = jax.random.normal(keys[-1], x.shape, x.dtype)
        return (2.0 - a_ts) * x + var_ts * grad + jnp.sqrt(jnp.maximum(var_ts, 0.0)) * z, carry
