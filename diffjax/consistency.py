"""Consistency models (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023, "Improved
techniques for training consistency models", iCT) for any Gaussian process.

A consistency function maps every point of a probability-flow trajectory to the trajectory's end at
t_min (the data end, moved by t_eps): f(x_t, t) = Φ_{t→t_min}(x_t), so f(x, t_min) = x. One network
evaluation then draws a sample (f at the noise end), and a few more refine it (multistep consistency
sampling: `diffjax.flow_map.flow_map_sample(..., renoise=True)`).

Parameterisation (Song et al. 2023, App. C), in EDM's coordinates x̃ = x/α, σ̃ = σ/α of any process
(`diffjax.preconditioning`), with σ̃_min = σ̃(t_min):

    f(x, t) = α_min·[c_skip(σ̃)·x̃ + c_out(σ̃)·F(c_in(σ̃)·x̃, c_noise(σ̃))]
    c_skip = σ_d²/((σ̃ − σ̃_min)² + σ_d²),   c_out = σ_d(σ̃ − σ̃_min)/√(σ̃² + σ_d²)

(c_in, c_noise are EDM's, `edm_scalings`; with σ̃_min = 0, c_skip and c_out are EDM's too). The
factor α_min = α(t_min) returns f in x's own coordinates at t_min, so c_skip(σ̃_min) = 1 and
c_out(σ̃_min) = 0 give f(x, t_min) = x exactly (enforced bit-exactly where t = t_min). Written in α and
σ the coefficients never divide by α:

    α_min c_skip/α = α_min σ_d² α/(g² + α²σ_d²),  α_min c_out = α_min σ_d g/√(σ² + α²σ_d²),
    c_in/α = 1/√(σ² + α²σ_d²),                    g = α(σ̃ − σ̃_min) = σ − α σ̃_min ≥ 0,

so at a flow's noise end (α = 0) f = α_min σ_d F(x/σ, c_noise): finite, and so are its gradients.

Losses (pure functions of (model, x0, key), jit/grad-able; θ⁻ = stop_gradient(θ), the iCT choice,
unless a `target_model` (an EMA) is given; per-example distances d over all event dimensions):

    distillation (CD)  L = E_{n, x0, z} λ(t_n, t_{n+1})·d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n))
                       x_{t_{n+1}} = α x0 + σ z, n ~ U{0, …, N−1} on the grid ts (data end → noise
                       end, ts[0] = t_min), x̂_{t_n} one step of a diffjax ODE solver on the teacher's
                       probability flow from t_{n+1} to t_n.
    training (iCT)     L = E_{i, x0, z} d(f_θ(x0 + σ_{i+1} z), f_θ⁻(x0 + σ_i z))/(σ_{i+1} − σ_i)
                       (in x̃; the same z for both points), on EDM's ρ = 7 grid of σ̃ ∈ [0.002, 80]
                       with N levels, i drawn with p(i) ∝ erf((ln σ_{i+1} − P_mean)/√2 P_std)
                       − erf((ln σ_i − P_mean)/√2 P_std), P_mean = −1.1, P_std = 2, the pseudo-Huber
                       distance d = √(‖a − b‖² + c²) − c, c = 0.00054·√dim, and N growing in training
                       as `ict_num_levels` (the exponential curriculum).

Shapes: x (batch, *event), t scalar or (batch,), x0 (batch, *event); losses return a scalar (or
(batch,) with reduce=False).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key, is_concrete
from diffjax.flow import as_flow, check_model_output
from diffjax.preconditioning import edm_scalings
from diffjax.processes.base import GaussianProcess
from diffjax.solvers.adaptive import Adaptive
from diffjax.solvers.base import Solver

DISTANCES = ("l2", "pseudo_huber")
NOISE_INPUTS = ("log_sigma", "trig")  # the network's c_noise: EDM's ¼ ln σ̃, or TrigFlow's τ
HUBER_C_PER_ROOT_DIM = 0.00054  # iCT's c = 0.00054·√dim (0.03 for 64×64×3 images)


class ConsistencyScalings(NamedTuple):
    """Per-example coefficients, shape (batch,): f = skip·x + out·F(in_·x, noise) in terms of x_t."""

    skip: Array  # α_min c_skip/α: multiplies x_t
    out: Array  # α_min c_out
    in_: Array  # c_in/α: multiplies x_t
    noise: Array  # c_noise


def _t_min(model) -> float:
    """The boundary time, where f(x, t_min) = x: the data end moved by t_eps."""
    return model.process.data_end(model.t_eps)


def _check_scale_and_boundary(model, owner: str) -> None:
    if not model.sigma_data > 0:
        raise ValueError(f"{owner}: sigma_data must be > 0 (the data's std), got {model.sigma_data}.")
    model.process.data_end(model.t_eps)  # raises on a bad t_eps


@pytree_dataclass(eq=False)
class ConsistencyModel:
    """f(x, t) ≈ Φ_{t→t_min}(x) from the raw network `network` (module docstring).

    network(x_in, c_noise, *args, **kwargs) with x_in of x's shape and c_noise (batch,) (as for
    `diffjax.preconditioning.Preconditioned`); extra arguments pass through. t_min =
    `process.data_end(t_eps)` (t_eps None: the process's default, 1e-3·T for diffusion SDEs, 0 for
    flow paths). σ_d: the data's std per dimension. noise_input: the network's noise input c_noise,
    'log_sigma' (EDM's ¼ ln σ̃, clipped to ±3.75 where σ̃ reaches 0 or ∞) or 'trig' (TrigFlow's time
    τ = arctan(σ̃/σ_d) ∈ [0, π/2], sCM's choice: the noise end τ = π/2 lies next to the levels a
    log-normal σ̃ trains, where ¼ ln σ̃ jumps to the clip)."""

    network: Any
    process: GaussianProcess
    sigma_data: float = static_field(default=0.5)
    t_eps: float | None = static_field(default=None)
    noise_input: str = static_field(default="log_sigma")

    def __post_init__(self):
        _check_scale_and_boundary(self, "ConsistencyModel")
        if self.noise_input not in NOISE_INPUTS:
            raise ValueError(
                f"ConsistencyModel: noise_input must be one of {NOISE_INPUTS}, got {self.noise_input!r}."
            )

    t_min = property(_t_min)

    def scalings(self, t: ArrayLike, like: Array) -> ConsistencyScalings:
        t = jnp.broadcast_to(jnp.asarray(t, like.dtype), like.shape[:1])
        p, sd = self.process, self.sigma_data
        t_min = jnp.asarray(self.t_min, like.dtype)
        a_min, s_min = jnp.abs(p.alpha(t_min)), jnp.abs(p.sigma(t_min))
        alpha, sigma = jnp.abs(p.alpha(t)), jnp.abs(p.sigma(t))
        edm = edm_scalings(alpha, sigma, sd)
        at_min = t == t_min
        gap = jnp.where(at_min, 0.0, jnp.maximum(sigma - alpha * (s_min / a_min), 0.0))  # α(σ̃ − σ̃_min)
        skip = a_min * sd**2 * alpha / (gap**2 + (alpha * sd) ** 2)
        out = a_min * sd * gap / jnp.sqrt(sigma**2 + (alpha * sd) ** 2)
        skip, out = jnp.where(at_min, 1.0, skip), jnp.where(at_min, 0.0, out)  # f(x, t_min) = x exactly
        noise = edm.noise if self.noise_input == "log_sigma" else jnp.arctan2(sigma, sd * alpha)
        return ConsistencyScalings(skip, out, edm.in_, noise)

    def __call__(self, x: Array, t: ArrayLike, *args, **kwargs) -> Array:
        s = self.scalings(t, x)
        raw = self.network(expand(s.in_, x) * x, s.noise.astype(x.dtype), *args, **kwargs)
        check_model_output(raw, x, "ConsistencyModel")
        return (expand(s.skip, x) * x + expand(s.out, x) * raw).astype(x.dtype)


@pytree_dataclass(eq=False)
class DDIMConsistencyModel:
    """f(x, t) = α(t_min)·x̂0 + σ(t_min)·ε̂: the one-step DDIM jump to t_min of an ordinary diffusion
    or flow network (x, t, *args) -> `prediction` on `process`, (x̂0, ε̂) its prediction converted
    exactly (`diffjax.parameterization`).

    The boundary condition holds for any network: x = α x̂0 + σ ε̂ at every t, so f(x, t_min) = x
    (enforced bit-exactly where t = t_min). A network trained by diffusion or flow matching therefore
    starts a consistency model as its own one-step sampler (`train.init_from`): sCM's recipe (Lu & Song
    2024), whose TrigFlow parameterisation f = cos τ·x_τ − σ_d sin τ·F_θ(x_τ/σ_d, τ) is this one for a
    velocity network, F_θ = (dx_τ/dτ)/σ_d; with σ(t_min) = 0 (flow paths) f = x̂0. At that start the
    warm-up end (r = 0) of `continuous_consistency_loss` distilling the same network is stationary
    (g ∝ h − x̂0 = 0). sigma_data: σ_d of the losses' TrigFlow time (`trig_time`); t_eps as for
    `ConsistencyModel`."""

    network: Any
    process: GaussianProcess
    prediction: str = static_field(default="velocity")
    sigma_data: float = static_field(default=0.5)
    t_eps: float | None = static_field(default=None)

    def __post_init__(self):
        from diffjax.parameterization import check_prediction

        check_prediction(self.prediction)
        _check_scale_and_boundary(self, "DDIMConsistencyModel")

    t_min = property(_t_min)

    def __call__(self, x: Array, t: ArrayLike, *args, **kwargs) -> Array:
        from diffjax.parameterization import to_x0_eps

        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        out = self.network(x, t, *args, **kwargs)
        check_model_output(out, x, "DDIMConsistencyModel")
        x0, eps = to_x0_eps(out, self.prediction, x, self.process.coefficients(t))
        with jax.ensure_compile_time_eval():  # concrete under jit too (unless the process is traced)
            end = self.process.coefficients(jnp.asarray(self.t_min, x.dtype))
        f = end.alpha * x0
        if not (is_concrete(end.sigma) and float(end.sigma) == 0.0):  # σ(t_min) = 0 (a flow's data
            f = f + end.sigma * eps  # end): ε̂ is not needed, nor finite there for an x0-network
        return jnp.where(expand(t == self.t_min, x), x, f).astype(x.dtype)


# -- distances -------------------------------------------------------------------------------
def _check_distance(distance: str, huber_c: float | None, owner: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"{owner}: unknown distance {distance!r}; choose one of {DISTANCES}.")
    if huber_c is not None and not huber_c > 0:
        raise ValueError(f"{owner}: huber_c must be > 0 (or None for 0.00054·√dim), got {huber_c}.")


def consistency_distance(
    a: Array, b: Array, distance: str = "l2", huber_c: float | None = None
) -> Float[Array, " batch"]:
    """d(a, b) per example over all event dimensions: 'l2' ‖a − b‖², 'pseudo_huber'
    √(‖a − b‖² + c²) − c = ‖a − b‖²/(√(‖a − b‖² + c²) + c) (the second form has no cancellation),
    c = huber_c or 0.00054·√dim (iCT)."""
    _check_distance(distance, huber_c, "consistency_distance")
    sq = jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)
    if distance == "l2":
        return sq
    c = HUBER_C_PER_ROOT_DIM * math.sqrt(math.prod(a.shape[1:])) if huber_c is None else huber_c
    return sq / (jnp.sqrt(sq + c**2) + c)


# -- input checks ----------------------------------------------------------------------------
def _check_batch(x0: Array, owner: str) -> None:
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"{owner}: x0 must be a non-empty batch (batch, *event), got {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"{owner}: x0 must be floating point, got {x0.dtype}; scale the data first.")


def _model_attribute(model, name: str):
    """`name` of the model, looked up through label bindings (`BoundLabels`, as the training step wraps
    every network), or None."""
    from diffjax.losses import BoundLabels

    while isinstance(model, BoundLabels):
        model = model.model
    return getattr(model, name, None)


def _model_t_min(model, process: GaussianProcess) -> float:
    """The boundary time of a `ConsistencyModel` (also inside `BoundLabels`, or any wrapper exposing
    `t_min`); other callables (an exact consistency function) have theirs at the process's default
    data end."""
    t_min = _model_attribute(model, "t_min")
    return process.data_end() if t_min is None else float(t_min)


def _check_grid(ts, process: GaussianProcess, t_min: float, owner: str) -> Array:
    ts = jnp.asarray(ts, jnp.result_type(float))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{owner}: ts must be a 1-D grid of N+1 >= 2 times, got shape {ts.shape}.")
    if is_concrete(ts):
        tn = np.asarray(ts, np.float64)
        towards_noise = np.sign(process.t_noise - process.t_data)
        if not np.all(np.diff(tn) * towards_noise > 0):
            raise ValueError(
                f"{owner}: ts must run strictly from the data end to the noise end (t_data="
                f"{process.t_data}, t_noise={process.t_noise} for {type(process).__name__}), got "
                f"{tn}; reverse a sampling grid with ts[::-1]."
            )
        process.check_time(ts)
        span = abs(process.t_noise - process.t_data)
        if abs(tn[0] - t_min) > 1e-6 * span:
            raise ValueError(
                f"{owner}: ts[0] = {tn[0]} must be the model's boundary time t_min = {t_min}, where "
                "f(x, t_min) = x anchors the consistency chain; start the grid there or set the "
                "model's t_eps."
            )
    return ts


# -- one teacher step per example ------------------------------------------------------------
def _check_solver(solver, owner: str) -> None:
    if isinstance(solver, Adaptive) or not isinstance(solver, Solver):
        raise ValueError(
            f"{owner}: the teacher step needs a fixed-step diffjax solver (dj.Euler(), dj.Heun(), "
            f"dj.DPMSolverPP(), ...), got {solver!r}."
        )


def solver_step(solver: Solver, term, x: Array, t: Array, s: Array, key: Array) -> Array:
    """One step of `solver` on `term` from t to s, per example (t, s of shape (batch,)): each example
    is stepped as a batch of one (vmap), so every diffjax solver's scalar-time `step` applies."""
    _check_solver(solver, "solver_step")

    def one(xi, ti, si, ki):
        y = xi[None]
        carry = solver.init(term, y, jnp.stack([ti, si]))
        return solver.step(term, y, carry, ti, si, ki)[0][0].astype(x.dtype)

    return jax.vmap(one)(x, t, s, jax.random.split(key, x.shape[0]))


