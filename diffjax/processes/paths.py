"""Gaussian probability paths for flow matching (Lipman et al. 2023; flow-matching convention).

    x_t = α_t·x_data + σ_t·x_noise,   x_noise ~ N(0, I),   t ∈ [0, 1]

noise at t = 0 (α_0 = 0, σ_0 = 1) and data at t = 1 (α_1 = 1, σ_1 = σ_min). The conditional vector
field u_t(x | x_data, x_noise) = α̇_t x_data + σ̇_t x_noise (the 'velocity' of
`diffjax.parameterization`, the CFM target) generates the conditional path; the marginal field is its
posterior expectation (Theorem 5 of `shared/seeds/001`; exact for mixtures in `diffjax.oracle`). A
path is a `GaussianProcess` like any SDE: sampling, losses and likelihoods take either.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_positive
from diffjax.processes.base import GaussianProcess


class GaussianPath(GaussianProcess):
    """A Gaussian path in flow-matching convention: t_noise = 0, t_data = 1."""

    @property
    def t_data(self) -> float:
        return 1.0

    @property
    def t_noise(self) -> float:
        return 0.0


@pytree_dataclass
class CondOTPath(GaussianPath):
    """Conditional optimal transport / rectified flow: α_t = t, σ_t = 1 − (1 − σ_min) t."""

    sigma_min: float = static_field(default=0.0)

    def __post_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"CondOTPath: sigma_min must lie in [0, 1), got {self.sigma_min}.")

    def alpha(self, t):
        return jnp.asarray(t)

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * jnp.asarray(t)


@pytree_dataclass
class CosinePath(GaussianPath):
    """Cosine path: α_t = sin(πt/2), σ_t = cos(πt/2) = sin(π(1 − t)/2) (variance preserving,
    α² + σ² = 1); σ is written as the sine so that it is exactly 0 at the data end in floating point
    (cos(π/2) rounds to −4e-8 in float32)."""

    def alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * jnp.asarray(t))

    def sigma(self, t):
        return jnp.sin(0.5 * jnp.pi * (1.0 - jnp.asarray(t)))


@pytree_dataclass
class PolynomialPath(GaussianPath):
    """Polynomial path: α_t = tⁿ, σ_t = 1 − tⁿ (n = 1 is CondOT)."""

    exponent: float = static_field(default=2.0)

    def __post_init__(self):
        check_positive("exponent", self.exponent, "PolynomialPath")

    def alpha(self, t):
        return jnp.asarray(t) ** self.exponent

    def sigma(self, t):
        return 1.0 - jnp.asarray(t) ** self.exponent
