"""The discrete DDPM chain (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Steps t = 1..T; x_0 is the data. With β_t ∈ (0, 1), α_t = 1 − β_t and ᾱ_t = Π_{s≤t} α_s (ᾱ_0 = 1):

    q(x_t | x_{t−1})     = N(√α_t x_{t−1}, β_t I)                                      (Ho eq. 2)
    q(x_t | x_0)         = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                                    (Ho eq. 4)
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),                                             (Ho eqs. 6–7)
        μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t,
        β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)

(Note the β_t factor in β̃_t; some lecture notes drop it.) The chain is a `GaussianProcess` on the
integer steps of [0, T] with α(t) = √ᾱ_t and σ(t) = √(1 − ᾱ_t): its forward marginal, transition and
posterior are the generic ones (`GaussianProcess.posterior` with s = t − 1 is Ho's μ̃_t, β̃_t), and it
declares `has_rates = False` (no time derivatives: ODE/SDE solvers refuse it with a clear error) and
`discrete = True` (grids round to steps). ᾱ is computed in log space, log ᾱ_t = Σ log1p(−β_s), and
1 − ᾱ_t = −expm1(log ᾱ_t), which keeps float32 relative errors ~1e-7 even for T = 10⁴.

Units: `normal_kl` and `discretized_gaussian_log_likelihood` are elementwise and in nats; the
per-example ELBO quantities (`prior_kl`, `elbo_terms`) are in bits per dimension (mean over the
non-batch axes, divided by ln 2), as reported by Ho et al. The bound of a model is
`diffjax.likelihood.variational_bound`.

Shapes: x is (batch, *event); t is an integer step, scalar or (batch,) (floats are rounded to
the nearest integer; concrete non-integer values raise).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._pytree import pytree_dataclass
from diffjax._validate import check_batch_time, check_less, check_positive, check_time, is_concrete
from diffjax.processes.base import GaussianProcess, expand

ReverseVariance = Literal["posterior", "transition"]
_LN2 = float(np.log(2.0))


def _validate_betas(betas) -> None:
    if not isinstance(betas, np.ndarray | jax.Array) or not is_concrete(betas):
        return  # tracer or placeholder leaf inside a JAX transformation
    b = np.asarray(betas)
    if b.ndim == 0 or b.size == 0:  # ndim > 1 is allowed: chains stacked for jax.vmap
        raise ValueError(
            f"DDPMChain: betas must be a non-empty 1-D array (β_1..β_T), got shape {b.shape}."
        )
    if not np.all((b > 0) & (b < 1)):
        raise ValueError(
            f"DDPMChain: every beta must lie in the open interval (0, 1), got values in "
            f"[{b.min():.6g}, {b.max():.6g}]. Use DDPMChain.linear/cosine or clip the schedule."
        )


@pytree_dataclass
class DDPMChain(GaussianProcess):
    """Discrete Gaussian noising chain with variances betas = (β_1, …, β_T), shape (T,).

    Index convention: `betas[t-1]` belongs to step t; `alpha_bars` has T + 1 entries with
    `alpha_bars[t]` = ᾱ_t and `alpha_bars[0]` = 1. Prefer the accessors `beta(t)`, `alpha_bar(t)`.
    """

    betas: Float[Array, " T"]

    has_rates: ClassVar[bool] = False
    discrete: ClassVar[bool] = True

    def __post_init__(self):
        if isinstance(self.betas, list | tuple):
            object.__setattr__(self, "betas", jnp.asarray(self.betas, dtype=jnp.float32))
        _validate_betas(self.betas)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def linear(
        cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, dtype=jnp.float32
    ) -> DDPMChain:
        """β_t linear from beta_start (t=1) to beta_end (t=T) (Ho et al. 2020: 1e-4 → 0.02)."""
        _check_num_steps(num_steps, "DDPMChain.linear")
        check_positive("beta_start", beta_start, "DDPMChain.linear")
        check_less("beta_start", beta_start, "beta_end", beta_end, "DDPMChain.linear")
        check_less("beta_end", beta_end, "1", 1.0, "DDPMChain.linear")
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
        return cls(jnp.asarray(betas, dtype=dtype))

    @classmethod
    def cosine(
        cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999, dtype=jnp.float32
    ) -> DDPMChain:
        """Nichol & Dhariwal (2021), eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)),
        β_t = min(1 − ᾱ_t/ᾱ_{t−1}, max_beta) (the clip only binds near t = T)."""
        _check_num_steps(num_steps, "DDPMChain.cosine")
        if not s >= 0:
            raise ValueError(f"DDPMChain.cosine: offset s must be >= 0, got s={s}.")
        check_positive("max_beta", max_beta, "DDPMChain.cosine")
        check_less("max_beta", max_beta, "1", 1.0, "DDPMChain.cosine")
        f = cosine_alpha_bar(np.arange(num_steps + 1), num_steps, s)
        betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
        return cls(jnp.asarray(betas, dtype=dtype))

    # -- the schedule ------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """T, the number of noising steps (static: the length of `betas`)."""
        return int(self.betas.shape[0])

    @property
    def t_data(self) -> float:
        return 0.0

    @property
    def t_noise(self) -> float:
        return float(self.num_steps)

    @property
    def log_alpha_bars(self) -> Float[Array, " T+1"]:
        """log ᾱ_t for t = 0..T (log ᾱ_0 = 0)."""
        zero = jnp.zeros((1,), self.betas.dtype)
        return jnp.concatenate([zero, jnp.cumsum(jnp.log1p(-self.betas))])

    @property
    def alpha_bars(self) -> Float[Array, " T+1"]:
        """ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T (ᾱ_0 = 1)."""
        return jnp.exp(self.log_alpha_bars)

    @property
    def one_minus_alpha_bars(self) -> Float[Array, " T+1"]:
        """1 − ᾱ_t for t = 0..T, computed without cancellation."""
        return -jnp.expm1(self.log_alpha_bars)

    @property
    def posterior_variances(self) -> Float[Array, " T"]:
        """β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) for t = 1..T (β̃_1 = 0)."""
        omab = self.one_minus_alpha_bars
        return self.betas * omab[:-1] / omab[1:]

    @property
    def posterior_log_variances_clipped(self) -> Float[Array, " T"]:
        """log β̃_t with the t = 1 entry (log 0) replaced by log β̃_2 (Ho et al.'s code); for a
        one-step chain, by log β_1."""
        pv = self.posterior_variances
        first = pv[1:2] if self.num_steps > 1 else self.betas[:1]
        return jnp.log(jnp.concatenate([first, pv[1:]]))

    # -- time handling -----------------------------------------------------------------------
    def check_time(self, t: ArrayLike) -> Array:
        """t must be an integer step in [0, T] (floats allowed if integer-valued)."""
        t = super().check_time(t)
        _check_integer(t, "DDPMChain")
        return t

    def check_step(self, t: ArrayLike) -> Array:
        """Like `check_time` but for transitions x_{t−1} ↔ x_t: t ∈ [1, T]."""
        t = check_time(t, 1, self.num_steps, owner="DDPMChain (a transition step)")
        _check_integer(t, "DDPMChain")
        return t

    def _index(self, t: Array) -> Array:
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.integer):
            t = jnp.round(t)
        return t.astype(jnp.int32)

    def beta(self, t: ArrayLike) -> Array:
        """β_t for t in 1..T."""
        return self.betas[self._index(self.check_step(t)) - 1]

    def alpha_bar(self, t: ArrayLike) -> Array:
        """ᾱ_t for t in 0..T."""
        return self.alpha_bars[self._index(self.check_time(t))]

    def alpha(self, t):
        """√ᾱ_t (t an integer step in [0, T], checked where concrete: the chain is a lookup)."""
        return jnp.exp(0.5 * self.log_alpha_bars[self._index(self.check_time(t))])

    def sigma(self, t):
        """√(1 − ᾱ_t)."""
        return jnp.sqrt(self.one_minus_alpha_bars[self._index(self.check_time(t))])

    def log_snr(self, t: ArrayLike) -> Array:
        """λ_t = log ᾱ_t − log(1 − ᾱ_t), from the log-space schedule."""
        i = self._index(self.check_time(t))
        return self.log_alpha_bars[i] - jnp.log(self.one_minus_alpha_bars[i])

    def transition(self, t: ArrayLike, s: ArrayLike) -> tuple[Array, Array]:
        """(α_{t|s}, σ²_{t|s}) = (√(ᾱ_t/ᾱ_s), 1 − ᾱ_t/ᾱ_s) from the log-space schedule, and exactly
        (√(1 − β_t), β_t) for one step (the generic −σ_t² expm1(λ_t − λ_s) loses ~1e-4 relative in
        float32 there: λ_t − λ_{t−1} is a small difference of two O(10) log-SNRs)."""
        i, j = self._index(self.check_time(t)), self._index(self.check_time(s))
        d = self.log_alpha_bars[i] - self.log_alpha_bars[j]
        beta = self.betas[jnp.clip(i - 1, 0, self.num_steps - 1)]
        one_step = (i - j) == 1
        return (jnp.where(one_step, jnp.sqrt(1.0 - beta), jnp.exp(0.5 * d)),
                jnp.where(one_step, beta, -jnp.expm1(d)))  # fmt: skip

    # -- forward and reverse steps --------------------------------------------------------------
    def q_step_mean_var(self, x_prev: Array, t: ArrayLike) -> tuple[Array, Array]:
        """Mean √α_t x_{t−1} and variance β_t of q(x_t | x_{t−1}); the variance has shape
        (batch, 1, …) (broadcastable to x_prev)."""
        t = check_batch_time(x_prev, t, "DDPMChain.q_step_mean_var")
        beta = self.beta(t)
        return expand(jnp.sqrt(1.0 - beta), x_prev) * x_prev, expand(beta, x_prev)

    def posterior_mean_variance(
        self, x_t: Array, x0: Array, t: ArrayLike
    ) -> tuple[Array, Array, Array]:
        """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (Ho et al. eqs. 6–7): the generic
        `posterior(x_t, x0, t, t − 1)`, with Ho et al.'s clipped log-variance (log β̃_2 at t = 1,
        where β̃_1 = 0). Returns (mean like x_t, variance, log-variance), the last two (batch, 1, …)."""
        t = self.check_step(check_batch_time(x_t, t, "DDPMChain.posterior_mean_variance"))
        mean, var = self.posterior(x_t, x0, t, t - 1)
        logvar = self.posterior_log_variances_clipped[self._index(t) - 1]
        return mean, var, expand(logvar, x_t)

    def model_log_variance(self, t: ArrayLike, variance: ReverseVariance = "posterior") -> Array:
        """log of the fixed reverse variance of p_θ(x_{t−1} | x_t) (Ho et al. §3.2).

        'posterior': β̃_t (the lower bound on the optimal variance); 'transition': β_t = σ²_{t|t−1}, the
        forward step's variance (the upper one) — the names of `diffjax.Ancestral`'s variances.
        At t = 1 both give log β̃_2, the decoder variance of Ho et al.'s code (β̃_1 = 0)."""
        check_variance(variance)
        i = self._index(self.check_step(t)) - 1
        clipped = self.posterior_log_variances_clipped
        if variance == "posterior":
            return clipped[i]
        return jnp.where(i == 0, clipped[0], jnp.log(self.betas[i]))

    # -- variational bound -------------------------------------------------------------------
    def prior_kl(self, x0: Array) -> Float[Array, " batch"]:
        """KL(q(x_T | x_0) ‖ N(0, I)) in bits per dimension, shape (batch,)."""
        mean, std = self.marginal(x0, self.num_steps)
        kl = normal_kl(mean, 2.0 * jnp.log(std), 0.0, 0.0)
        return mean_bits(kl)

    def elbo_terms(
        self, x0: Array, x_t: Array, t: ArrayLike, model_mean: Array, model_logvar: Array
    ) -> Float[Array, " batch"]:
        """Term L_{t−1} of the bound in bits/dim, shape (batch,), for p_θ(x_{t−1}|x_t) =
        N(model_mean, exp(model_logvar)) with x_t ~ q(x_t | x_0):

            t > 1:  KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))
            t = 1:  −log p_θ(x_0 | x_1), discretized to 8 bits (x_0 in [−1, 1] on the 256-grid).

        model_logvar broadcasts against x (e.g. shape (batch, 1, …) for a fixed variance)."""
        t = check_batch_time(x0, t, "DDPMChain.elbo_terms")
        true_mean, _, true_logvar = self.posterior_mean_variance(x_t, x0, t)
        kl = mean_bits(normal_kl(true_mean, true_logvar, model_mean, model_logvar))
        nll = -mean_bits(
            discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * jnp.asarray(model_logvar))
        )
        return jnp.where(self._index(t) == 1, nll, kl)