# -- consistency distillation ----------------------------------------------------------------
PairWeighting = Callable[[GaussianProcess, Array, Array], Array]  # λ(process, t_n, t_{n+1}) -> (batch,)


def sigma_tilde(process: GaussianProcess, t: ArrayLike) -> Array:
    """σ̃(t) = σ/α = e^{−λ/2}: EDM's noise level of any process (+∞ where α = 0)."""
    return jnp.exp(-0.5 * process.log_snr(t))


def inverse_gap_weighting(process: GaussianProcess, t: Array, t_next: Array) -> Array:
    """λ = 1/(σ̃(t_{n+1}) − σ̃(t_n)) (iCT's weighting; 0 on an interval that reaches σ̃ = ∞)."""
    return 1.0 / (sigma_tilde(process, t_next) - sigma_tilde(process, t))


def consistency_distillation_loss(
    model: Callable,
    x0: Array,
    key: Array,
    *,
    teacher: Callable,
    solver: Solver,
    process: GaussianProcess,
    ts: Float[ArrayLike, " n_plus_1"],
    distance: str = "l2",
    huber_c: float | None = None,
    weighting: PairWeighting | None = None,
    target_model: Callable | None = None,
    prediction: str | None = None,
    reduce: bool = True,
) -> Array:
    """Consistency distillation (Song et al. 2023, Alg. 2): the module docstring's L_CD.

    teacher(x, t) -> prediction (declared by `teacher.prediction` or `prediction`) defines the
    probability flow that one `solver` step (dj.Euler(), dj.Heun(), dj.DPMSolverPP(), ...) follows
    from t_{n+1} to t_n. ts: (N+1,) times from the model's t_min (ts[0]) to the noise end; n ~
    U{0, …, N−1} as n = ⌊uN⌋ with u ~ U[0, 1) (so fixed keys give nearby times on refined grids).
    weighting λ(process, t_n, t_{n+1}) (default 1; `inverse_gap_weighting` is iCT's). The target
    branch f_θ⁻ (`target_model`, default the model itself) is under stop_gradient."""
    owner = "consistency_distillation_loss"
    _check_distance(distance, huber_c, owner)
    _check_batch(x0, owner)
    _check_solver(solver, owner)
    ts = _check_grid(ts, process, _model_t_min(model, process), owner)
    flow = as_flow(teacher, process, prediction)
    k_n, k_z, k_step = jax.random.split(check_key(key, owner), 3)
    n_steps = ts.shape[0] - 1
    n = jnp.minimum(jnp.floor(jax.random.uniform(k_n, x0.shape[:1]) * n_steps).astype(jnp.int32), n_steps - 1)
    t_n, t_next = ts[n], ts[n + 1]
    noised = process.sample_marginal(k_z, x0, t_next)
    x_hat = jax.lax.stop_gradient(solver_step(solver, flow, noised.x_t, t_next, t_n, k_step))
    online = model(noised.x_t, t_next)
    target = jax.lax.stop_gradient((target_model or model)(x_hat, t_n))
    per_example = consistency_distance(online, target, distance, huber_c)
    if weighting is not None:
        per_example = weighting(process, t_n, t_next) * per_example
    return jnp.mean(per_example) if reduce else per_example


