"""Gaussian noising processes: the one interface every diffusion SDE, flow path and chain shares.

Every forward process in diffjax has a Gaussian conditional marginal

    x_t = α(t)·x0 + σ(t)·ε,    ε ~ N(0, I),

on its own time axis, which runs from `t_data` (α = 1, σ = 0: clean data) to `t_noise` (the prior).
Diffusion SDEs put data at t = 0 and noise at t = T, flow paths noise at 0 and data at 1, the DDPM
chain data at step 0 and noise at step T. This is the one time convention of diffjax: *every algorithm
works on the process's own axis* and asks the process for its two ends (`t_noise`, `data_end`), never
which way time runs (`diffjax.processes.convention` re-reads a process in the other convention).

A process states only α(t) and σ(t); everything else is derived here once, from those two:
derivatives (forward-mode autodiff, exact), log-SNR λ = log(α²/σ²) and its inverse, the equivalent
SDE rates f = d log α/dt and g² = |dσ²/dt − 2fσ²| (Kingma et al. 2021, App. A), marginal sampling
as one typed record, the Gaussian transition q(x_t | x_s) and posterior q(x_s | x_t, x0) between any
two times, and the prior. A discrete chain declares `has_rates = False` (no derivatives exist) and
`discrete = True` (times are integer steps); algorithms ask for these capabilities, never for a class.

Shapes: `t` is a scalar or of shape (batch,); `x` is (batch, *event). Coefficients broadcast as
`expand(c, x)`.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._array import expand
from diffjax._validate import check_batch_time, check_time


class Coefficients(NamedTuple):
    """α(t), σ(t) and their time derivatives on the process's own axis (None without rates)."""

    alpha: Array
    sigma: Array
    d_alpha: Array | None
    d_sigma: Array | None


class NoisedSample(NamedTuple):
    """One draw of the forward marginal, with everything computed on the way (so nothing twice):
    x_t = α(t)·x0 + σ(t)·ε, the data x0, the noise ε, the times t (batch,) and their coefficients."""

    x_t: Array
    x0: Array
    eps: Array
    t: Array
    coefficients: Coefficients


def _as_float(t: ArrayLike) -> Array:
    return jnp.asarray(t, dtype=jnp.result_type(float))