# -- Gaussian log-likelihood helpers ------------------------------------------------------------
def normal_kl(mean1: ArrayLike, logvar1: ArrayLike, mean2: ArrayLike, logvar2: ArrayLike) -> Array:
    """KL(N(mean1, e^{logvar1}) ‖ N(mean2, e^{logvar2})) elementwise, in nats (broadcasting):
    ½[logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2} − 1]."""
    mean1, logvar1, mean2, logvar2 = map(jnp.asarray, (mean1, logvar1, mean2, logvar2))
    return 0.5 * (
        logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
        - 1.0
    )


def discretized_gaussian_log_likelihood(x: Array, means: ArrayLike, log_scales: ArrayLike) -> Array:
    """log P(x) for 8-bit data x ∈ [−1, 1] (x = 2k/255 − 1) under N(means, e^{2 log_scales}),
    elementwise in nats: the Gaussian mass of the bin [x − 1/255, x + 1/255], with the edge bins
    extended to −∞ (x = −1) and +∞ (x = 1) (Ho et al. 2020, §3.3). Computed from log Φ with the
    tail on the short side, so it stays finite for bins many standard deviations away. Float32
    relative error of P is ~ε₃₂/min(1, h) for a bin h = (2/255)/scale standard deviations wide
    (e.g. 1e-4 at scale 3; ~1e-7 at the decoder scales √β̃_2 ≈ 0.01 of trained models)."""
    if is_concrete(x) and np.size(x) and np.max(np.abs(np.asarray(x))) > 1.0 + 1e-6:
        raise ValueError(
            "discretized_gaussian_log_likelihood: x must be 8-bit data scaled to [-1, 1] "
            f"(x = 2k/255 - 1), got values up to {np.max(np.abs(np.asarray(x))):.4g} in magnitude."
        )
    x = jnp.asarray(x)
    means, log_scales = jnp.asarray(means), jnp.asarray(log_scales)
    inv_scale = jnp.exp(-log_scales)
    lo = jnp.where(x < -0.999, -jnp.inf, (x - means - 1.0 / 255.0) * inv_scale)
    hi = jnp.where(x > 0.999, jnp.inf, (x - means + 1.0 / 255.0) * inv_scale)
    # log(Φ(hi) − Φ(lo)); reflect (Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)) when the bin is right of 0.
    right = lo > 0
    a = jnp.where(right, -hi, lo)
    b = jnp.where(right, -lo, hi)
    log_b = jax.scipy.special.log_ndtr(b)
    log_a = jax.scipy.special.log_ndtr(a)
    return log_b + jnp.log1p(-jnp.exp(log_a - log_b))


