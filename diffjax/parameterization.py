"""Exact conversions between what a network can predict, for any Gaussian process at any t.

With x = α x0 + σ ε and (α, σ, α̇, σ̇) the coefficients at t (time derivatives on the process's own
time axis):

    eps       ε
    x0        x0 = (x − σε)/α
    score     ∇ log p_t(x) = −ε/σ                   (Tweedie: E[x0|x] = (x + σ² score)/α)
    v         v = αε − σx0                           (Salimans & Ho 2022)
    velocity  u = α̇ x0 + σ̇ ε = dx/dt of the probability-flow ODE on the process's time axis

Each prediction is converted to the pair (x0, ε) by solving the 2×2 linear system it forms with
x = αx0 + σε, and from there to any other; the formulas are exact (no approximation), and are
singular only where the system is (e.g. x0 from ε at α = 0). 'velocity' needs the time derivatives,
which a discrete chain does not have (a clear error, not a NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_batch_time
from diffjax.processes.base import Coefficients, GaussianProcess

Prediction = Literal["eps", "x0", "score", "v", "velocity"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "score", "v", "velocity")
"""What a network may predict; `convert` maps any one to any other exactly."""
ModelFn = Callable[[Array, Array], Array]


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction type {prediction!r}; choose one of {PREDICTIONS}.")


def _rates(c: Coefficients, x: Array) -> tuple[Array, Array]:
    if c.d_alpha is None:
        raise ValueError(
            "The 'velocity' prediction is dx/dt = α̇ x0 + σ̇ ε and needs the time derivatives of α and "
            "σ, which a discrete chain (DDPMChain) does not have; use 'eps', 'x0', 'score' or 'v'."
        )
    return expand(c.d_alpha, x), expand(c.d_sigma, x)


def to_x0_eps(pred: Array, prediction: Prediction, x: Array, c: Coefficients) -> tuple[Array, Array]:
    """(x0, ε) implied by a prediction of type `prediction` at x with coefficients c."""
    check_prediction(prediction)
    a, s = expand(c.alpha, x), expand(c.sigma, x)
    if prediction == "eps":
        return (x - s * pred) / a, pred
    if prediction == "x0":
        return pred, (x - a * pred) / s
    if prediction == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if prediction == "v":  # [α σ; −σ α] [x0; ε] = [x; v] with x0 ↔ first row
        norm = a**2 + s**2
        return (a * x - s * pred) / norm, (s * x + a * pred) / norm
    da, ds = _rates(c, x)  # velocity: [α σ; α̇ σ̇] [x0; ε] = [x; u]
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x0_eps(x0: Array, eps: Array, prediction: Prediction, x: Array, c: Coefficients) -> Array:
    """The prediction of type `prediction` that corresponds to the pair (x0, ε)."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    a, s = expand(c.alpha, x), expand(c.sigma, x)
    if prediction == "score":
        return -eps / s
    if prediction == "v":
        return a * eps - s * x0
    da, ds = _rates(c, x)
    return da * x0 + ds * eps


def convert(
    pred: Array, x: Array, t, process: GaussianProcess, prediction: Prediction, to: Prediction
) -> Array:
    """Convert a prediction of type `prediction` at (x, t) into type `to` under `process`."""
    check_prediction(prediction)
    check_prediction(to)
    if prediction == to:
        return pred
    t = check_batch_time(x, t, "convert")
    c = process.coefficients(t)
    return from_x0_eps(*to_x0_eps(pred, prediction, x, c), to, x, c)


def _converted(model_fn, process, prediction, to, x, t):
    return convert(model_fn(x, jnp.broadcast_to(jnp.asarray(t), x.shape[:1])), x, t, process,
                   prediction, to)  # fmt: skip


def as_prediction(
    model_fn: ModelFn, process: GaussianProcess, prediction: Prediction, to: Prediction
) -> ModelFn:
    """`model_fn(x, t)` (which predicts `prediction`) as a model predicting `to`; a pytree
    (`jax.tree_util.Partial`), so samplers compile once for it."""
    check_prediction(prediction)
    check_prediction(to)
    return jax.tree_util.Partial(_converted, model_fn, process, prediction, to)


@pytree_dataclass(eq=False)
class ClippedModel:
    """A model whose denoised estimate x̂0 is clipped to [low, high] (see `clip_denoised`)."""

    model: ModelFn
    process: GaussianProcess
    low: Array
    high: Array
    prediction: str = static_field(default="eps")

    def __call__(self, x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        c = self.process.coefficients(t)
        x0, eps = to_x0_eps(self.model(x, t), self.prediction, x, c)
        x0 = jnp.clip(x0, self.low.astype(x0.dtype), self.high.astype(x0.dtype))
        a, s = expand(c.alpha, x), expand(c.sigma, x)
        eps = jnp.where(s > 0, (x - a * x0) / jnp.where(s > 0, s, 1), eps)  # σ = 0: x0 = x/α, ε free
        return from_x0_eps(x0, eps, self.prediction, x, c)


def clip_denoised(
    model_fn: ModelFn, process: GaussianProcess, prediction: Prediction, low: float = -1.0,
    high: float = 1.0,
) -> ClippedModel:  # fmt: skip
    """The model with its denoised estimate x̂0 clipped to the data range [low, high] (Ho et al. 2020's
    `clip_denoised`; diffusers' `clip_sample`), ε re-derived from x = αx̂0 + σε, returned as the same
    `prediction` (which the result declares).

    For data inside the box the exact E[x0 | x_t] lies inside it too (a mean of points in a convex
    set), so clipping only removes model error; it is a static projection, not dynamic thresholding.
    A pytree (model, process and bounds are leaves): samplers compile once for it.
    """
    check_prediction(prediction)
    dtype = jnp.result_type(float)
    return ClippedModel(model_fn, process, jnp.asarray(low, dtype), jnp.asarray(high, dtype), prediction)