# -- improved consistency training -----------------------------------------------------------
class NoiseLevels(NamedTuple):
    """The discretisation of iCT: σ̃ levels (L,) increasing from the boundary, their times (L,) on the
    process's axis (times[0] = t_min) and the probability of each interval (L−1,). L = max_levels ≥ N:
    the entries beyond the N levels repeat σ_max with probability 0 (a traced N under one compile)."""

    sigmas: Array
    times: Array
    probs: Array


def _concrete_float(fn) -> float | None:
    with jax.ensure_compile_time_eval():
        value = fn()
    return None if isinstance(value, jax.core.Tracer) else float(value)


def _levels_size(num_levels, max_levels: int | None, owner: str) -> int:
    """The static length of the level arrays: num_levels itself, or max_levels (needed when
    num_levels is traced)."""
    concrete = is_concrete(num_levels)
    if concrete and (np.ndim(num_levels) or isinstance(num_levels, bool) or int(num_levels) != num_levels
                     or num_levels < 2):  # fmt: skip
        raise ValueError(f"{owner}: num_levels must be an int >= 2, got {num_levels!r}.")
    if max_levels is None:
        if not concrete:
            raise ValueError(f"{owner}: a traced num_levels needs a static max_levels (e.g. 1281).")
        return int(num_levels)
    if not isinstance(max_levels, int | np.integer) or max_levels < 2:
        raise ValueError(f"{owner}: max_levels must be an int >= 2, got {max_levels!r}.")
    if concrete and num_levels > max_levels:
        raise ValueError(f"{owner}: num_levels = {num_levels} exceeds max_levels = {max_levels}.")
    return int(max_levels)


