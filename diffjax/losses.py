"""Training losses as pure functions of (model_fn, x_data, key) once their configuration is bound.

All of them are one regression, `denoising_loss`: draw t from a time sampler and ε ~ N(0, I), form
x_t = α(t) x_data + σ(t) ε, convert the network output (declared as `prediction`) into the `target`
parameterization and regress it onto the true target computed from (x_data, ε):

    L = E_{t, x_data, ε} [ w(t) · mean_over_dims ‖target_θ(x_t, t) − target(x_data, ε, t)‖² ].

Special cases (Song et al. 2021 eq. 7; Ho et al. 2020; Lipman et al. 2023):
    dsm_loss, weighting λ(t):  λ(t)‖s_θ − ∇log p(x_t|x_0)‖² = (λ/σ²)‖ε_θ − ε‖²
        'eps'        λ = σ²  (ε-matching, DDPM's "simple" loss in continuous time)
        'likelihood' λ = g²  (the weighting that bounds the KL / negative log-likelihood)
        'uniform'    λ = 1
    cfm_loss:  ‖u_θ(x_t, t) − (α̇ x_data + σ̇ ε)‖², the conditional flow-matching loss.

`model_fn(x, t) -> prediction` with x: (batch, *event), t: (batch,). To train parameters, close over
them: `lambda params, x, key: dsm_loss(partial(apply, params), x, key, process=sde)`. Class
conditioning is closed over the same way. Every loss is jit/grad/vmap-able.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax.parameterization import ModelFn, Prediction, convert, from_x0_eps
from diffjax.processes.base import GaussianProcess

TimeSampler = Callable[[Array, int], Array]
Weighting = Literal["eps", "likelihood", "uniform"]


# -- time samplers ---------------------------------------------------------------------------
def _data_end_range(process: GaussianProcess, t_eps: float) -> tuple[float, float]:
    """[lo, hi] of the process's time range with the data end moved inward by t_eps."""
    lo, hi = process.t_range
    if process.t_data == lo:
        lo = lo + t_eps
    else:
        hi = hi - t_eps
    if not lo < hi:
        raise ValueError(f"t_eps={t_eps} leaves an empty time range for {type(process).__name__}.")
    return lo, hi


def uniform_time(process: GaussianProcess, t_eps: float = 1e-3) -> TimeSampler:
    """t ~ U[t_data ± t_eps, t_noise]: the data end is avoided by t_eps, where σ → 0."""
    lo, hi = _data_end_range(process, t_eps)
    return lambda key, n: jax.random.uniform(key, (n,), minval=lo, maxval=hi)


def logit_normal_time(
    process: GaussianProcess, mean: float = 0.0, std: float = 1.0, t_eps: float = 1e-3
) -> TimeSampler:
    """t = lo + (hi − lo)·sigmoid(N(mean, std²)) (Esser et al. 2024): emphasises mid times."""
    lo, hi = _data_end_range(process, t_eps)
    return lambda key, n: lo + (hi - lo) * jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,)))


# -- the one regression ----------------------------------------------------------------------
def denoising_loss(
    model_fn: ModelFn,
    x_data: Array,
    key: Array,
    *,
    process: GaussianProcess,
    prediction: Prediction = "eps",
    target: Prediction = "eps",
    weight_fn: Callable[[Array], Array] | None = None,
    time_sampler: TimeSampler | None = None,
    reduce: bool = True,
):
    """E[w(t)·mean‖target_θ − target‖²]; returns a scalar (or the per-example losses (batch,))."""
    time_sampler = time_sampler or uniform_time(process)
    k_t, k_eps = jax.random.split(key)
    t = time_sampler(k_t, x_data.shape[0])
    x_t, eps = process.sample_marginal(k_eps, x_data, t)
    pred = convert(model_fn(x_t, t), x_t, t, process, prediction, target)
    true = from_x0_eps(x_data, eps, target, x_t, process.coefficients(t))
    per_example = jnp.mean(jnp.square(pred - true).reshape(x_data.shape[0], -1), axis=-1)
    if weight_fn is not None:
        per_example = weight_fn(t) * per_example
    return jnp.mean(per_example) if reduce else per_example


def dsm_weight(process: GaussianProcess, weighting: Weighting | Callable) -> Callable:
    """w(t) = λ(t)/σ(t)² that turns the ε-regression into λ-weighted score matching."""
    if callable(weighting):
        return lambda t: weighting(t) / process.sigma(t) ** 2
    if weighting == "eps":
        return lambda t: jnp.ones_like(t)
    if weighting == "likelihood":
        return lambda t: process.diffusion_squared(t) / process.sigma(t) ** 2
    if weighting == "uniform":
        return lambda t: 1.0 / process.sigma(t) ** 2
    raise ValueError(
        f"Unknown weighting {weighting!r}: use 'eps', 'likelihood', 'uniform' or a function λ(t)."
    )


def dsm_loss(
    model_fn: ModelFn,
    x_data: Array,
    key: Array,
    *,
    process: GaussianProcess,
    prediction: Prediction = "eps",
    weighting: Weighting | Callable = "eps",
    time_sampler: TimeSampler | None = None,
    reduce: bool = True,
):
    """Denoising score matching E[λ(t)·mean‖s_θ(x_t, t) − ∇log p(x_t | x_0)‖²]."""
    return denoising_loss(
        model_fn, x_data, key, process=process, prediction=prediction, target="eps",
        weight_fn=dsm_weight(process, weighting), time_sampler=time_sampler, reduce=reduce,
    )  # fmt: skip


def cfm_loss(
    model_fn: ModelFn,
    x_data: Array,
    key: Array,
    *,
    path: GaussianProcess,
    prediction: Prediction = "velocity",
    target: Prediction = "velocity",
    time_sampler: TimeSampler | None = None,
    reduce: bool = True,
):
    """Conditional flow matching E[mean‖u_θ(x_t, t) − (α̇ x_data + σ̇ ε)‖²] (target='velocity');
    'x0' or 'v' targets regress the same model in those parameterizations instead."""
    return denoising_loss(
        model_fn, x_data, key, process=path, prediction=prediction, target=target,
        time_sampler=time_sampler or uniform_time(path, 0.0), reduce=reduce,
    )  # fmt: skip


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


def constant_time(t: float) -> TimeSampler:
    """A sampler that always returns t (for evaluating a loss at a fixed time)."""
    return lambda key, n: jnp.full((n,), t)


__all__ = [
    "TimeSampler", "uniform_time", "logit_normal_time", "constant_time", "denoising_loss",
    "dsm_weight", "dsm_loss", "cfm_loss", "irreducible_loss_gaussian",
]  # fmt: skip
