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
singular only where the system is (e.g. x0 from ε at α = 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._validate import check_batch_time
from diffjax.processes.base import Coefficients, GaussianProcess, expand

Prediction = Literal["eps", "x0", "score", "v", "velocity"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "score", "v", "velocity")
ModelFn = Callable[[Array, Array], Array]


def _check_kind(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"Unknown prediction type {kind!r}; choose one of {PREDICTIONS}.")


def to_x0_eps(pred: Array, kind: Prediction, x: Array, c: Coefficients) -> tuple[Array, Array]:
    """(x0, ε) implied by a prediction of type `kind` at x with coefficients c (broadcast to x)."""
    _check_kind(kind)
    a, s, da, ds = (expand(v, x) for v in c)
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if kind == "v":  # [α σ; −σ α] [x0; ε] = [x; v] with x0 ↔ first row
        norm = a**2 + s**2
        return (a * x - s * pred) / norm, (s * x + a * pred) / norm
    # velocity: [α σ; α̇ σ̇] [x0; ε] = [x; u]
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x0_eps(x0: Array, eps: Array, kind: Prediction, x: Array, c: Coefficients) -> Array:
    """The prediction of type `kind` that corresponds to the pair (x0, ε)."""
    _check_kind(kind)
    a, s, da, ds = (expand(v, x) for v in c)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    return da * x0 + ds * eps


def convert(
    pred: Array, x: Array, t, process: GaussianProcess, source: Prediction, target: Prediction
) -> Array:
    """Convert a `source`-type prediction at (x, t) into the `target` type under `process`."""
    _check_kind(source)
    _check_kind(target)
    if source == target:
        return pred
    t = check_batch_time(x, t, "convert")
    c = process.coefficients(t)
    x0, eps = to_x0_eps(pred, source, x, c)
    return from_x0_eps(x0, eps, target, x, c)


def as_prediction(
    model_fn: ModelFn, process: GaussianProcess, source: Prediction, target: Prediction
) -> ModelFn:
    """Wrap `model_fn(x, t)` (which predicts `source`) into a function predicting `target`."""
    _check_kind(source)
    _check_kind(target)
    if source == target:
        return model_fn

    def wrapped(x, t):
        return convert(model_fn(x, t), x, t, process, source, target)

    return wrapped


def x0_eps_fn(model_fn: ModelFn, process: GaussianProcess, source: Prediction):
    """Wrap `model_fn` into a function returning the pair (x0, ε) — what samplers consume."""
    _check_kind(source)

    def wrapped(x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return to_x0_eps(model_fn(x, t), source, x, process.coefficients(t))

    return wrapped


def _clipped_prediction(model_fn, process, low, high, x, t, *, kind):
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    c = process.coefficients(t)
    x0, eps = to_x0_eps(model_fn(x, t), kind, x, c)
    x0 = jnp.clip(x0, low.astype(x0.dtype), high.astype(x0.dtype))
    a, s = expand(c.alpha, x), expand(c.sigma, x)
    eps = jnp.where(s > 0, (x - a * x0) / jnp.where(s > 0, s, 1), eps)  # σ = 0: x0 = x/α, ε free
    return from_x0_eps(x0, eps, kind, x, c)


# one module-level function per kind: the same Partial structure for every call → samplers compile once
_CLIPPED = {kind: functools.partial(_clipped_prediction, kind=kind) for kind in PREDICTIONS}


def clip_denoised(
    model_fn: ModelFn, process: GaussianProcess, kind: Prediction, low: float = -1.0, high: float = 1.0
) -> ModelFn:
    """The model with its denoised estimate x̂0 clipped to the data range [low, high] (Ho et al. 2020's
    `clip_denoised`; diffusers' `clip_sample`), ε re-derived from x = αx̂0 + σε, returned as `kind`.

    For data inside the box the exact E[x0 | x_t] lies inside it too (a mean of points in a convex
    set), so clipping only removes model error; it is a static projection, not dynamic thresholding.
    Returns a `jax.tree_util.Partial` (model_fn, process and bounds are leaves): samplers compile once.
    """
    _check_kind(kind)
    dtype = jnp.result_type(float)
    return jax.tree_util.Partial(_CLIPPED[kind], model_fn, process, jnp.asarray(low, dtype),
                                 jnp.asarray(high, dtype))  # fmt: skip