def ict_noise_levels(
    process: GaussianProcess,
    num_levels: int | Array,
    t_min: float,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    max_levels: int | None = None,
) -> NoiseLevels:
    """EDM's ρ-spaced levels σ_i = (σ_min^{1/ρ} + (i−1)/(N−1)(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ, i = 1…N
    (Karras et al. 2022, eq. 5), mapped to times with `process.time_at_log_snr(−2 ln σ_i)`, and iCT's
    discretised log-normal p(i) ∝ erf((ln σ_{i+1} − P_mean)/√2 P_std) − erf((ln σ_i − P_mean)/√2 P_std).

    The first level is the boundary itself: σ_1 = σ̃(t_min), time t_min (when σ̃(t_min) = 0, e.g. a
    flow path's data end, the spacing starts from 0.002 as in iCT and only the first point moves to
    σ̃ = 0, as `diffjax.grids.edm_grid` does with its last point). sigma_min (default: σ̃(t_min), or
    0.002 where that is 0) must not lie below σ̃(t_min); sigma_max (default min(80, σ̃(t_noise)))
    must not exceed σ̃(t_noise), where the process ends. num_levels may be traced (the curriculum
    under one compile) when the static max_levels bounds it."""
    owner = "ict_noise_levels"
    size = _levels_size(num_levels, max_levels, owner)
    if not (rho > 0 and p_std > 0):
        raise ValueError(f"{owner}: need rho > 0 and p_std > 0, got rho={rho}, p_std={p_std}.")
    dtype = jnp.result_type(float)
    s_lo = _concrete_float(lambda: sigma_tilde(process, jnp.asarray(t_min, dtype)))
    s_hi = _concrete_float(lambda: sigma_tilde(process, jnp.asarray(process.t_noise, dtype)))
    if sigma_min is None:
        sigma_min = s_lo if s_lo is not None and s_lo > 0 else 0.002
    if sigma_max is None:
        sigma_max = 80.0 if s_hi is None else min(80.0, s_hi)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"{owner}: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    if s_lo is not None and sigma_min < s_lo * (1 - 1e-6):
        raise ValueError(
            f"{owner}: sigma_min = {sigma_min} lies below σ̃(t_min) = {s_lo} of the model's boundary; "
            "raise sigma_min or lower the model's t_eps."
        )
    if s_hi is not None and sigma_max > s_hi * (1 + 1e-6):
        raise ValueError(
            f"{owner}: sigma_max = {sigma_max} exceeds σ̃(t_noise) = {s_hi} of {type(process).__name__}; "
            "the top levels would collapse onto t_noise. Lower sigma_max."
        )
    n = jnp.asarray(num_levels, dtype)
    i = jnp.minimum(jnp.arange(size, dtype=dtype) / (n - 1), 1.0)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (lo + i * (hi - lo)) ** rho
    sigmas = sigmas.at[0].set(sigma_tilde(process, jnp.asarray(t_min, dtype)))  # the boundary
    times = process.time_at_log_snr(-2.0 * jnp.log(sigmas), process.t_noise, t_min).astype(dtype)
    times = times.at[0].set(t_min)
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    probs = jnp.where(jnp.arange(size - 1) < n - 1, jnp.diff(cdf), 0.0)
    return NoiseLevels(sigmas, times, probs / probs.sum())


