"""Guidance: steer a model towards a class label y, as a plain model function (x, t) for samplers.

Classifier guidance (Song et al. 2021, §5 of `shared/seeds/001`; Dhariwal & Nichol 2021): by Bayes,
∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x), so with a classifier of noisy inputs

    score_s(x, t) = score(x, t) + s·∇_x log p_t(y | x),          (s = 1: the conditional score)

and in ε form ε̂ − s·σ(t)·∇_x log p_t(y | x) (since score = −ε/σ).

Classifier-free guidance (Ho & Salimans 2022): one network trained with and without the label,

    pred_w = (1 − w)·pred(x, t, ∅) + w·pred(x, t, y),           (w = 1: conditional, w = 0: not)

evaluated in a single forward pass on the doubled batch [x, x], [t, t], [y, ∅].

Every prediction kind ('eps', 'score', 'x0', 'v', 'velocity') is affine in the score at fixed (x, t)
(`diffjax.parameterization`: each is a fixed linear map of (x0, ε) with x0 = (x + σ²·score)/α,
ε = −σ·score), so the same combination is valid in any of them and guided models keep their kind.

Shapes: x (batch, *event); t scalar or (batch,); labels y a scalar (same label for all) or
(batch, ...) (any conditioning array, e.g. embeddings), or a pytree of such arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from diffjax.parameterization import ModelFn, Prediction, _check_kind, from_x0_eps
from diffjax.processes.base import GaussianProcess, expand

ConditionalModelFn = Callable[[Array, Array, PyTree], Array]  # (x, t, y) -> prediction
ClassifierLogpFn = Callable[[Array, Array, PyTree], Array]  # (x, t, y) -> log p_t(y|x), (batch,)


def _batch_labels(y: PyTree, batch: int, owner: str) -> PyTree:
    """Broadcast scalar labels to (batch,); other label arrays must lead with the batch axis."""

    def one(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            return jnp.broadcast_to(leaf, (batch,))
        if leaf.shape[0] != batch:
            raise ValueError(
                f"{owner}: labels must be a scalar or have leading axis batch = {batch} (as x); "
                f"got shape {leaf.shape}."
            )
        return leaf

    return jax.tree.map(one, y)


def classifier_gradient(
    classifier_logp_fn: ClassifierLogpFn, x: Array, t: Array, y: PyTree
) -> Array:
    """∇_x log p_t(y | x) per example, as the gradient of the batch sum (examples independent)."""
    return jax.grad(lambda z: jnp.sum(classifier_logp_fn(z, t, y)))(x)


def classifier_guided_score(
    score_fn: ModelFn, classifier_logp_fn: ClassifierLogpFn, y: PyTree, scale: float = 1.0
) -> ModelFn:
    """score_s(x, t) = score(x, t) + s·∇_x log p_t(y | x), with y bound.

    score_fn(x, t) -> (batch, *event); classifier_logp_fn(x, t, y) -> (batch,) log p_t(y_i | x_i)
    (x (batch, *event), t (batch,)). Returns fn(x, t) -> (batch, *event).
    """

    def guided(x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        labels = _batch_labels(y, x.shape[0], "classifier_guided_score")
        return score_fn(x, t) + scale * classifier_gradient(classifier_logp_fn, x, t, labels)

    return guided


def classifier_guided_model(
    model_fn: ModelFn,
    process: GaussianProcess,
    classifier_logp_fn: ClassifierLogpFn,
    y: PyTree,
    scale: float = 1.0,
    kind: Prediction = "eps",
) -> ModelFn:
    """Classifier guidance for a model of any prediction `kind`, returning the same kind.

    The score shift δ = s·∇ log p_t(y|x) moves (x0, ε) by (σ²/α·δ, −σ·δ), hence the prediction by
    the linear part of `from_x0_eps`: eps → ε̂ − sσ∇ log p(y|x), score → score + δ, x0 → x̂0 + σ²/α·δ,
    and likewise for 'v' and 'velocity' (singular at α = 0 like x0 itself, e.g. flow time 0).
    """
    _check_kind(kind)

    def guided(x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        labels = _batch_labels(y, x.shape[0], "classifier_guided_model")
        delta = scale * classifier_gradient(classifier_logp_fn, x, t, labels)
        c = process.coefficients(t)
        a, s = expand(c.alpha, x), expand(c.sigma, x)
        if kind == "eps":  # avoid the unused (and, at α = 0, infinite) x0 shift
            return model_fn(x, t) - s * delta
        return model_fn(x, t) + from_x0_eps(s**2 / a * delta, -s * delta, kind, x, c)

    return guided


def cfg_model(
    model_fn: ConditionalModelFn, y: PyTree, guidance_scale: float, null_label: PyTree
) -> ModelFn:
    """Classifier-free guidance: (1 − w)·pred(x, t, ∅) + w·pred(x, t, y), with y bound.

    model_fn(x, t, y) -> prediction of any kind (linear in the score: module docstring) for
    x (batch, *event), t (batch,), labels y (batch, ...); it is called ONCE per evaluation, on the
    doubled batch ([x, x], [t, t], [y, ∅]). `null_label` (the "no label" token ∅) is broadcast to
    the label shape. w = 1 gives the conditional model, w = 0 the unconditional one, w > 1
    sharpens towards y. Returns fn(x, t) -> (batch, *event) as a `jax.tree_util.Partial` whose
    labels and w are array leaves: samplers reuse their compiled code for new labels, new w and,
    when model_fn is itself a Partial, new parameters.
    """
    return jax.tree_util.Partial(
        _classifier_free, model_fn, y, jnp.asarray(guidance_scale, jnp.result_type(float)), null_label
    )


def _classifier_free(model_fn, y, w, null_label, x, t):
    b = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    labels = _batch_labels(y, b, "cfg_model")
    nulls = jax.tree.map(
        lambda lab, nul: jnp.broadcast_to(jnp.asarray(nul, lab.dtype), lab.shape), labels, null_label
    )
    both = jax.tree.map(lambda lab, nul: jnp.concatenate([lab, nul]), labels, nulls)
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    cond, uncond = out[:b], out[b:]
    return (1.0 - w.astype(out.dtype)) * uncond + w.astype(out.dtype) * cond