class GaussianProcess:
    """x_t = α(t)·x0 + σ(t)·ε. Subclasses are frozen pytree dataclasses stating `t_data`, `t_noise`,
    `alpha(t)` and `sigma(t)` (and may override any derived quantity with a closed form)."""

    has_rates: ClassVar[bool] = True  # dα/dt, dσ/dt, f and g² exist (False for a discrete chain)
    discrete: ClassVar[bool] = False  # times are integer steps

    # -- to be stated by every process ---------------------------------------------------------
    @property
    def t_data(self) -> float:  # time at which x_t is the data
        raise NotImplementedError

    @property
    def t_noise(self) -> float:  # time at which x_t follows the prior
        raise NotImplementedError

    def alpha(self, t: ArrayLike) -> Float[Array, "*t"]:
        """Data coefficient α(t) of the marginal (the schedule's formula, unchecked)."""
        raise NotImplementedError

    def sigma(self, t: ArrayLike) -> Float[Array, "*t"]:
        """Noise standard deviation σ(t) of the marginal (the schedule's formula, unchecked)."""
        raise NotImplementedError

    # -- the time axis --------------------------------------------------------------------------
    @property
    def t_range(self) -> tuple[float, float]:
        return (min(self.t_data, self.t_noise), max(self.t_data, self.t_noise))

    @property
    def default_t_eps(self) -> float:
        """Offset of the last sampling / first likelihood time from t_data: 0 where models are
        finite at the data end (flow paths, the chain); diffusion SDEs override it (1e-3·T)."""
        return 0.0

    def data_end(self, t_eps: float | None = None) -> float:
        """t_data moved by t_eps towards the noise (a static float): where sampling grids end,
        likelihoods start and training times stop. t_eps = None takes `default_t_eps`."""
        t_eps = self.default_t_eps if t_eps is None else t_eps
        span = abs(self.t_noise - self.t_data)
        if isinstance(t_eps, bool) or not isinstance(t_eps, int | float | np.floating | np.integer) \
                or not 0.0 <= t_eps < span:  # fmt: skip
            raise ValueError(
                f"t_eps must be a float in [0, {span}) (the offset of the last time from the data end "
                f"t_data={self.t_data} of {type(self).__name__}), got {t_eps!r}."
            )
        if self.discrete and float(t_eps) != round(float(t_eps)):
            raise ValueError(
                f"t_eps must be an integer number of steps for {type(self).__name__}, got {t_eps}."
            )
        return float(self.t_data + np.sign(self.t_noise - self.t_data) * t_eps)

    def time_interval(self, t_eps: float | None = None) -> tuple[float, float]:
        """(lo, hi): the time axis between the data end (moved by t_eps) and the noise end, sorted."""
        end = self.data_end(t_eps)
        return (min(end, self.t_noise), max(end, self.t_noise))

    def check_time(self, t: ArrayLike) -> Array:
        """`t` as an array, raising if a concrete value leaves [t_data, t_noise]."""
        return check_time(t, *self.t_range, owner=type(self).__name__)

    # -- coefficients ---------------------------------------------------------------------------
    def coefficients(self, t: ArrayLike) -> Coefficients:
        """(α, σ, dα/dt, dσ/dt) at t, derivatives by forward-mode autodiff (exact); without rates
        (`has_rates = False`) the derivatives are None and anything needing them raises."""
        t = _as_float(self.check_time(t))
        if not self.has_rates:
            return Coefficients(self.alpha(t), self.sigma(t), None, None)
        ones = jnp.ones_like(t)
        alpha, d_alpha = jax.jvp(self.alpha, (t,), (ones,))
        sigma, d_sigma = jax.jvp(self.sigma, (t,), (ones,))
        return Coefficients(alpha, sigma, d_alpha, d_sigma)

    def log_snr(self, t: ArrayLike) -> Array:
        """λ(t) = log(α²/σ²), the log signal-to-noise ratio (+∞ at the data, −∞ where α = 0); |α|, |σ|
        so that a schedule rounding to −0 (cos(π/2) in float32) stays finite."""
        t = self.check_time(t)
        return 2.0 * (jnp.log(jnp.abs(self.alpha(t))) - jnp.log(jnp.abs(self.sigma(t))))

    def time_at_log_snr(
        self, lam: Float[ArrayLike, "*n"], t_start: ArrayLike | None = None,
        t_stop: ArrayLike | None = None,
    ) -> Float[Array, "*n"]:  # fmt: skip
        """The time t between t_start (default t_noise) and t_stop (default t_data) with λ(t) = lam,
        by bisection (λ increases towards the data); values outside the range give the nearer end.
        Jittable; accurate to the floating-point resolution of t."""
        lam = jnp.asarray(lam, jnp.result_type(float))
        t_start = jnp.asarray(self.t_noise if t_start is None else t_start, lam.dtype)
        t_stop = jnp.asarray(self.t_data if t_stop is None else t_stop, lam.dtype)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.log_snr(t_start + mid * (t_stop - t_start)) < lam
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        zeros = jnp.zeros_like(lam)
        lo, hi = jax.lax.fori_loop(0, jnp.finfo(lam.dtype).nmant + 3, body, (zeros, zeros + 1.0))
        return t_start + 0.5 * (lo + hi) * (t_stop - t_start)

    # -- the equivalent SDE -----------------------------------------------------------------------
    def _require_rates(self, what: str) -> None:
        if not self.has_rates:
            raise ValueError(
                f"{type(self).__name__} has no time derivatives, so it has no {what}. Use a "
                "sampler that needs only α and σ ('ddim', 'dpm_solver_pp', 'ancestral'), or a "
                "continuous process (for the DDPM chain: VPSDE(beta_min=T·β_1, beta_max=T·β_T))."
            )

    def drift_coeff(self, t: ArrayLike) -> Array:
        """f(t) = d log α/dt: the linear drift f(t)·x of the noising SDE with these marginals, on
        this process's time axis (Kingma et al. 2021, VDM, appendix)."""
        self._require_rates("drift f(t)")
        c = self.coefficients(t)
        return c.d_alpha / c.alpha

    def diffusion_squared(self, t: ArrayLike) -> Array:
        """g²(t) = |dσ²/dt − 2 f(t) σ²|: squared diffusion rate of the noising SDE with these
        marginals, per unit of this process's time (either direction)."""
        self._require_rates("diffusion rate g²(t)")
        c = self.coefficients(t)
        return jnp.abs(2.0 * c.sigma * c.d_sigma - 2.0 * c.d_alpha / c.alpha * c.sigma**2)

    def drift(self, x: Array, t: ArrayLike) -> Array:
        """f(x, t) = f(t)·x."""
        t = check_batch_time(x, t, type(self).__name__)
        return expand(self.drift_coeff(t), x) * x

    def diffusion(self, t: ArrayLike) -> Array:
        """g(t)."""
        return jnp.sqrt(self.diffusion_squared(t))

    # -- the marginal ---------------------------------------------------------------------------
    def marginal(self, x0: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Mean α(t)·x0 and std σ(t) of x_t | x0 (std broadcast to x0's rank)."""
        t = self.check_time(check_batch_time(x0, t, type(self).__name__))
        return expand(self.alpha(t), x0) * x0, expand(self.sigma(t), x0)

    def sample_marginal(self, key: Array, x0: Array, t: ArrayLike, eps: Array | None = None) -> NoisedSample:
        """Draw x_t ~ N(α(t)·x0, σ(t)² I) at times t (scalar or (batch,)); returns the record
        (x_t, x0, ε, t (batch,), coefficients), computing the coefficients once. A given `eps` (x0's
        shape) is used instead of a draw (coupled noise: reflow)."""
        t = jnp.broadcast_to(check_batch_time(x0, t, type(self).__name__), x0.shape[:1])
        c = self.coefficients(t)
        if eps is None:
            eps = jax.random.normal(key, x0.shape, x0.dtype)
        elif eps.shape != x0.shape:
            raise ValueError(f"sample_marginal: eps must have x0's shape {x0.shape}, got {eps.shape}.")
        x_t = expand(c.alpha, x0) * x0 + expand(c.sigma, x0) * eps
        return NoisedSample(x_t, x0, eps, t, c)

    # -- transitions between two times ------------------------------------------------------------
    def transition(self, t: ArrayLike, s: ArrayLike) -> tuple[Array, Array]:
        """(α_{t|s}, σ²_{t|s}) of q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) from the cleaner time s to
        t (Kingma et al. 2021, eq. 9): α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s} σ_s²
        = −σ_t² expm1(λ_t − λ_s), the last form free of cancellation."""
        a_ts = self.alpha(t) / self.alpha(s)
        return a_ts, -self.sigma(t) ** 2 * jnp.expm1(self.log_snr(t) - self.log_snr(s))

    def posterior(self, x_t: Array, x0: Array, t: ArrayLike, s: ArrayLike) -> tuple[Array, Array]:
        """Mean and variance of q(x_s | x_t, x0) for s cleaner than t (Kingma et al. 2021, eq. 11):

            mean = α_{t|s} σ_s²/σ_t² · x_t + α_s σ²_{t|s}/σ_t² · x0,   var = σ²_{t|s} σ_s²/σ_t²,

        with σ²_{t|s}/σ_t² = −expm1(λ_t − λ_s). The DDPM posterior (Ho et al. eqs. 6–7) is s = t − 1.
        t, s: scalars or (batch,); variance of shape (batch, 1, …) or ()."""
        a_ts, v_ts = self.transition(t, s)  # a process's closed-form transition, if it has one
        s2_s, s2_t = self.sigma(s) ** 2, self.sigma(t) ** 2
        frac = v_ts / s2_t  # σ²_{t|s}/σ_t² = −expm1(λ_t − λ_s)
        c_x = a_ts * s2_s / s2_t
        mean = expand(c_x, x_t) * x_t + expand(self.alpha(s) * frac, x_t) * x0
        return mean, expand(jnp.maximum(frac * s2_s, 0.0), x_t)

    # -- the prior ------------------------------------------------------------------------------
    def prior_std(self) -> Array:
        return self.sigma(_as_float(self.t_noise))

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Sample the prior N(0, σ(t_noise)² I) (the data term α(t_noise)·x0 is neglected)."""
        return self.prior_std().astype(dtype) * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x: Array) -> Float[Array, " batch"]:
        """log N(x; 0, σ(t_noise)² I), summed over all but the leading axis."""
        s = self.prior_std()
        d = x[0].size
        sq = jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)
        return -0.5 * sq / s**2 - d * jnp.log(s) - 0.5 * d * jnp.log(2 * jnp.pi)

    def sigma_is_zero_at_data(self) -> bool:
        """Whether σ(t_data) = 0 (flow paths, VP, sub-VP, VE; not the cosine VP SDE), decided where the
        process is concrete (True where it is traced: the cautious answer for
        `diffjax.flow.finite_at_data`)."""
        with jax.ensure_compile_time_eval():
            s = self.sigma(_as_float(self.t_data))
        return isinstance(s, jax.core.Tracer) or float(s) == 0.0

    def alpha_is_zero_at_noise(self) -> bool:
        """Whether α(t_noise) = 0 (flow paths), decided where the process is concrete."""
        with jax.ensure_compile_time_eval():
            a = self.alpha(_as_float(self.t_noise))
        return not isinstance(a, jax.core.Tracer) and float(a) == 0.0
