"""Training losses: one regression, configured by small pieces that compose.

`denoising_loss` draws times from a time sampler and ε ~ N(0, I), forms x_t = α(t) x0 + σ(t) ε
(`process.sample_marginal`: one record, the coefficients computed once), converts the network output
(declared as `prediction`) into the `target` parameterization and regresses it onto the true target
computed from (x0, ε):

    L = E_{t, x0, ε} [ w(t) · mean_over_dims ‖target_θ(x_t, t) − target(x0, ε, t)‖² ].

The weighting w is stated once for every target, as the score-matching weight λ(t) of Song et al.
(2021, eq. 7): since every prediction is affine in ε at fixed x_t, ‖target_θ − target‖² =
c_target(t)²·σ²·‖s_θ − ∇log p(x_t|x0)‖² with c_target = ∂target/∂ε|_x (eps 1, score −1/σ,
x0 −σ/α, v (α²+σ²)/α, velocity σ̇ − α̇σ/α), so w = λ/(c_target² σ²):

    'none'        w = 1: the plain regression in the target's own space (CFM, ε-matching)
    'eps'         λ = σ²: ε-matching (DDPM's "simple" loss in continuous time)
    'likelihood'  λ = g²: the weighting that bounds the KL / negative log-likelihood
    'uniform'     λ = 1
    'edm'         w = (σ̃² + σ_d²)/(σ̃ σ_d)² on ‖x̂0 − x0‖², σ̃ = σ/α (Karras et al. 2022; `EDMWeighting`)
    'min_snr'     w = min(SNR, γ)/SNR on ‖ε̂ − ε‖² (Hang et al. 2023; `MinSNRWeighting`)
    λ(t)          any function of t (the score-matching weight)

On the log-SNR axis the weight per unit λ that a (time sampler, weighting, target) combination puts
on ε-matching is p(λ)·w_ε(λ) (Kingma & Gao 2023): `effective_weighting` estimates it.
A learned per-noise-level uncertainty u(λ) (EDM2, Karras et al. 2024) turns each example's loss L into
e^{−u}·L + u (`log_uncertainty=`; `diffjax.models.UncertaintyWeight` is a small network for it).

    dsm_loss = denoising_loss(target='eps', weighting='eps' by default)
    cfm_loss = denoising_loss(target='velocity', weighting='none' by default)

On the discrete DDPM chain `uniform_time` draws integer steps, so `dsm_loss` there is Ho et al.'s
L_simple (eq. 14). `model(x, t) -> prediction` with x (batch, *event), t (batch,); a class-
conditional model is bound first (`conditional_loss` adds label dropout for classifier-free guidance).
Every loss is a pure function of (model, x0, key), jit/grad/vmap-able.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key
from diffjax.flow import check_model_output, model_prediction
from diffjax.parameterization import ModelFn, Prediction, check_prediction, from_x0_eps, to_x0_eps
from diffjax.processes.base import Coefficients, GaussianProcess

TimeSampler = Callable[[Array, int], Array]


# -- time samplers ---------------------------------------------------------------------------
def uniform_time(process: GaussianProcess, t_eps: float | None = None) -> TimeSampler:
    """t ~ U between the data end (moved by t_eps, default `process.default_t_eps`) and t_noise;
    integer steps U{1, …, T} on a discrete chain."""
    if process.discrete:
        lo, hi = sorted((int(process.data_end(t_eps)), int(process.t_noise)))
        return lambda key, n: jax.random.randint(key, (n,), max(lo, 1), hi + 1)
    lo, hi = process.time_interval(t_eps)
    return lambda key, n: jax.random.uniform(key, (n,), minval=lo, maxval=hi)


def logit_normal_time(
    process: GaussianProcess, mean: float = 0.0, std: float = 1.0, t_eps: float | None = None
) -> TimeSampler:
    """t = lo + (hi − lo)·sigmoid(N(mean, std²)) (Esser et al. 2024): emphasises mid times."""
    if process.discrete:
        raise ValueError("logit_normal_time: the process is discrete; use uniform_time.")
    lo, hi = process.time_interval(t_eps)
    return lambda key, n: lo + (hi - lo) * jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,)))


def lognormal_time(
    process: GaussianProcess, p_mean: float = -1.2, p_std: float = 1.2, t_eps: float | None = None
) -> TimeSampler:
    """EDM's noise levels: ln σ̃ ~ N(p_mean, p_std²) with σ̃ = σ/α = e^{−λ/2}, mapped to the time with
    that log-SNR (`process.time_at_log_snr`; levels beyond the training interval give its ends)."""
    if process.discrete:
        raise ValueError("lognormal_time: the process is discrete; use uniform_time.")
    lo, hi = process.time_interval(t_eps)
    t_noise, t_data = (hi, lo) if process.t_noise > process.t_data else (lo, hi)

    def sampler(key, n):
        log_sigma = p_mean + p_std * jax.random.normal(key, (n,))
        return process.time_at_log_snr(-2.0 * log_sigma, t_noise, t_data)

    return sampler


def antithetic_uniform_time(process: GaussianProcess, t_eps: float | None = None) -> TimeSampler:
    """Low-discrepancy uniform times (Kingma et al. 2021, VDM): one uniform offset u0 shared by the
    batch, t_i ∝ (u0 + i/n) mod 1 — each t_i is uniform, the batch covers the interval evenly."""
    if process.discrete:
        raise ValueError("antithetic_uniform_time: the process is discrete; use uniform_time.")
    lo, hi = process.time_interval(t_eps)

    def sampler(key, n):
        u = jnp.mod(jax.random.uniform(key) + jnp.arange(n) / n, 1.0)
        return lo + (hi - lo) * u

    return sampler


def constant_time(t: float) -> TimeSampler:
    """A sampler that always returns t (for evaluating a loss at a fixed time)."""
    return lambda key, n: jnp.full((n,), t)


TIME_SAMPLERS = {"uniform": uniform_time, "logit_normal": logit_normal_time, "lognormal": lognormal_time,
                 "antithetic": antithetic_uniform_time}


# -- weightings ------------------------------------------------------------------------------
class Weighting:
    """A score-matching weight λ(t) (module docstring) that may use the process's coefficients."""

    def __call__(self, process: GaussianProcess, t: Array, c: Coefficients) -> Array:
        raise NotImplementedError


