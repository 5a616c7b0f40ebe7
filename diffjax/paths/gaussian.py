"""Gaussian probability paths for flow matching (Lipman et al. 2023; flow-matching convention).

    x_t = α_t·x_data + σ_t·x_noise,   x_noise ~ N(0, I),   t ∈ [0, 1]

noise at t = 0 (α_0 = 0, σ_0 = 1) and data at t = 1 (α_1 = 1, σ_1 = σ_min). The conditional vector
field u_t(x | x_data, x_noise) = α̇_t x_data + σ̇_t x_noise generates the conditional path; the marginal
field is its posterior expectation (Theorem 5 of `shared/seeds/001`; exact for mixtures in
`diffjax.oracle`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_batch_time, check_positive, check_same_shape
from diffjax.processes.base import GaussianProcess, expand


class GaussianPath(GaussianProcess):
    """A Gaussian path in flow-matching convention: t_noise = 0, t_data = 1."""

    @property
    def t_data(self) -> float:
        return 1.0

    @property
    def t_noise(self) -> float:
        return 0.0

    def sample_conditional(self, key, x_data: Array, t) -> tuple[Array, Array]:
        """Draw x_t ~ p_t(· | x_data); returns (x_t, x_noise)."""
        return self.sample_marginal(key, x_data, t)

    def interpolate(self, x_data: Array, x_noise: Array, t) -> Array:
        """x_t = α_t x_data + σ_t x_noise."""
        check_same_shape(x_data, x_noise, "x_data and x_noise", type(self).__name__)
        t = check_batch_time(x_data, t, type(self).__name__)
        return expand(self.alpha(t), x_data) * x_data + expand(self.sigma(t), x_data) * x_noise

    def conditional_velocity(self, x_data: Array, x_noise: Array, t) -> Array:
        """u_t(x | x_data, x_noise) = α̇_t x_data + σ̇_t x_noise (the CFM regression target)."""
        check_same_shape(x_data, x_noise, "x_data and x_noise", type(self).__name__)
        t = check_batch_time(x_data, t, type(self).__name__)
        c = self.coefficients(t)
        return expand(c.d_alpha, x_data) * x_data + expand(c.d_sigma, x_data) * x_noise

    def conditional_score(self, x: Array, x_data: Array, t) -> Array:
        """∇_x log p_t(x | x_data) = −(x − α_t x_data)/σ_t²."""
        check_same_shape(x, x_data, "x and x_data", type(self).__name__)
        t = check_batch_time(x, t, type(self).__name__)
        return -(x - expand(self.alpha(t), x) * x_data) / expand(self.sigma(t), x) ** 2


@pytree_dataclass
class CondOTPath(GaussianPath):
    """Conditional optimal transport / rectified flow: α_t = t, σ_t = 1 − (1 − σ_min) t."""

    sigma_min: float = static_field(default=0.0)

    def __post_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"CondOTPath: sigma_min must lie in [0, 1), got {self.sigma_min}.")

    def _alpha(self, t):
        return t

    def _sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t


@pytree_dataclass
class CosinePath(GaussianPath):
    """Cosine path: α_t = sin(πt/2), σ_t = cos(πt/2) (variance preserving, α² + σ² = 1)."""

    def _alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * t)

    def _sigma(self, t):
        return jnp.cos(0.5 * jnp.pi * t)


@pytree_dataclass
class PolynomialPath(GaussianPath):
    """Polynomial path: α_t = tⁿ, σ_t = 1 − tⁿ (n = 1 is CondOT)."""

    exponent: float = static_field(default=2.0)

    def __post_init__(self):
        check_positive("exponent", self.exponent, "PolynomialPath")

    def _alpha(self, t):
        return t**self.exponent

    def _sigma(self, t):
        return 1.0 - t**self.exponent


@pytree_dataclass
class VPPath(GaussianPath):
    """The VP path of Lipman et al. (2023): α_t = e^{−B(1−t)/2}, σ_t = √(1 − α_t²) with the linear-β
    VP SDE's B(s) = β_min s + (β_max − β_min) s²/2 — the VP SDE seen in flow-matching time
    (equal to `flow_path_from_sde(VPSDE(...))`, which is how it is tested)."""

    beta_min: float = static_field(default=0.1)
    beta_max: float = static_field(default=20.0)

    def __post_init__(self):
        check_positive("beta_min", self.beta_min, "VPPath")
        if self.beta_max <= self.beta_min:
            raise ValueError(f"VPPath: need beta_min < beta_max, got {self.beta_min}, {self.beta_max}.")

    def _integrated_beta(self, t):
        s = 1.0 - t
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

    def _alpha(self, t):
        return jnp.exp(-0.5 * self._integrated_beta(t))

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._integrated_beta(t)))
