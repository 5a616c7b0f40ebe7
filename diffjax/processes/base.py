"""Gaussian noising processes: the one interface every process and path shares.

Every forward process in diffjax has a Gaussian conditional marginal

    x_t = α(t)·x_data + σ(t)·ε,    ε ~ N(0, I),

on its own time axis, which runs from `t_data` (α=1, σ=0: clean data) to `t_noise` (prior).
Diffusion SDEs use t_data=0, t_noise=T; flow-matching paths use t_noise=0, t_data=1
(`diffjax.convention` translates between the two). Everything generic — time derivatives,
log-SNR, the equivalent SDE rates, marginal sampling, the prior — is derived here from α and σ
once; subclasses only state α(t) and σ(t) (and may override derivatives with closed forms).

Shapes: `t` is a scalar or of shape (batch,); `x` is (batch, *event). Coefficients broadcast as
`expand(c, x)`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from diffjax._validate import check_batch_time, check_time


class Coefficients(NamedTuple):
    """α(t), σ(t) and their derivatives dα/dt, dσ/dt on the process's own time axis."""

    alpha: Array
    sigma: Array
    d_alpha: Array
    d_sigma: Array


def expand(c: ArrayLike, x: Array) -> Array:
    """Broadcast a per-example coefficient of shape () or (batch,) against x of shape (batch, ...)."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)) if c.ndim else c


class GaussianProcess:
    """Base class: x_t = α(t) x_data + σ(t) ε. Subclasses are frozen pytree dataclasses."""

    # -- to be provided by subclasses -------------------------------------------------------
    @property
    def t_data(self) -> float:  # time at which x_t is the data
        raise NotImplementedError

    @property
    def t_noise(self) -> float:  # time at which x_t follows the prior
        raise NotImplementedError

    def _alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def _sigma(self, t: Array) -> Array:
        raise NotImplementedError

    # -- generic, derived once -------------------------------------------------------------
    @property
    def t_range(self) -> tuple[float, float]:
        return (min(self.t_data, self.t_noise), max(self.t_data, self.t_noise))

    @property
    def direction(self) -> float:
        """+1 if time runs from noise to data in increasing t (flow matching), else -1."""
        return 1.0 if self.t_data > self.t_noise else -1.0

    def check_time(self, t: ArrayLike) -> Array:
        return check_time(t, *self.t_range, owner=type(self).__name__)

    def alpha(self, t: ArrayLike) -> Float[Array, "*t"]:
        """Data coefficient α(t) of the marginal x_t = α x_data + σ ε."""
        return self._alpha(self.check_time(t))

    def sigma(self, t: ArrayLike) -> Float[Array, "*t"]:
        """Noise standard deviation σ(t) of the marginal."""
        return self._sigma(self.check_time(t))

    def coefficients(self, t: ArrayLike) -> Coefficients:
        """(α, σ, dα/dt, dσ/dt) at t, derivatives by forward-mode autodiff (exact)."""
        t = jnp.asarray(self.check_time(t), dtype=jnp.result_type(float))
        ones = jnp.ones_like(t)
        alpha, d_alpha = jax.jvp(self._alpha, (t,), (ones,))
        sigma, d_sigma = jax.jvp(self._sigma, (t,), (ones,))
        return Coefficients(alpha, sigma, d_alpha, d_sigma)

    def log_snr(self, t: ArrayLike) -> Array:
        """λ(t) = log(α²/σ²), the log signal-to-noise ratio."""
        t = self.check_time(t)
        return 2.0 * (jnp.log(self._alpha(t)) - jnp.log(self._sigma(t)))

    def drift_coeff(self, t: ArrayLike) -> Array:
        """f(t) = d log α / dt: the linear drift f(t)·x of the forward SDE with these marginals,
        on this process's time axis (Kingma et al. 2021, VDM, appendix)."""
        c = self.coefficients(t)
        return c.d_alpha / c.alpha

    def diffusion_squared(self, t: ArrayLike) -> Array:
        """g²(t) = |dσ²/dt − 2 f(t) σ²|: squared diffusion rate of the noising SDE with these
        marginals, per unit of this process's time (for SDE samplers in either convention)."""
        c = self.coefficients(t)
        return jnp.abs(2.0 * c.sigma * c.d_sigma - 2.0 * c.d_alpha / c.alpha * c.sigma**2)

    def marginal(self, x_data: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Mean α(t)·x_data and std σ(t) of x_t | x_data (std broadcast to x's rank)."""
        t = check_batch_time(x_data, t, type(self).__name__)
        return expand(self.alpha(t), x_data) * x_data, expand(self.sigma(t), x_data)

    def sample_marginal(self, key: Array, x_data: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Draw x_t ~ N(α x_data, σ² I); returns (x_t, ε) with x_t = α x_data + σ ε."""
        eps = jax.random.normal(key, x_data.shape, x_data.dtype)
        mean, std = self.marginal(x_data, t)
        return mean + std * eps, eps

    def prior_std(self) -> Array:
        return self._sigma(jnp.asarray(self.t_noise, dtype=jnp.result_type(float)))

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Sample the prior N(0, σ(t_noise)² I) (the data term α(t_noise)·x is neglected)."""
        return self.prior_std().astype(dtype) * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x: Array) -> Float[Array, " batch"]:
        """log N(x; 0, σ(t_noise)² I), summed over all but the leading axis."""
        s = self.prior_std()
        d = x[0].size
        sq = jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)
        return -0.5 * sq / s**2 - d * jnp.log(s) - 0.5 * d * jnp.log(2 * jnp.pi)