@pytree_dataclass
class EpsWeighting(Weighting):
    """λ = σ²: unit weight on ‖ε̂ − ε‖²."""

    def __call__(self, process, t, c):
        return c.sigma**2


@pytree_dataclass
class LikelihoodWeighting(Weighting):
    """λ = g²(t): the weighting that bounds the negative log-likelihood (Song et al. 2021b)."""

    def __call__(self, process, t, c):
        return process.diffusion_squared(t)


@pytree_dataclass
class UniformWeighting(Weighting):
    """λ = 1."""

    def __call__(self, process, t, c):
        return jnp.ones_like(c.sigma)


@pytree_dataclass
class EDMWeighting(Weighting):
    """EDM: (σ̃² + σ_d²)/(σ̃ σ_d)² on ‖x̂0 − x0‖², σ̃ = σ/α — unit weight on the preconditioned network's
    own regression (`diffjax.preconditioning`). As λ: σ²(σ² + α²σ_d²)/(α²σ_d²)."""

    sigma_data: float = static_field(default=0.5)

    def __call__(self, process, t, c):
        return c.sigma**2 * (c.sigma**2 + (c.alpha * self.sigma_data) ** 2) / (c.alpha * self.sigma_data) ** 2


@pytree_dataclass
class MinSNRWeighting(Weighting):
    """min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR on ‖ε̂ − ε‖² (= min(SNR, γ) on ‖x̂0 − x0‖²),
    SNR = α²/σ². As λ: σ²·min(SNR, γ)/SNR."""

    gamma: float = static_field(default=5.0)

    def __call__(self, process, t, c):
        snr = (c.alpha / c.sigma) ** 2
        return c.sigma**2 * jnp.minimum(snr, self.gamma) / snr


WEIGHTINGS = {"none": None, "eps": EpsWeighting, "likelihood": LikelihoodWeighting,
              "uniform": UniformWeighting, "edm": EDMWeighting, "min_snr": MinSNRWeighting}  # fmt: skip


def make_weighting(weighting: str | Callable | Weighting, **options) -> str | Callable | Weighting:
    """A weighting from its name in `WEIGHTINGS` and options (e.g. `make_weighting('min_snr', gamma=5)`);
    objects and functions λ(t) pass through."""
    if not isinstance(weighting, str):
        return weighting
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"Unknown weighting {weighting!r}: use one of {tuple(WEIGHTINGS)} or a function λ(t)."
        )
    if weighting == "none":
        if options:
            raise ValueError(f"weighting 'none' takes no options, got {sorted(options)}.")
        return "none"
    try:
        return WEIGHTINGS[weighting](**options)
    except TypeError as err:
        raise ValueError(f"weighting {weighting!r}: invalid options {options} ({err}).") from None


def target_scale(target: Prediction, c: Coefficients) -> Array:
    """c_target = ∂target/∂ε at fixed x_t: the image of the direction (δx0, δε) = (−σ/α, 1)."""
    zero = jnp.zeros_like(c.sigma)
    return from_x0_eps(-c.sigma / c.alpha, jnp.ones_like(c.sigma), target, zero, c)