def consistency_training_loss(
    model: Callable,
    x0: Array,
    key: Array,
    *,
    process: GaussianProcess,
    num_levels: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    distance: str = "pseudo_huber",
    huber_c: float | None = None,
    target_model: Callable | None = None,
    max_levels: int | None = None,
    reduce: bool = True,
) -> Array:
    """Improved consistency training (Song & Dhariwal 2023, iCT; no teacher): the module docstring's
    L_CT on `ict_noise_levels(process, num_levels, model's t_min, ...)`, in the process's own
    coordinates: x_{t_i} = α(t_i) x0 + σ(t_i) z with one z for both points, weight 1/(σ_{i+1} − σ_i).
    The level i is drawn by inverting the CDF of p at u ~ U[0, 1) (fixed keys give nearby levels
    for every N). num_levels is a Python int (each value compiles once: `ict_num_levels` takes 8), or
    a traced int with a static bound max_levels (one compile for the whole curriculum)."""
    owner = "consistency_training_loss"
    _check_distance(distance, huber_c, owner)
    _check_batch(x0, owner)
    levels = ict_noise_levels(process, num_levels, _model_t_min(model, process), sigma_min=sigma_min,
                              sigma_max=sigma_max, rho=rho, p_mean=p_mean, p_std=p_std,
                              max_levels=max_levels)  # fmt: skip
    k_i, k_z = jax.random.split(check_key(key, owner))
    u = jax.random.uniform(k_i, x0.shape[:1], levels.probs.dtype)
    i = jnp.minimum(jnp.searchsorted(jnp.cumsum(levels.probs), u, side="right"), jnp.asarray(num_levels) - 2)
    t_i, t_next = levels.times[i], levels.times[i + 1]
    weight = 1.0 / (levels.sigmas[i + 1] - levels.sigmas[i])
    z = jax.random.normal(k_z, x0.shape, x0.dtype)

    def point(t):
        return expand(process.alpha(t), x0) * x0 + expand(process.sigma(t), x0) * z

    online = model(point(t_next), t_next)
    target = jax.lax.stop_gradient((target_model or model)(point(t_i), t_i))
    per_example = weight.astype(x0.dtype) * consistency_distance(online, target, distance, huber_c)
    return jnp.mean(per_example) if reduce else per_example