def cosine_alpha_bar(t: ArrayLike, num_steps: int, s: float = 0.008) -> np.ndarray:
    """ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)) (Nichol & Dhariwal 2021, eq. 17),
    in float64 numpy (the target of `DDPMChain.cosine` before clipping)."""
    t = np.asarray(t, dtype=np.float64)

    def f(u):
        return np.cos(0.5 * np.pi * (u / num_steps + s) / (1.0 + s)) ** 2

    return f(t) / f(0.0)


def mean_bits(x: Array) -> Array:
    """Mean over all but the leading axis, converted from nats to bits."""
    return x.reshape(x.shape[0], -1).mean(axis=1) / _LN2


# -- checks ------------------------------------------------------------------------------------
def _check_num_steps(num_steps, owner: str) -> None:
    if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"{owner}: num_steps must be a positive integer, got {num_steps!r}.")


def _check_integer(t: Array, owner: str) -> None:
    if is_concrete(t) and t.size and not jnp.issubdtype(t.dtype, jnp.integer):
        tn = np.asarray(t, dtype=np.float64)
        if np.any(np.abs(tn - np.round(tn)) > 1e-4):
            raise ValueError(
                f"{owner}: the chain is discrete, t must be an integer step (0 = data, T = noise); "
                f"got non-integer values such as {tn[np.abs(tn - np.round(tn)) > 1e-4].flat[0]}."
            )


def check_variance(variance: str) -> None:
    if variance not in ("posterior", "transition"):
        raise ValueError(
            f"Unknown reverse variance {variance!r}; choose 'posterior' (β̃_t) or 'transition' (β_t)."
        )