def loss_weight(
    weighting: str | Callable | Weighting, process: GaussianProcess, t: Array, c: Coefficients,
    target: Prediction,
) -> Array | None:  # fmt: skip
    """w(t) of the module docstring for `target` (None for 'none': no weighting)."""
    weighting = make_weighting(weighting)
    if weighting == "none" or (isinstance(weighting, EpsWeighting) and target == "eps"):
        return None
    lam = weighting(process, t, c) if isinstance(weighting, Weighting) else weighting(t)
    if target == "eps":
        return lam / c.sigma**2
    return lam / (target_scale(target, c) ** 2 * c.sigma**2)


def effective_weighting(
    process: GaussianProcess, time_sampler: TimeSampler, weighting, target: Prediction,
    log_snr_edges: Float[Array, " n_plus_1"], key: Array, num_samples: int = 200_000,
) -> Float[Array, " n"]:  # fmt: skip
    """p(λ)·w_ε(λ) per unit log-SNR in the bins `log_snr_edges` (Kingma & Gao 2023, Fig. 2): the
    weight that drawing t from `time_sampler` and weighting the `target` regression by `weighting`
    puts on ‖ε̂ − ε‖² around each λ, estimated from `num_samples` times (a weighted histogram)."""
    t = time_sampler(key, num_samples)
    c = process.coefficients(t)
    w = loss_weight(weighting, process, t, c, target)
    w_target = jnp.ones_like(c.sigma) if w is None else w
    w_eps = w_target * (target_scale(target, c) if target != "eps" else 1.0) ** 2
    hist, _ = jnp.histogram(process.log_snr(t), bins=log_snr_edges, weights=w_eps)
    return hist / (num_samples * jnp.diff(log_snr_edges))


# -- the one regression ----------------------------------------------------------------------
def denoising_loss(
    model: ModelFn,
    x0: Array,
    key: Array,
    *,
    process: GaussianProcess,
    prediction: Prediction | None = None,
    target: Prediction = "eps",
    weighting: str | Callable = "none",
    time_sampler: TimeSampler | None = None,
    log_uncertainty: Callable[[Array], Array] | None = None,
    eps: Array | None = None,
    reduce: bool = True,
) -> Array:
    """E[w(t)·mean‖target_θ − target‖²]; a scalar (or the per-example losses (batch,)).

    prediction defaults to `model.prediction`; time_sampler to `uniform_time(process)`;
    log_uncertainty(λ) -> u (batch,) of the log-SNR makes each example's loss e^{−u}·L + u;
    eps: the noise paired with each x0 (x0's shape) instead of a fresh draw (reflow's couplings)."""
    prediction = prediction or model_prediction(model)
    check_prediction(prediction)
    check_prediction(target)
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"denoising_loss: x0 must be a non-empty batch (batch, *event), got {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"denoising_loss: x0 must be floating point, got {x0.dtype}; scale the data first.")
    time_sampler = time_sampler or uniform_time(process)
    k_t, k_eps = jax.random.split(check_key(key, "denoising_loss"))
    noised = process.sample_marginal(k_eps, x0, time_sampler(k_t, x0.shape[0]), eps)
    out = model(noised.x_t, noised.t)
    check_model_output(out, x0, "denoising_loss")
    c = noised.coefficients
    pred = from_x0_eps(*to_x0_eps(out, prediction, noised.x_t, c), target, noised.x_t, c) \
        if prediction != target else out  # fmt: skip
    true = from_x0_eps(x0, noised.eps, target, noised.x_t, c)
    per_example = jnp.mean(jnp.square(pred - true).reshape(x0.shape[0], -1), axis=-1)
    w = loss_weight(weighting, process, noised.t, c, target)
    if w is not None:
        per_example = w * per_example
    if log_uncertainty is not None:
        u = log_uncertainty(process.log_snr(noised.t)).reshape(per_example.shape)
        per_example = jnp.exp(-u) * per_example + u
    return jnp.mean(per_example) if reduce else per_example


def dsm_loss(model, x0, key, *, process, prediction=None, weighting="eps", time_sampler=None,
             log_uncertainty=None, reduce=True) -> Array:  # fmt: skip
    """Denoising score matching E[λ(t)·mean‖s_θ(x_t, t) − ∇log p(x_t | x0)‖²], computed as the
    ε-regression with w = λ/σ² (weighting 'eps' is ε-matching). A model that does not declare its
    prediction is taken to predict ε."""
    prediction = prediction or getattr(model, "prediction", None) or "eps"
    return denoising_loss(model, x0, key, process=process, prediction=prediction, target="eps",
                          weighting=weighting, time_sampler=time_sampler, log_uncertainty=log_uncertainty,
                          reduce=reduce)  # fmt: skip