def ict_num_levels(step: int | Array, total_steps: int, s0: int = 10, s1: int = 1280) -> int | Array:
    """iCT's exponential curriculum N(k) = min(s0·2^{⌊k/K'⌋}, s1) + 1 with
    K' = ⌊K/(log₂⌊s1/s0⌋ + 1)⌋ (Song & Dhariwal 2023, eq. 11): 11, 21, 41, …, 1281 levels over K
    training steps for the defaults (8 stages). A Python int step gives an int; a traced (scalar,
    integer) step — the train step's counter inside `jit` — gives an int32 array, the same values, for
    `consistency_training_loss(..., max_levels=s1 + 1)` (one compile for the whole curriculum)."""
    if not (isinstance(total_steps, int | np.integer) and total_steps >= 1):
        raise ValueError(f"ict_num_levels: need an int total_steps >= 1, got {total_steps!r}.")
    if not (isinstance(s0, int | np.integer) and isinstance(s1, int | np.integer) and 1 <= s0 <= s1):
        raise ValueError(f"ict_num_levels: need integers 1 <= s0 <= s1, got s0={s0}, s1={s1}.")
    stage_len = max(int(total_steps // (math.floor(math.log2(s1 // s0)) + 1)), 1)
    if isinstance(step, int | np.integer):
        if step < 0:
            raise ValueError(f"ict_num_levels: need step >= 0, got {step}.")
        return int(min(s0 * 2 ** (int(step) // stage_len), s1) + 1)
    step = jnp.asarray(step)
    if step.shape != () or not jnp.issubdtype(step.dtype, jnp.integer):
        raise ValueError(f"ict_num_levels: a traced step must be an integer scalar, got "
                         f"{step.dtype}{step.shape}.")
    doublings = jnp.minimum(jnp.maximum(step, 0) // stage_len, math.ceil(math.log2(s1 / s0)))  # no overflow
    return jnp.minimum(s0 * 2**doublings.astype(jnp.int32), s1) + 1


# -- continuous-time consistency (sCM) -------------------------------------------------------
def trig_time(process: GaussianProcess, t: ArrayLike, sigma_data: float) -> Array:
    """TrigFlow's time τ = arctan(σ̃/σ_d) ∈ [0, π/2] of the process's time t (Lu & Song 2024): in the
    coordinates x_τ = cos τ·x0 + σ_d sin τ·z = x_t·σ_d/√(σ² + α²σ_d²) every Gaussian process is
    TrigFlow. Computed as atan2(σ, σ_d α), finite at α = 0 (τ = π/2)."""
    c = process.coefficients(jnp.asarray(t))
    return jnp.arctan2(jnp.abs(c.sigma), sigma_data * jnp.abs(c.alpha))


def continuous_consistency_loss(
    model: Callable,
    x0: Array,
    key: Array,
    *,
    process: GaussianProcess,
    sigma_data: float | None = None,
    teacher: Callable | None = None,
    prediction: str | None = None,
    time_sampler: Callable[[Array, int], Array] | None = None,
    p_mean: float = -1.0,
    p_std: float = 1.4,
    warmup: ArrayLike = 1.0,
    tangent_c: float | None = 0.1,
    log_uncertainty: Callable[[Array], Array] | None = None,
    reduce: bool = True,
) -> Array:
    """Continuous-time consistency training (sCT) or distillation (sCD, with a `teacher`): the loss of
    sCM (Lu & Song 2024, "Simplifying, stabilizing and scaling continuous-time consistency models"),
    for any consistency function f(x, t) ≈ Φ_{t→t_min}(x) on any process.

    The Δt → 0 limit of consistency distillation has the gradient E[(∂f/∂θ)ᵀ df⁻/dt]: it moves
    f(x_t, t) against its total derivative along the probability flow, df/dt = ∂_t f + (∇_x f)·v,
    which ONE forward-mode pass gives (`jax.jvp(f, (x_t, t), (v, 1))`, θ⁻ = stop_gradient(θ)). In
    TrigFlow's time τ (`trig_time`) with h = f/α(t_min) (f in data units), c = cos τ, s = sin τ, sCM's
    tangent with the warm-up factor r ∈ [0, 1] is

        g = r·c·dh/dτ + (1 − r)·(c²/s)·(h − x̂0),   dh/dτ = (df/dt)/(α(t_min)·dτ/dt),

    which is their g = −c²(σ_d F⁻ − dx_τ/dτ) − r·c·s·(x_τ + σ_d dF⁻/dτ) rewritten for
    f = c·x_τ − σ_d s·F (a `ConsistencyModel` with σ̃(t_min) = 0 has exactly this form, F = −network):
    r = 1 is the consistency tangent, r = 0 the x0-regression of h (TrigFlow's diffusion loss). The
    tangent is normalised, ĝ = g/(rms(g) + c) per example (`tangent_c` = c, None for none), and

        L = E_{t, x0, z} mean_dims((h_θ − sg(h_θ))/(σ_d s) + sg(ĝ))²

    (their ‖F_θ − F_θ⁻ − ĝ‖²: value ‖ĝ‖², gradient 2/(σ_d s)·(∂h/∂θ)ᵀ ĝ; with log_uncertainty(λ) -> u
    each example's L becomes e^{−u}·L + u, sCM's adaptive weighting). Training (no teacher): x_t =
    α x0 + σ z, v = α̇ x0 + σ̇ z, x̂0 = x0; g is affine in (v, x̂0), so its mean given x_t is the
    distillation tangent with the exact flow (the normalisation, a nonlinear map, is the only bias).
    Distillation: v and x̂0 are the teacher's probability flow at (x_t, t) (one evaluation).

    model: a callable f(x, t) (`ConsistencyModel`, labels bound or not, or an exact consistency
    function). sigma_data: σ_d of TrigFlow's coordinates (default: the model's, also through
    `BoundLabels`, else 0.5).
    time_sampler(key, n) -> t on the process's axis; default sCM's τ = arctan(e^ξ/0.5), ξ ~ N(p_mean,
    p_std²) (their CIFAR-10 values −1.0, 1.4; written for σ_d = 0.5): ln σ̃ = ln(σ_d/0.5) + ξ, the
    same law of τ for any σ_d, mapped to t over the model's interval. warmup: r (a float, or traced:
    a schedule under one compile). Returns a scalar (or (batch,) with reduce=False)."""
    from diffjax.losses import lognormal_time
    from diffjax.parameterization import from_x0_eps

    owner = "continuous_consistency_loss"
    _check_batch(x0, owner)
    if sigma_data is None:
        sigma_data = _model_attribute(model, "sigma_data") or 0.5
    sd = float(sigma_data)
    if not sd > 0:
        raise ValueError(f"{owner}: sigma_data must be > 0, got {sd}.")
    if not p_std > 0:
        raise ValueError(f"{owner}: p_std must be > 0, got {p_std}.")
    if tangent_c is not None and not tangent_c > 0:
        raise ValueError(f"{owner}: tangent_c must be > 0 (or None: no normalisation), got {tangent_c}.")
    if is_concrete(warmup) and not (np.ndim(warmup) == 0 and 0.0 <= float(warmup) <= 1.0):
        raise ValueError(f"{owner}: warmup r must be a scalar in [0, 1], got {warmup!r}.")
    if process.discrete:
        raise ValueError(f"{owner}: needs a continuous-time process, not a discrete chain.")
    t_min = _model_t_min(model, process)
    if time_sampler is None:  # sCM's τ = arctan(e^{N(P_mean, P_std²)}/0.5): σ̃ log-normal relative to σ_d
        t_eps = abs(t_min - process.t_data)
        time_sampler = lognormal_time(process, p_mean + math.log(sd / 0.5), p_std, t_eps=t_eps)
    flow = None if teacher is None else as_flow(teacher, process, prediction)
    k_t, k_z = jax.random.split(check_key(key, owner))
    n, dtype = x0.shape[0], x0.dtype
    t = jnp.broadcast_to(jnp.asarray(time_sampler(k_t, n), dtype), (n,))
    noised = process.sample_marginal(k_z, x0, t)
    x_t, c = noised.x_t, noised.coefficients
    if flow is None:  # training: the conditional velocity and the data itself
        v, x0_hat = expand(c.d_alpha, x0) * x0 + expand(c.d_sigma, x0) * noised.eps, x0
    else:  # distillation: the teacher's probability flow
        x0_hat, eps_hat = flow.denoise(x_t, t)
        v = from_x0_eps(x0_hat, eps_hat, "velocity", x_t, c)
    v, x0_hat = jax.lax.stop_gradient(v.astype(dtype)), jax.lax.stop_gradient(x0_hat.astype(dtype))
    f, df_dt = jax.jvp(lambda x, tt: model(x, tt), (x_t, t), (v, jnp.ones_like(t)))
    alpha, sigma = jnp.abs(c.alpha), jnp.abs(c.sigma)
    a_dot, s_dot = jnp.sign(c.alpha) * c.d_alpha, jnp.sign(c.sigma) * c.d_sigma
    norm2 = sigma**2 + (sd * alpha) ** 2
    cos, sin = sd * alpha / jnp.sqrt(norm2), sigma / jnp.sqrt(norm2)
    dtau_dt = sd * (s_dot * alpha - sigma * a_dot) / norm2
    a_min = jnp.abs(process.alpha(jnp.asarray(t_min, dtype)))
    h, dh_dtau = f / a_min, df_dt / (a_min * expand(dtau_dt, x0))
    inv_sin = jnp.where(sin > 0, 1.0 / jnp.where(sin > 0, sin, 1.0), 0.0)  # s = 0 at the boundary: no signal
    r = jnp.asarray(warmup, dtype)
    g = r * expand(cos, x0) * dh_dtau + (1 - r) * expand(cos**2 * inv_sin, x0) * (h - x0_hat)
    g = jax.lax.stop_gradient(g)
    if tangent_c is not None:
        rms = jnp.sqrt(jnp.mean(jnp.square(g).reshape(n, -1), axis=-1))
        g = g / expand(rms + tangent_c, x0)
    delta = (h - jax.lax.stop_gradient(h)) * expand(inv_sin / sd, x0)
    per_example = jnp.mean(jnp.square(delta + g).reshape(n, -1), axis=-1)
    if log_uncertainty is not None:
        u = log_uncertainty(process.log_snr(t)).reshape(per_example.shape)
        per_example = jnp.exp(-u) * per_example + u
    per_example = per_example.astype(dtype)
    return jnp.mean(per_example) if reduce else per_example


__all__ = [
    "DISTANCES", "ConsistencyModel", "ConsistencyScalings", "DDIMConsistencyModel", "NoiseLevels",
    "consistency_distance",
    "consistency_distillation_loss", "consistency_training_loss", "continuous_consistency_loss",
    "ict_noise_levels", "ict_num_levels", "inverse_gap_weighting", "sigma_tilde", "solver_step", "trig_time",
]  # fmt: skip
