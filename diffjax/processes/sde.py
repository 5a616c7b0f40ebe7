"""Forward diffusion SDEs dX = f(t)·X dt + g(t) dW with data at t = 0 and noise at t = T.

Closed forms follow Song et al. (2021), "Score-Based Generative Modeling through SDEs",
eqs. (19)–(22) of `shared/seeds/001`, written with B(t) = ∫₀ᵗ β(s) ds:

    VP     f = −½β,  g² = β,                  α = e^{−B/2},  σ² = 1 − e^{−B}
    sub-VP f = −½β,  g² = β(1 − e^{−2B}),     α = e^{−B/2},  σ  = 1 − e^{−B}
    VE     f = 0,    g² = d[σ_ve²]/dt,         α = 1,         σ² = σ_ve(t)² − σ_ve(0)²

with β(t) = β_min + (β_max − β_min)·t/T and σ_ve(t) = σ_min (σ_max/σ_min)^{t/T}. The VE variance is
the exact one of the SDE started at x_0 (Song et al.'s code drops the −σ_min² offset).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_less, check_positive
from diffjax.processes.base import GaussianProcess


class SDE(GaussianProcess):
    """A linear forward SDE in diffusion convention: t_data = 0, t_noise = T."""

    T: float

    @property
    def t_data(self) -> float:
        return 0.0

    @property
    def t_noise(self) -> float:
        return self.T

    @property
    def default_t_eps(self) -> float:
        """1e-3·T, score_sde's sampling end (σ̇ ~ 1/√t is singular at t = 0 for VP-type SDEs)."""
        return 1e-3 * self.T


class _LinearBetaSDE(SDE):
    """β(t) = β_min + (β_max − β_min) t/T, its integral B(t) and α = e^{−B/2}: what VP and sub-VP share."""

    beta_min: float
    beta_max: float

    def __post_init__(self):
        name = type(self).__name__
        check_positive("beta_min", self.beta_min, name)
        check_less("beta_min", self.beta_min, "beta_max", self.beta_max, name)
        check_positive("T", self.T, name)

    def beta(self, t) -> Array:
        t = self.check_time(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def integrated_beta(self, t) -> Array:
        """B(t) = ∫₀ᵗ β(s) ds."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def alpha(self, t):
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def drift_coeff(self, t) -> Array:
        return -0.5 * self.beta(t)


@pytree_dataclass
class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE dx = −½β(t) x dt + √β(t) dW (DDPM's continuous limit)."""

    beta_min: float = static_field(default=0.1)
    beta_max: float = static_field(default=20.0)
    T: float = static_field(default=1.0)

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def diffusion_squared(self, t) -> Array:
        return self.beta(t)


@pytree_dataclass
class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE dx = −½β x dt + √(β(1 − e^{−2B(t)})) dW; its variance stays below VP's."""

    beta_min: float = static_field(default=0.1)
    beta_max: float = static_field(default=20.0)
    T: float = static_field(default=1.0)

    def sigma(self, t):
        return -jnp.expm1(-self.integrated_beta(t))

    def diffusion_squared(self, t) -> Array:
        return self.beta(t) * -jnp.expm1(-2.0 * self.integrated_beta(self.check_time(t)))


@pytree_dataclass
class VESDE(SDE):
    """Variance-exploding SDE dx = √(d[σ_ve²]/dt) dW, σ_ve(t) = σ_min (σ_max/σ_min)^{t/T}."""

    sigma_min: float = static_field(default=0.01)
    sigma_max: float = static_field(default=50.0)
    T: float = static_field(default=1.0)

    def __post_init__(self):
        check_positive("sigma_min", self.sigma_min, "VESDE")
        check_less("sigma_min", self.sigma_min, "sigma_max", self.sigma_max, "VESDE")
        check_positive("T", self.T, "VESDE")

    def noise_level(self, t) -> Array:
        """σ_ve(t) = σ_min (σ_max/σ_min)^{t/T} (the NCSN noise scale)."""
        t = jnp.asarray(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t) + 0.0)

    def sigma(self, t):
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * log_ratio * jnp.asarray(t) / self.T))

    def drift_coeff(self, t) -> Array:
        return jnp.zeros_like(self.check_time(t))

    def diffusion_squared(self, t) -> Array:
        t = self.check_time(t)
        return self.noise_level(t) ** 2 * 2.0 * jnp.log(self.sigma_max / self.sigma_min) / self.T


@pytree_dataclass
class CosineVPSDE(SDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021) in log-SNR form.

    λ(t) = −2 log tan(a + (b − a) t/T), α² = sigmoid(λ), σ² = sigmoid(−λ), with a, b chosen so that
    λ(0) = logsnr_max and λ(T) = logsnr_min. Untruncated (±∞) this is ᾱ(t) = cos²(πt/2T) (s = 0);
    truncating keeps β(t) = −d log α²/dt finite at both ends (Hoogeboom et al. 2023).
    f and g come from the generic VDM formulas of `GaussianProcess`.
    """

    logsnr_min: float = static_field(default=-15.0)
    logsnr_max: float = static_field(default=15.0)
    T: float = static_field(default=1.0)

    def __post_init__(self):
        check_less("logsnr_min", self.logsnr_min, "logsnr_max", self.logsnr_max, "CosineVPSDE")
        check_positive("T", self.T, "CosineVPSDE")

    def _logsnr(self, t):
        a = jnp.arctan(jnp.exp(-0.5 * self.logsnr_max))
        b = jnp.arctan(jnp.exp(-0.5 * self.logsnr_min))
        return -2.0 * jnp.log(jnp.tan(a + (b - a) * t / self.T))

    def alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self._logsnr(t)))

    def sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self._logsnr(t)))

    def beta(self, t) -> Array:
        """β(t) = −2 d log α/dt."""
        return -2.0 * self.drift_coeff(t)