def cfm_loss(model, x0, key, *, process, prediction=None, target="velocity", weighting="none",
             time_sampler=None, log_uncertainty=None, reduce=True) -> Array:  # fmt: skip
    """Conditional flow matching E[w(t)·mean‖u_θ(x_t, t) − (α̇ x0 + σ̇ ε)‖²] (target='velocity');
    'x0' or 'v' targets regress the same model in those parameterizations instead. A model that does
    not declare its prediction is taken to predict the velocity."""
    prediction = prediction or getattr(model, "prediction", None) or "velocity"
    return denoising_loss(model, x0, key, process=process, prediction=prediction, target=target,
                          weighting=weighting, time_sampler=time_sampler, log_uncertainty=log_uncertainty,
                          reduce=reduce)  # fmt: skip


def irreducible_loss_gaussian(process, t, data_std: float, target: Prediction = "eps") -> Array:
    """Minimum of the unweighted per-dim regression at time t for isotropic Gaussian data
    N(μ, s²I): tr Cov(target | x_t)/D. With C = α²s² + σ²:
    eps → α²s²/C,  x0 → s²σ²/C,  velocity → s²(α̇σ − σ̇α)²/C,  v → s²(α² + σ²)²/C."""
    c = process.coefficients(t)
    s2 = data_std**2
    var_x = c.alpha**2 * s2 + c.sigma**2
    num = {
        "eps": c.alpha**2 * s2,
        "x0": s2 * c.sigma**2,
        "velocity": s2 * (c.d_alpha * c.sigma - c.d_sigma * c.alpha) ** 2,
        "v": s2 * (c.alpha**2 + c.sigma**2) ** 2,
    }
    if target not in num:
        raise ValueError(f"irreducible_loss_gaussian: target must be one of {tuple(num)}.")
    return num[target] / var_x


# -- class conditioning ----------------------------------------------------------------------
def drop_labels(key: Array, labels: Array, p_uncond: float, null_label: int) -> Array:
    """Replace each label by the null label ∅ with probability p_uncond (classifier-free guidance
    training, Ho & Salimans 2022)."""
    drop = jax.random.bernoulli(key, p_uncond, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def conditional_loss(
    loss: Callable[[ModelFn, Array, Array], Array],
    model: Callable[..., Array],
    x0: Array,
    labels: PyTree,
    key: Array,
    *,
    p_uncond: float = 0.0,
    null_label: Any = None,
    **model_kwargs,
) -> Array:
    """`loss` of the class-conditional `model(x, t, labels, **model_kwargs)` with the labels dropped
    to `null_label` with probability p_uncond (one network learns p(x | y) and p(x): classifier-free
    guidance). loss: (model_fn, x0, key) -> scalar, e.g. `functools.partial(cfm_loss, process=p)`."""
    k_loss, k_label = jax.random.split(key)
    if p_uncond > 0:
        if null_label is None:
            raise ValueError("conditional_loss: label dropout (p_uncond > 0) needs the null_label.")
        labels = drop_labels(k_label, labels, p_uncond, null_label)
    return loss(BoundLabels(model, labels, model_kwargs), x0, k_loss)


@pytree_dataclass(eq=False)
class BoundLabels:
    """model(x, t) = model(x, t·1.0, labels, **kwargs) (t as floats), keeping the model's declared
    prediction: a class-conditional network seen by a loss or a sampler. A two-time network
    (`second_time=True`: flow maps, MeanFlow) is called as model(x, t, s) = model(x, t, labels, s=s).
    A pytree (the network's and the labels' arrays are leaves), so a compiled sampler is reused for
    new labels and parameters."""

    model: Any
    labels: Any
    kwargs: dict = dataclasses.field(default_factory=dict)
    prediction: str | None = static_field(default=None)

    def __post_init__(self):
        object.__setattr__(self, "kwargs", dict(self.kwargs or {}))
        if self.prediction is None:
            object.__setattr__(self, "prediction", getattr(self.model, "prediction", None))

    def __call__(self, x, t, s=None):
        kwargs = self.kwargs if s is None else {**self.kwargs, "s": jnp.asarray(s).astype(x.dtype)}
        return self.model(x, jnp.asarray(t).astype(x.dtype), self.labels, **kwargs)


__all__ = [
    "TIME_SAMPLERS", "WEIGHTINGS", "BoundLabels", "EDMWeighting", "EpsWeighting", "LikelihoodWeighting",
    "MinSNRWeighting", "TimeSampler", "UniformWeighting", "Weighting", "antithetic_uniform_time",
    "cfm_loss", "conditional_loss", "constant_time", "denoising_loss", "drop_labels", "dsm_loss",
    "effective_weighting", "irreducible_loss_gaussian", "logit_normal_time", "lognormal_time",
    "loss_weight", "make_weighting", "target_scale", "uniform_time",
]  # fmt: skip
