"""Guidance: steer a model towards a class label y, as a plain model function (x, t) for samplers.

Classifier guidance (Song et al. 2021, §5 of `shared/seeds/001`; Dhariwal & Nichol 2021): by Bayes,
∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x), so with a classifier of noisy inputs

    score_s(x, t) = score(x, t) + s·∇_x log p_t(y | x),          (s = 1: the conditional score)

and in ε form ε̂ − s·σ(t)·∇_x log p_t(y | x) (since score = −ε/σ): `classifier_guided_model` shifts
a model of any prediction type (prediction='score' is the formula above).

Classifier-free guidance (Ho & Salimans 2022): one network trained with and without the label,

    pred_w = (1 − w)·pred(x, t, ∅) + w·pred(x, t, y),           (w = 1: conditional, w = 0: not)

evaluated in a single forward pass on the doubled batch [x, x], [t, t], [y, ∅].

Modern rules are transforms of the pair (D_good, D_bad) that a `PairGuidance` evaluates once per
call (`predictions`) and then combines (`combine`), so they stack without extra network passes:

    guide            D_bad + w·(D_good − D_bad): the one linear formula (CFG: (cond, uncond))
    autoguidance     the same with a good and a bad network (Karras et al. 2024)
    apg              adaptive projected guidance on x̂0 (Sadat et al. 2024), with momentum: a
                     rule with state across sampler steps (`diffjax.sample` threads it)
    guidance_interval  the rule only where σ/α ∈ (σ_lo, σ_hi], D_good elsewhere
                     (Kynkäänniemi et al. 2024); e.g. guidance_interval(apg(cfg_model(...)), ...)
    cfgpp_sample     CFG++ (Chung et al. 2024): a DDIM rule with the guided x̂0 and the unguided ε̂,
                     not a model (it equals DDIM-CFG with grid-dependent scales, see
                     `cfgpp_equivalent_scales`)

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
from diffjax._jit import filter_jit
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key, is_concrete
from diffjax.grids import GRIDS, make_grid
from diffjax.parameterization import (
    PREDICTIONS,
    ModelFn,
    Prediction,
    check_prediction,
    from_x0_eps,
    to_x0_eps,
)
from diffjax.processes.base import GaussianProcess
from diffjax.solvers import DDIM, integrate

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


def guide(good: Array, bad: Array, guidance_scale: Array) -> Array:
    """D_w = D_bad + w·(D_good − D_bad): the one linear guidance formula. Classifier-free guidance is
    (D_good, D_bad) = (conditional, unconditional) of one network; autoguidance is a good and a bad
    network (Karras et al. 2024). w = 1 gives D_good, w = 0 D_bad."""
    return bad + guidance_scale.astype(good.dtype) * (good - bad)


class PairGuidance:
    """A guidance rule that evaluates a pair of predictions (D_good, D_bad) at (x, t) and combines
    them: `predictions(x, t)` (the network evaluations), `combine(x, t, good, bad)` (no network) and
    `guidance_scale` (w). Transforms (`apg`, `guidance_interval`) reuse `predictions` and replace or
    restrict `combine`, so a stack evaluates the networks once.

    A rule may carry state from one sampler step to the next (APG's momentum): then `stateful` is
    True, `init_state(x)` gives the state before the first step and `call_with_state(x, t, state)`
    -> (prediction, state) is what `diffjax.sample` calls (`diffjax.flow.ThreadModelState`); calling
    such a rule as a plain model (x, t) raises. Stateless rules have the state ()."""

    guidance_scale: Array

    @property
    def stateful(self) -> bool:
        return False

    def init_state(self, x: Array) -> PyTree:
        return ()

    def predictions(self, x: Array, t: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def combine(self, x: Array, t: Array, good: Array, bad: Array) -> Array:
        return guide(good, bad, self.guidance_scale)

    def combine_with_state(self, x, t, good, bad, state) -> tuple[Array, PyTree]:
        return self.combine(x, t, good, bad), state

    def call_with_state(self, x: Array, t, state: PyTree) -> tuple[Array, PyTree]:
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return self.combine_with_state(x, t, *self.predictions(x, t), state)

    def __call__(self, x, t):
        if self.stateful:
            raise ValueError(
                f"{type(self).__name__} carries state across sampler steps (APG momentum), so it is "
                "not a plain model (x, t): sample it with `diffjax.sample` and a one-evaluation "
                "solver ('ddim', 'dpm_solver_pp', 'unipc', 'deis', 'euler', ...), or use momentum=0."
            )
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return self.combine(x, t, *self.predictions(x, t))


@pytree_dataclass(eq=False)
class ClassifierFree(PairGuidance):
    """(1 − w)·pred(x, t, ∅) + w·pred(x, t, y) as a model (x, t) -> prediction (see `cfg_model`)."""

    model: ConditionalModelFn
    labels: PyTree
    guidance_scale: Array
    null_label: PyTree

    @property
    def prediction(self) -> str | None:
        return getattr(self.model, "prediction", None)

    def predictions(self, x, t):
        """(pred(x, t, y), pred(x, t, ∅)) from one forward pass on the doubled batch."""
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        labels = _batch_labels(self.labels, b, "cfg_model")
        nulls = jax.tree.map(lambda lab, nul: jnp.broadcast_to(jnp.asarray(nul, lab.dtype), lab.shape),
                             labels, self.null_label)  # fmt: skip
        both = jax.tree.map(lambda lab, nul: jnp.concatenate([lab, nul]), labels, nulls)
        out = self.model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        return out[:b], out[b:]


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


# -- modern guidance rules: transforms of the pair (D_good, D_bad) ---------------------------------


def _check_scalar(value, name: str, owner: str, low: float = 0.0, high: float = np.inf,
                  open_low: bool = False) -> Array:  # fmt: skip
    """A float scalar leaf; concrete values are checked to lie in [low, high] (or (low, high])."""
    out = _scalar(value)
    if out.ndim != 0:
        raise ValueError(f"{owner}: {name} must be a scalar, got shape {out.shape}.")
    if is_concrete(out):
        v = float(out)
        if np.isnan(v) or v < low or v > high or (open_low and v == low):
            rng = f"{'(' if open_low else '['}{low}, {high}]"
            raise ValueError(f"{owner}: {name} must lie in {rng}, got {v}.")
    return out


def _check_pair_rule(guided, owner: str, linear: bool = False) -> None:
    kinds = (ClassifierFree, Autoguidance) if linear else (PairGuidance,)
    if not isinstance(guided, kinds):
        names = "cfg_model(...) or autoguidance(...)" if linear else "a guidance rule (cfg_model, " \
            "autoguidance, apg, guidance_interval)"
        raise ValueError(f"{owner}: expected {names}, got {type(guided).__name__}. "
                         + ("Apply guidance_interval outermost: guidance_interval(apg(cfg_model(...)))."
                            if linear else ""))  # fmt: skip


def _declared_prediction(guided, prediction: str | None, owner: str) -> str:
    prediction = prediction or getattr(guided, "prediction", None)
    if prediction is None:
        raise ValueError(f"{owner}: the guided model does not declare what it predicts; pass "
                         "prediction='eps' | 'x0' | 'score' | 'v' | 'velocity'.")  # fmt: skip
    check_prediction(prediction)
    return prediction


def _sum_event(a: Array) -> Array:
    return jnp.sum(a, axis=tuple(range(1, a.ndim)), keepdims=True)


@pytree_dataclass(eq=False)
class Conditioned:
    """model(x, t, y) with the labels y bound: a model (x, t) -> prediction (see `bind_labels`)."""

    model: ConditionalModelFn
    labels: PyTree

    @property
    def prediction(self) -> str | None:
        return getattr(self.model, "prediction", None)

    def __call__(self, x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return self.model(x, t, _batch_labels(self.labels, x.shape[0], "bind_labels"))


def bind_labels(model_fn: ConditionalModelFn, y: PyTree) -> Conditioned:
    """The conditional model (x, t) -> model_fn(x, t, y) (labels a scalar or (batch, ...)), a pytree
    with the labels as leaves: e.g. the good and bad networks of `autoguidance`."""
    return Conditioned(model_fn, jax.tree.map(jnp.asarray, y))


@pytree_dataclass(eq=False)
class Autoguidance(PairGuidance):
    """D_bad + w·(D_good − D_bad) with two models (x, t) -> prediction (see `autoguidance`)."""

    good: ModelFn
    bad: ModelFn
    guidance_scale: Array

    @property
    def prediction(self) -> str | None:
        return getattr(self.good, "prediction", None)

    def predictions(self, x, t):
        return self.good(x, t), self.bad(x, t)


def autoguidance(good: ModelFn, bad: ModelFn, guidance_scale: float) -> Autoguidance:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):

        D_w(x, t) = D_bad(x, t) + w·(D_good(x, t) − D_bad(x, t)),

    with D_bad a weaker model of the same conditioning (both conditional — `bind_labels` — or both
    unconditional): a smaller network, an earlier checkpoint. Both must predict the same type (any:
    the formula is affine, module docstring). With D_bad = the unconditional model it is classifier-
    free guidance (`cfg_model` evaluates the pair in one doubled-batch pass instead). A pytree with w
    as a leaf; keeps D_good's declared `prediction`."""
    return Autoguidance(good, bad, _scalar(guidance_scale))


@pytree_dataclass(eq=False)
class APG(PairGuidance):
    """Adaptive projected guidance on the pair of a linear rule (see `apg`)."""

    guided: PairGuidance
    process: GaussianProcess
    eta: Array
    norm_threshold: Array
    prediction: str = static_field(default="eps")
    momentum: float = static_field(default=0.0)

    @property
    def guidance_scale(self) -> Array:
        return self.guided.guidance_scale

    @property
    def stateful(self) -> bool:
        return self.momentum != 0.0

    def init_state(self, x):
        """The running average of Δ = x̂0_good − x̂0_bad (zeros like x) with momentum, else ()."""
        return jnp.zeros_like(x) if self.stateful else ()

    def predictions(self, x, t):
        return self.guided.predictions(x, t)

    def combine(self, x, t, good, bad):
        return self._project(x, t, good, bad, ())[0]

    def combine_with_state(self, x, t, good, bad, state):
        return self._project(x, t, good, bad, state)

    def _project(self, x, t, good, bad, running):
        c = self.process.coefficients(t)
        x0_good = to_x0_eps(good, self.prediction, x, c)[0]
        delta = x0_good - to_x0_eps(bad, self.prediction, x, c)[0]
        if self.stateful:  # Δ̄ ← Δ + β·Δ̄ (the paper's MomentumBuffer), before the clip
            delta = delta + self.momentum * running.astype(delta.dtype)
            running = delta
        r = self.norm_threshold.astype(x.dtype)
        norm = jnp.sqrt(_sum_event(delta**2))
        delta = delta * jnp.minimum(1.0, r / jnp.where(norm > 0, norm, 1.0))
        dd, nn = _sum_event(delta * x0_good), _sum_event(x0_good**2)
        parallel = jnp.where(nn > 0, dd / jnp.where(nn > 0, nn, 1.0), 0.0) * x0_good
        w = self.guidance_scale.astype(x.dtype)
        dx0 = (w - 1.0) * (delta - parallel + self.eta.astype(x.dtype) * parallel)
        a, s = expand(c.alpha, x), expand(c.sigma, x)
        deps = jnp.where(s > 0, -(a / jnp.where(s > 0, s, 1.0)) * dx0, 0.0)  # keeps x = αx̂0 + σε̂
        return good + from_x0_eps(dx0, deps, self.prediction, x, c), running


def apg(
    guided: PairGuidance, process: GaussianProcess, eta: float = 0.0,
    norm_threshold: float = np.inf, prediction: Prediction | None = None, momentum: float = 0.0,
) -> APG:  # fmt: skip
    """Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416, Alg. 1): on the denoised
    estimates D_c = x̂0_good, D_u = x̂0_bad of a linear rule (`cfg_model` or `autoguidance`, whose w
    it uses),

        Δ = D_c − D_u,   Δ̄ ← Δ + β·Δ̄  (momentum β, carried from step to step; Δ ← Δ̄),
        Δ ← Δ·min(1, r/‖Δ‖)  (per example),
        Δ∥ = (⟨Δ, D_c⟩/⟨D_c, D_c⟩)·D_c,   Δ⊥ = Δ − Δ∥,
        D = D_c + (w − 1)·(Δ⊥ + η·Δ∥),

    returned as the same `prediction` type (default: the rule's declared one) with ε re-derived
    from x = αD + σε (ε̂ moves by −(α/σ)·δD: at α = 0, a flow's noise end, ε̂ = x/σ is untouched;
    an 'eps' or 'score' network has no finite x̂0 there, as in plain sampling). η = 1, r = ∞, β = 0
    is `guided` itself; η = 0 (the paper's default) drops the parallel part that oversaturates.

    momentum β ∈ (−1, 1) (the paper uses negative values, e.g. −0.5; static: a new β recompiles):
    Δ̄ starts at 0 and is updated once per sampler step (inside a `guidance_interval`, only where the
    interval is active), so the rule is stateful: sample it with `diffjax.sample` and a solver of one
    evaluation per step; as a plain model (x, t) it raises. β = 0 is stateless.
    A pytree (η, r and the rule's w, labels and parameters are leaves)."""
    owner = "apg"
    _check_pair_rule(guided, owner, linear=True)
    prediction = _declared_prediction(guided, prediction, owner)
    if not isinstance(momentum, int | float | np.floating | np.integer) or not -1.0 < float(momentum) < 1.0:
        raise ValueError(f"{owner}: momentum must be a number in (-1, 1) (static), got {momentum!r}.")
    return APG(guided, process, _check_scalar(eta, "eta", owner),
               _check_scalar(norm_threshold, "norm_threshold", owner, open_low=True), prediction,
               float(momentum))  # fmt: skip


@pytree_dataclass(eq=False)
class GuidanceInterval(PairGuidance):
    """A guidance rule applied only where σ/α ∈ (σ_lo, σ_hi] (see `guidance_interval`)."""

    guided: PairGuidance
    process: GaussianProcess
    sigma_lo: Array
    sigma_hi: Array

    @property
    def guidance_scale(self) -> Array:
        return self.guided.guidance_scale

    @property
    def prediction(self) -> str | None:
        return getattr(self.guided, "prediction", None)

    def active(self, t: Array) -> Array:
        """Whether the EDM noise level σ(t)/α(t) (+∞ where α = 0) lies in (σ_lo, σ_hi]; shape of t."""
        c = self.process.coefficients(t)
        level = jnp.where(c.alpha > 0, c.sigma / jnp.where(c.alpha > 0, c.alpha, 1.0), jnp.inf)
        return (level > self.sigma_lo.astype(level.dtype)) & (level <= self.sigma_hi.astype(level.dtype))

    def predictions(self, x, t):
        return self.guided.predictions(x, t)

    @property
    def stateful(self) -> bool:
        return self.guided.stateful

    def init_state(self, x):
        return self.guided.init_state(x)

    def combine(self, x, t, good, bad):
        inside = expand(self.active(t), x)
        return jnp.where(inside, self.guided.combine(x, t, good, bad), good)

    def combine_with_state(self, x, t, good, bad, state):
        """The rule and its state update where the interval is active; D_good and the state as
        they were elsewhere."""
        inside = expand(self.active(t), x)
        out, new = self.guided.combine_with_state(x, t, good, bad, state)
        return jnp.where(inside, out, good), jax.tree.map(lambda a, b: jnp.where(inside, a, b), new, state)


def guidance_interval(
    guided: PairGuidance, process: GaussianProcess, sigma_lo: float, sigma_hi: float
) -> GuidanceInterval:
    """Guidance in a limited interval (Kynkäänniemi et al. 2024): the rule `guided` (CFG,
    autoguidance, APG, ...) where the noise level σ(t)/α(t) (EDM's σ) lies in (σ_lo, σ_hi], its
    D_good (the conditional model, w = 1) elsewhere. The pair is evaluated once and both outcomes
    combined per example with `jnp.where` (no second network pass). σ_hi = ∞ includes α = 0; an
    empty interval gives D_good, (0, ∞] gives `guided`. Bounds are leaves (no recompilation)."""
    owner = "guidance_interval"
    _check_pair_rule(guided, owner)
    lo = _check_scalar(sigma_lo, "sigma_lo", owner)
    hi = _check_scalar(sigma_hi, "sigma_hi", owner)
    if is_concrete((lo, hi)) and float(hi) < float(lo):
        raise ValueError(f"{owner}: need sigma_lo <= sigma_hi, got ({float(lo)}, {float(hi)}].")
    return GuidanceInterval(guided, process, lo, hi)


# -- CFG++: a sampler rule, not a model ------------------------------------------------------------


@pytree_dataclass(eq=False)
class CFGPlusPlus:
    """The term of CFG++ (Chung et al. 2024, arXiv 2406.08070) for DDIM: `denoise(x, t)` returns
    (x̂0_λ, ε̂_bad) = (x̂0_bad + λ(x̂0_good − x̂0_bad), ε̂_bad) — the guided x̂0 but the unguided ε̂ —
    which is not a consistent pair (x ≠ αx̂0_λ + σε̂_bad), hence no model and no velocity: only
    solvers that step with `denoise` (DDIM) run it. See `cfgpp_sample`."""

    guided: PairGuidance
    process: GaussianProcess
    lam: Array
    prediction: str = static_field(default="eps")

    def denoise(self, x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        good, bad = self.guided.predictions(x, t)
        c = self.process.coefficients(t)
        x0_good = to_x0_eps(good, self.prediction, x, c)[0]
        x0_bad, eps_bad = to_x0_eps(bad, self.prediction, x, c)
        return x0_bad + self.lam.astype(x.dtype) * (x0_good - x0_bad), eps_bad


def cfgpp_equivalent_scales(process: GaussianProcess, ts: Array, lam: float) -> Array:
    """The CFG scales w_k with which DDIM-CFG reproduces CFG++ step by step on the grid ts:

        CFG++:   x_{k+1} = α_{k+1} x̂0_λ + σ_{k+1} ε̂_∅ = (σ_{k+1}/σ_k) x + (α_{k+1} − σ_{k+1}α_k/σ_k) x̂0_∅
                           + α_{k+1} λ Δ,          Δ = x̂0_c − x̂0_∅,
        DDIM-CFG: x_{k+1} = (σ_{k+1}/σ_k) x + (α_{k+1} − σ_{k+1}α_k/σ_k)(x̂0_∅ + w Δ),

    so w_k = λ/(1 − e^{−h_k}) with h_k = l_{k+1} − l_k, l = log(α/σ) (the half log-SNR; w_k = λ where
    h_k = ∞, a step to σ = 0 or from α = 0). Hence CFG++ at λ = 1 is NOT conditional sampling
    (w_k > 1 on every finite step) and, as steps shrink (h → 0), w_k ≈ λ/h_k grows: CFG++ at fixed λ
    has no step-size-independent limit; a fixed CFG scale w corresponds to λ_k = w(1 − e^{−h_k})."""
    ts = jnp.asarray(ts, jnp.result_type(float))
    half = 0.5 * process.log_snr(ts)
    h = half[1:] - half[:-1]
    return _scalar(lam) / jnp.where(jnp.isfinite(h), -jnp.expm1(-h), 1.0)


def cfgpp_sample(
    guided: PairGuidance, process: GaussianProcess, key: Array, shape: tuple[int, ...],
    num_steps: int, lam: float = 1.0, *, prediction: Prediction | None = None,
    grid: str = "uniform", t_eps: float | None = None, x_init: Array | None = None,
    eta: float = 0.0,
) -> Array:  # fmt: skip
    """CFG++ sampling (Chung et al. 2024, Alg. 1, generalised to any process): DDIM steps

        x_{k+1} = α_{k+1} x̂0_λ + σ_{k+1} ε̂_∅,   x̂0_λ = x̂0_∅ + λ(x̂0_c − x̂0_∅),   λ ∈ [0, 1],

    from the prior at t_noise (or x_init) on the grid `grid` (`diffjax.grids`), then x̂0_λ at the
    last time if it is not the data end. `guided` supplies the pair (`cfg_model`: (conditional,
    unconditional) in one pass; or `autoguidance`); its w is not used. λ = 0 is unconditional DDIM
    exactly; any λ is DDIM-CFG with the per-step scales of `cfgpp_equivalent_scales` (so it depends
    on the grid). eta > 0: DDIM's stochastic variant. Returns samples (batch, *event); compiled once
    per structure (λ, labels and parameters are leaves)."""
    owner = "cfgpp_sample"
    check_key(key, owner)
    _check_pair_rule(guided, owner, linear=True)
    prediction = _declared_prediction(guided, prediction, owner)
    term = CFGPlusPlus(guided, process, _check_scalar(lam, "lam", owner, 0.0, 1.0), prediction)
    if not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"{owner}: num_steps must be a positive integer, got {num_steps!r}.")
    if grid not in GRIDS:
        raise ValueError(f"{owner}: unknown grid {grid!r}; choose one of {GRIDS}.")
    if x_init is None and not shape:
        raise ValueError(f"{owner}: pass shape = (batch, *event) or x_init.")
    shape = tuple(int(s) for s in (x_init.shape if x_init is not None else shape))
    final = process.data_end(t_eps) != process.t_data
    return _cfgpp_compiled(DDIM(eta=eta), term, key, x_init, shape=shape, num_steps=int(num_steps),
                           grid=grid, t_eps=t_eps, denoise_final=final)  # fmt: skip


@filter_jit
def _cfgpp_compiled(solver, term, key, x_init, *, shape, num_steps, grid, t_eps, denoise_final):
    dtype = jnp.result_type(float)
    ts = make_grid(term.process, num_steps, grid, t_eps).astype(dtype)
    k_prior, k_steps = jax.random.split(key)
    x = term.process.prior_sample(k_prior, shape, dtype) if x_init is None else jnp.asarray(x_init, dtype)
    x = integrate(solver, term, x, ts, k_steps).y
    return term.denoise(x, ts[-1])[0].astype(x.dtype) if denoise_final else x
