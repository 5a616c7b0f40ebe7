"""Guidance: steer a model towards a class label y, as a plain model function (x, t) for samplers.

Classifier guidance (Song et al. 2021, §5 of `shared/seeds/001`; Dhariwal & Nichol 2021): by Bayes,
∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x), so with a classifier of noisy inputs

    score_s(x, t) = score(x, t) + s·∇_x log p_t(y | x),          (s = 1: the conditional score)

and in ε form ε̂ − s·σ(t)·∇_x log p_t(y | x) (since score = −ε/σ): `classifier_guided_model` shifts
a model of any prediction type (prediction='score' is the formula above).

Classifier-free guidance (Ho & Salimans 2022): one network trained with and without the label,

    pred_w = (1 − w)·pred(x, t, ∅) + w·pred(x, t, y),           (w = 1: conditional, w = 0: not)

evaluated in a single forward pass on the doubled batch [x, x], [t, t], [y, ∅].

Every prediction type ('eps', 'score', 'x0', 'v', 'velocity') is affine in the score at fixed (x, t)
(`diffjax.parameterization`: each is a fixed linear map of (x0, ε) with x0 = (x + σ²·score)/α,
ε = −σ·score), so the same combination is valid in any of them and guided models keep their type.

Shapes: x (batch, *event); t scalar or (batch,); labels y a scalar (same label for all) or
(batch, ...) (any conditioning array, e.g. embeddings), or a pytree of such arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass
from diffjax._validate import is_concrete
from diffjax.parameterization import PREDICTIONS, ModelFn, Prediction, check_prediction, from_x0_eps
from diffjax.processes.base import GaussianProcess

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


def classifier_guided_model(
    model_fn: ModelFn,
    process: GaussianProcess,
    classifier_logp_fn: ClassifierLogpFn,
    y: PyTree,
    scale: float = 1.0,
    prediction: Prediction = "eps",
) -> ModelFn:
    """Classifier guidance for a model of any `prediction` type, returning the same type.

    The score shift δ = s·∇ log p_t(y|x) moves (x0, ε) by (σ²/α·δ, −σ·δ), hence the prediction by
    the linear part of `from_x0_eps`: eps → ε̂ − sσ∇ log p(y|x), score → score + δ, x0 → x̂0 + σ²/α·δ,
    and likewise for 'v' and 'velocity' (singular at α = 0 like x0 itself, e.g. flow time 0).
    Returns a `Partial` (compiles once for new labels and scales).
    """
    check_prediction(prediction)
    return jax.tree_util.Partial(_CLASSIFIER_GUIDED[prediction], model_fn, process,
                                 classifier_logp_fn, y, _scalar(scale))  # fmt: skip


def _classifier_guided(model_fn, process, classifier_logp_fn, y, scale, x, t, *, prediction):
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    labels = _batch_labels(y, x.shape[0], "classifier_guided_model")
    delta = scale * classifier_gradient(classifier_logp_fn, x, t, labels)
    c = process.coefficients(t)
    a, s = expand(c.alpha, x), expand(c.sigma, x)
    if prediction == "eps":  # avoid the unused (and, at α = 0, infinite) x0 shift
        return model_fn(x, t) - s * delta
    return model_fn(x, t) + from_x0_eps(s**2 / a * delta, -s * delta, prediction, x, c)


_CLASSIFIER_GUIDED = {p: functools.partial(_classifier_guided, prediction=p) for p in PREDICTIONS}


def _scalar(value) -> Array:
    return jnp.asarray(value, jnp.result_type(float))


def _check_labels(y: PyTree, null_label: PyTree) -> None:
    """Concrete integer class labels must lie in [0, null_label) when ∅ is the integer after the
    classes (diffjax's convention: null_label = num_classes); float labels need a float ∅."""
    for leaf, nul in zip(jax.tree.leaves(y), jax.tree.leaves(null_label), strict=False):
        if not is_concrete(leaf) or not isinstance(nul, int | np.integer):
            continue
        leaf = np.asarray(leaf)
        if not np.issubdtype(leaf.dtype, np.integer):
            raise ValueError(f"cfg_model: class labels must be integers, got dtype {leaf.dtype} "
                             f"(values such as {leaf.ravel()[:3]}).")  # fmt: skip
        if leaf.size and (leaf.min() < 0 or leaf.max() >= nul):
            raise ValueError(
                f"cfg_model: class labels must lie in [0, {int(nul)}) (null label ∅ = {int(nul)}), got "
                f"values in [{leaf.min()}, {leaf.max()}]."
            )


@pytree_dataclass(eq=False)
class ClassifierFree:
    """(1 − w)·pred(x, t, ∅) + w·pred(x, t, y) as a model (x, t) -> prediction (see `cfg_model`)."""

    model: ConditionalModelFn
    labels: PyTree
    guidance_scale: Array
    null_label: PyTree

    @property
    def prediction(self) -> str | None:
        return getattr(self.model, "prediction", None)

    def __call__(self, x, t):
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        labels = _batch_labels(self.labels, b, "cfg_model")
        nulls = jax.tree.map(lambda lab, nul: jnp.broadcast_to(jnp.asarray(nul, lab.dtype), lab.shape),
                             labels, self.null_label)  # fmt: skip
        both = jax.tree.map(lambda lab, nul: jnp.concatenate([lab, nul]), labels, nulls)
        out = self.model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        cond, uncond = out[:b], out[b:]
        w = self.guidance_scale.astype(out.dtype)
        return (1.0 - w) * uncond + w * cond


def cfg_model(
    model_fn: ConditionalModelFn, y: PyTree, guidance_scale: float, null_label: PyTree
) -> ClassifierFree:
    """Classifier-free guidance: (1 − w)·pred(x, t, ∅) + w·pred(x, t, y), with y bound.

    model_fn(x, t, y) -> prediction of any type (linear in the score: module docstring) for
    x (batch, *event), t (batch,), labels y (batch, ...); it is called ONCE per evaluation, on the
    doubled batch ([x, x], [t, t], [y, ∅]). `null_label` (the "no label" token ∅) is broadcast to
    the label shape; integer labels are checked to lie in [0, null_label). w = 1 gives the
    conditional model, w = 0 the unconditional one, w > 1 sharpens towards y. Returns a pytree model
    whose labels and w are array leaves (and which keeps model_fn's declared `prediction`): samplers
    reuse their compiled code for new labels, new w and new parameters.
    """
    _check_labels(y, null_label)
    return ClassifierFree(model_fn, jax.tree.map(jnp.asarray, y), _scalar(guidance_scale), null_label)
