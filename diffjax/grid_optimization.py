"""Time grids learned by differentiation: the gradient of a sampler's endpoint error w.r.t. its grid.

For a deterministic fixed-grid solver Φ (DPM-Solver++, UniPC, Heun, DDIM, …) and n steps, the
sampler maps prior noise x_T to x̂(x_T; t_0..t_n) = D(Φ(x_T; t_0, …, t_n)), D the final denoising
x̂0(·, t_n) when the grid stops short of the data (`diffjax.sample`'s `denoise_final`). Its error is
measured against the probability-flow map x*(x_T) of the *same* model (its ODE solved accurately
from the same noise, computed once, outside the gradient), and the grid minimises

    L(t) = E_{x_T} e(x_T)²,     e(x_T)² = (1/D) ‖x̂(x_T; t) − x*(x_T)‖²,

(or, with `objective='log'`, the mean of log(e² + ε_ref²): the typical error rather than the rare
noises a grid sends to another mode, which dominate the mean square in 16D) — a sample mean over a
fixed training batch of noises, by Adam on the grid's logits (in the spirit of
"Align Your Steps", Sabour et al. 2024, which optimises a KL bound instead, and of learned
discretisations such as Watson et al. 2021, "Learning to efficiently sample from diffusion
probabilistic models"). The gradient flows through `diffjax.solvers.integrate` (one `lax.scan`) and
the model, in forward mode (`grid_loss_and_grad`: n tangents; see there why not reverse mode).

Parameterisation (`GridParameterization`): the ends are fixed, t_0 = t_noise and t_n = t_end
(`process.data_end(t_eps)`); the n increments of the log-SNR λ = log(α²/σ²) are a softmax of n
unconstrained logits z (with a floor, so every step is a positive share of the range):

    f = (1 − floor)·softmax(z) + floor/n,    λ_i = λ_0 + (λ_n − λ_0)·Σ_{j<i} f_j,   t_i = t(λ_i),

with λ_0, λ_n the log-SNRs of the ends, an infinite one (α = 0 at a flow's noise end, σ = 0 at the
data) replaced by a finite stand-in (∓15 as in `logsnr_grid`, widened to contain the start grid).
Every grid is strictly monotone by construction and z = 0 is `logsnr_grid`. t(λ) is
`process.time_at_log_snr` (bisection), differentiated by the implicit function theorem,
dt/dλ = 1/λ'(t) (`time_at_log_snr_differentiable`). Inside the solver the fixed ends carry zero
tangents into λ(t) where dλ/dt = ∞ (a flow's ends); `FixedEnds` keeps those tangents zero.

    res = optimize_grid(DPMSolverPP(order=2), model, VPSDE(), key, (256, 2), 5)
    dj.sample("dpm_solver_pp", model, VPSDE(), key, (512, 2), 5, grid=res.ts)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

from diffjax._jit import filter_jit
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key
from diffjax.flow import ProbabilityFlow, as_flow
from diffjax.grids import GRIDS, make_grid
from diffjax.processes.base import GaussianProcess
from diffjax.sampling import make_solver
from diffjax.solvers import Adaptive, DPMSolverPP, Solver, integrate


def time_at_log_snr_differentiable(
    process: GaussianProcess, lam: Float[ArrayLike, "*n"], t_start: float, t_stop: float
) -> Float[Array, "*n"]:
    """`process.time_at_log_snr(lam, t_start, t_stop)` with the derivative of the implicit function
    λ(t(λ, θ); θ) = λ:  ṫ = (λ̇ − ∂λ/∂θ·θ̇) / λ'(t)  (θ the process's array parameters, if any);
    the bisection itself has zero derivative."""

    @jax.custom_jvp
    def solve(process, lam):
        return process.time_at_log_snr(lam, t_start, t_stop)

    @solve.defjvp
    def solve_jvp(primals, tangents):
        process, lam = primals
        process_dot, lam_dot = tangents
        t = solve(process, lam)
        _, dlam_dt = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
        _, dlam_dtheta = jax.jvp(lambda p: p.log_snr(t), (process,), (process_dot,))
        return t, (lam_dot - dlam_dtheta) / dlam_dt

    return solve(process, jnp.asarray(lam, jnp.result_type(float)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fixed_ends(name: str, process: GaussianProcess, t: Array) -> Array:
    return getattr(process, name)(t)


@_fixed_ends.defjvp
def _fixed_ends_jvp(name, primals, tangents):
    """process.<name>(t) with the tangent in t dropped where t's tangent is zero (a fixed end, where
    the derivative in t may be infinite: dλ/dt, dσ/dt at σ = 0, dα/dt at α = 0)."""
    process, t = primals
    process_dot, t_dot = tangents
    fn = getattr(process, name)
    value, d_dt = jax.jvp(fn, (t,), (jnp.ones_like(t),))
    _, d_dtheta = jax.jvp(lambda p: getattr(p, name)(t), (process,), (process_dot,))
    return value, jnp.where(t_dot == 0, 0.0, d_dt * t_dot) + d_dtheta


@pytree_dataclass
class FixedEnds(GaussianProcess):
    """`process` itself, except that a time with zero tangent gives α, σ and λ a zero tangent.

    The grid's ends are constants, but forward-mode differentiation still carries their (zero)
    tangents, and at an end where λ = ∓∞ (α = 0 at a flow's noise end, σ = 0 at its data end)
    dλ/dt = ∞ and 0·∞ = NaN. Every value is the wrapped process's. Forward mode only: the rule
    tests the tangent, so it has no transpose (`jax.grad` through it raises)."""

    process: GaussianProcess

    has_rates = property(lambda self: self.process.has_rates)
    discrete = property(lambda self: self.process.discrete)
    t_data = property(lambda self: self.process.t_data)
    t_noise = property(lambda self: self.process.t_noise)
    default_t_eps = property(lambda self: self.process.default_t_eps)

    def alpha(self, t):
        return _fixed_ends("alpha", self.process, jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        return _fixed_ends("sigma", self.process, jnp.asarray(t, jnp.result_type(float)))

    def coefficients(self, t):
        return self.process.coefficients(t)

    def diffusion_squared(self, t):
        return self.process.diffusion_squared(t)

    def log_snr(self, t):
        return _fixed_ends("log_snr", self.process, jnp.asarray(t, jnp.result_type(float)))


@pytree_dataclass
class GridParameterization:
    """The map from n logits to a grid of n+1 times (see the module docstring): ends t_noise and
    t_end, interior times at λ_0 + (λ_n − λ_0)·cumsum(f) with f = (1 − floor) softmax(z) + floor/n."""

    process: GaussianProcess
    num_steps: int = static_field()
    t_end: float = static_field()
    lam_start: float = static_field()  # finite log-SNR stand-in at t_noise
    lam_stop: float = static_field()  # finite log-SNR stand-in at t_end
    floor: float = static_field(default=1e-3)

    @classmethod
    def create(cls, process: GaussianProcess, num_steps: int, t_eps: float | None = None,
               max_abs_logsnr: float = 15.0, floor: float = 1e-3,
               contain: ArrayLike | None = None) -> GridParameterization:  # fmt: skip
        """Infinite end log-SNRs become ∓max_abs_logsnr, widened by 1 beyond any finite interior
        log-SNR of the grid `contain` (so that grid is representable)."""
        if process.discrete:
            raise ValueError(
                f"optimize_grid: {type(process).__name__} has integer times, which have no gradient; "
                "optimise the grid of its continuous limit (e.g. VPSDE) instead."
            )
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"GridParameterization: floor must lie in [0, 1), got {floor}.")
        t_end = process.data_end(t_eps)
        with jax.ensure_compile_time_eval():
            ends = np.asarray(process.log_snr(jnp.asarray([process.t_noise, t_end], jnp.float32)),
                              np.float64)  # fmt: skip
            bound = max_abs_logsnr
            if contain is not None:
                inner = np.asarray(process.log_snr(jnp.asarray(contain)[1:-1]), np.float64)
                inner = inner[np.isfinite(inner)]
                if inner.size:
                    bound = max(bound, float(np.abs(inner).max()) + 1.0)
        lam = [float(v) if np.isfinite(v) else float(np.sign(v) * bound) for v in ends]
        if not lam[0] < lam[1]:
            raise ValueError(f"optimize_grid: the log-SNR must increase from t_noise to t_end, got {lam}.")
        return cls(process, int(num_steps), t_end, lam[0], lam[1], float(floor))

    def fractions(self, logits: Float[Array, " n"]) -> Float[Array, " n"]:
        """f_j: each step's share of the log-SNR range (positive, summing to 1)."""
        return (1.0 - self.floor) * jax.nn.softmax(logits) + self.floor / self.num_steps

    def times(self, logits: Float[Array, " n"]) -> Float[Array, " n_plus_1"]:
        """The grid (n+1,) from t_noise to t_end of the logits z (n,)."""
        if logits.shape != (self.num_steps,):
            raise ValueError(f"GridParameterization: logits must have shape ({self.num_steps},), "
                             f"got {logits.shape}.")  # fmt: skip
        cum = jnp.cumsum(self.fractions(logits))[:-1]
        lam = self.lam_start + (self.lam_stop - self.lam_start) * cum
        inner = time_at_log_snr_differentiable(self.process, lam, self.process.t_noise, self.t_end)
        ends = jnp.asarray([self.process.t_noise, self.t_end], inner.dtype)
        return jnp.concatenate([ends[:1], inner, ends[1:]])

    def logits(self, ts: Float[ArrayLike, " n_plus_1"]) -> Float[Array, " n"]:
        """Logits whose grid is `ts` (a grid from t_noise to t_end; shares below the floor are
        raised to it, slightly moving such a grid). Centred: softmax ignores a common shift."""
        ts = jnp.asarray(ts, jnp.result_type(float))
        lam = jnp.clip(self.process.log_snr(ts), self.lam_start, self.lam_stop)
        lam = lam.at[0].set(self.lam_start).at[-1].set(self.lam_stop)
        f = jnp.diff(lam) / (self.lam_stop - self.lam_start)
        share = (f - self.floor / self.num_steps) / (1.0 - self.floor)
        z = jnp.log(jnp.maximum(share, 1e-6))
        return z - z.mean()


def endpoint(solver: Solver, flow: ProbabilityFlow, x_init: Array, ts: Array, denoise: bool) -> Array:
    """The sampler's output from x_init at ts[0]: integrate over `ts`, then x̂0 at ts[-1] if
    `denoise` (as `diffjax.sample` does when the grid stops short of the data)."""
    x = integrate(solver, flow, x_init, ts).y
    return flow.denoise(x, ts[-1])[0].astype(x.dtype) if denoise else x


def squared_errors(x: Array, reference: Array) -> Float[Array, " batch"]:
    """e² = (1/D)‖x − x*‖² per sample (D the event size)."""
    return jnp.mean(jnp.reshape(x - reference, (x.shape[0], -1)) ** 2, axis=-1)


@filter_jit
def _endpoint(solver, flow, x_init, ts, denoise):
    return endpoint(solver, flow, x_init, ts, denoise)


@filter_jit
def _squared_errors(solver, flow, x_init, ts, reference, denoise):
    return squared_errors(endpoint(solver, flow, x_init, ts, denoise), reference)


OBJECTIVES = ("mse", "log")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"optimize_grid: objective must be one of {OBJECTIVES}, got {objective!r}.")


def objective_of(squared: Float[Array, " batch"], objective: str, floor2: float = 0.0) -> Array:
    """The training objective of per-sample squared errors e²: 'mse' the mean e² (the RMSE's square:
    dominated by the rare samples a grid sends to another mode), 'log' the mean of log(e² + floor²)
    (the log of the geometric mean: every sample's error counts relatively, so it aims at the typical
    error — the median endpoint error the benchmarks report; floor = the reference's own accuracy, below
    which errors are not resolved)."""
    check_objective(objective)
    if objective == "mse":
        return squared.mean()
    return jnp.log(squared + floor2).mean()


def grid_loss(logits, param: GridParameterization, solver: Solver, flow: ProbabilityFlow,
              x_init: Array, reference: Array, denoise: bool, objective: str = "mse",
              floor2: float = 0.0) -> Array:  # fmt: skip
    """L(z) = the objective (mean e² by default) of the sampler on the grid of logits z (what
    `optimize_grid` descends)."""
    squared = squared_errors(endpoint(solver, flow, x_init, param.times(logits), denoise), reference)
    return objective_of(squared, objective, floor2)


def grid_loss_and_grad(logits, param: GridParameterization, solver: Solver, flow: ProbabilityFlow,
                       x_init: Array, reference: Array, denoise: bool, objective: str = "mse",
                       floor2: float = 0.0) -> tuple[Array, Array]:  # fmt: skip
    """(L(z), ∇L(z)) in forward mode (`jax.jacfwd`: n tangents, one per logit). Forward mode suits
    a grid: n is small, memory does not grow with the trajectory, and the branches a multistep
    solver masks with jnp.where (higher orders on its first steps, h = ±∞ at a flow's ends) do not
    leak into the derivative — in reverse mode their 0·∞ cotangents make it NaN."""
    loss = functools.partial(grid_loss, param=param, solver=solver, flow=flow, x_init=x_init,
                             reference=reference, denoise=denoise, objective=objective,
                             floor2=floor2)  # fmt: skip
    grad, value = jax.jacfwd(lambda z: (loss(z), loss(z)), has_aux=True)(logits)
    return value, grad


_loss = filter_jit(grid_loss)


@filter_jit
def _train_step(logits, opt_state, param, solver, flow, x_init, reference, denoise, learning_rate,
                objective, floor2):  # fmt: skip
    """One Adam step on the logits (the whole step compiled once per problem)."""
    loss, grad = grid_loss_and_grad(logits, param, solver, flow, x_init, reference, denoise, objective,
                                    floor2)
    updates, opt_state = optax.adam(learning_rate).update(grad, opt_state, logits)
    return optax.apply_updates(logits, updates), opt_state, loss


class OptimizedGrid(NamedTuple):
    """ts (n+1,): the optimised grid, from t_noise to t_end (concrete: `dj.sample(..., grid=ts)`);
    init: the name of the start grid ('array' if given) and init_ts its times; logits (n,);
    losses (iterations + 1,): the training objective of every iterate, the start first and the
    result of the last Adam step last — ts is the iterate with the smallest; train_error: its
    training mean e²; heldout_errors (m,): per-sample RMS errors e on held-out noises;
    fixed_heldout_errors: {grid name: (m,)} the same for each named grid (and 'init');
    reference_error: RMS difference of the reference with half its steps (its accuracy bound);
    nfe: model evaluations per sample of the sampler on this grid."""

    ts: np.ndarray
    init: str
    init_ts: np.ndarray
    logits: np.ndarray
    losses: np.ndarray
    train_error: float
    heldout_errors: np.ndarray
    fixed_heldout_errors: dict
    reference_error: float
    nfe: int

    @staticmethod
    def summary(errors: np.ndarray) -> tuple[float, float]:
        """(median, RMSE) of per-sample RMS errors e."""
        return float(np.median(errors)), float(np.sqrt(np.mean(np.square(errors))))

    def best_fixed(self) -> str:
        """The named grid with the smallest held-out mean e²."""
        named = {k: v for k, v in self.fixed_heldout_errors.items() if k in GRIDS}
        return min(named, key=lambda k: float(np.mean(np.square(named[k]))))


def optimize_grid(
    solver: str | Solver,
    model,
    process: GaussianProcess,
    key: Array,
    shape: tuple[int, ...],
    num_steps: int,
    *,
    prediction: str | None = None,
    init: str | ArrayLike = "best",
    t_eps: float | None = None,
    iterations: int = 300,
    learning_rate: float = 0.02,
    heldout: int | None = None,
    reference_solver: Solver | None = None,
    reference_steps: int = 200,
    floor: float = 1e-3,
    objective: str = "mse",
    callback=None,
) -> OptimizedGrid:
    """Optimise the `num_steps`-step grid of a deterministic `solver` for `model` under `process`.

    Args:
      solver: a name in `diffjax.solvers.SOLVERS` or a solver object (fixed grid, deterministic).
      model, prediction: as for `diffjax.sample`.
      key: PRNG key for the training noises and (independently) the held-out noises.
      shape: (batch, *event) of the fixed training batch of prior noises.
      num_steps: steps of the grid (the NFE follows from the solver).
      init: 'best' (the named grid of `diffjax.grids.GRIDS` with the smallest training error), a
        name, or an array of num_steps+1 times from t_noise to t_end.
      iterations, learning_rate: Adam on the logits (whole step jitted; one compile per problem).
      heldout: number of held-out noises (default the training batch size).
      reference_solver, reference_steps: the accurate solve x*(x_T) (default 3rd-order
        DPM-Solver++ on a log-SNR grid); its accuracy is estimated against half the steps.
      floor: the minimum total share of the log-SNR range given to all steps equally.
      objective: 'mse' (mean e², default) or 'log' (mean log(e² + ε_ref²), ε_ref the reference's
        accuracy: aims at the typical — median — error instead of the rare large ones; `objective_of`).
        It also picks the 'best' start grid.
      callback: called as callback(iteration, loss) on the host after every step (logging).

    Returns:
      `OptimizedGrid`: the Adam iterate (the start included) with the smallest training objective.
    """
    check_key(key, "optimize_grid")
    solver = make_solver(solver)
    if isinstance(solver, Adaptive):
        raise ValueError("optimize_grid: an adaptive solver chooses its own steps; give a fixed-grid "
                         "solver such as 'dpm_solver_pp' or 'heun'.")  # fmt: skip
    if getattr(solver, "eta", 0.0) or getattr(solver, "s_churn", 0.0):
        raise ValueError(f"optimize_grid: {solver} is stochastic; its endpoint error against the "
                         "ODE is not a grid error. Use a deterministic solver (eta = 0, s_churn = 0).")
    if process.discrete:
        raise ValueError(f"optimize_grid: {type(process).__name__} has integer times, which have "
                         "no gradient; optimise the grid of its continuous limit (e.g. VPSDE).")
    if solver.needs_rates and not process.has_rates:
        raise ValueError(f"optimize_grid: {type(solver).__name__} needs dα/dt, dσ/dt, which "
                         f"{type(process).__name__} does not have.")  # fmt: skip
    if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"optimize_grid: num_steps must be a positive integer, got {num_steps!r}.")
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"optimize_grid: shape must be (batch, *event), got {shape}.")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"optimize_grid: iterations must be an int >= 0, got {iterations!r}.")
    if not learning_rate > 0:
        raise ValueError(f"optimize_grid: learning_rate must be > 0, got {learning_rate}.")
    check_objective(objective)  # before the reference solves
    num_steps = int(num_steps)
    flow = as_flow(model, process, prediction)
    flow = ProbabilityFlow(flow.model, FixedEnds(process), flow.prediction)  # same values, see FixedEnds
    t_end = process.data_end(t_eps)
    denoise = t_end != process.t_data
    dtype = jnp.result_type(float)
    k_train, k_held = jax.random.split(key)
    x_train = process.prior_sample(k_train, tuple(shape), dtype)
    x_held = process.prior_sample(k_held, (heldout or shape[0], *shape[1:]), dtype)

    if isinstance(init, str) and init != "best" and init not in GRIDS:
        raise ValueError(f"optimize_grid: init {init!r} must be 'best', one of {GRIDS} or an array.")
    fixed = {name: make_grid(process, num_steps, name, t_eps) for name in GRIDS}
    if not isinstance(init, str):
        init_name, init_ts = "array", jnp.asarray(init, dtype)
        tn = np.asarray(init_ts)
        if tn.shape != (num_steps + 1,) or tn[0] != process.t_noise or not np.isclose(tn[-1], t_end):
            raise ValueError(f"optimize_grid: an init grid must have {num_steps + 1} times from "
                             f"t_noise={process.t_noise} to t_end={t_end}, got {tn}.")  # fmt: skip
        if not np.all(np.diff(tn) * np.sign(process.t_data - process.t_noise) > 0):
            raise ValueError("optimize_grid: the init grid must run strictly from the noise to the data end.")

    reference_solver = reference_solver or DPMSolverPP(order=3)
    ref_ts = make_grid(process, reference_steps, "logsnr", t_eps)
    ref_train = _endpoint(reference_solver, flow, x_train, ref_ts, denoise)
    ref_held = _endpoint(reference_solver, flow, x_held, ref_ts, denoise)
    half = _endpoint(reference_solver, flow, x_held, make_grid(process, max(reference_steps // 2, 1),
                                                                 "logsnr", t_eps), denoise)  # fmt: skip
    reference_error = float(jnp.sqrt(squared_errors(half, ref_held).mean()))
    floor2 = max(reference_error, 1e-12) ** 2  # the 'log' objective's floor

    if isinstance(init, str):
        if init == "best":
            train = {k: float(objective_of(_squared_errors(solver, flow, x_train, ts, ref_train, denoise),
                                           objective, floor2)) for k, ts in fixed.items()}  # fmt: skip
            init = min(train, key=train.get)
        init_name, init_ts = init, fixed[init]
    param = GridParameterization.create(process, num_steps, t_eps, floor=floor, contain=init_ts)
    logits = param.logits(init_ts)
    opt_state = optax.adam(learning_rate).init(logits)
    iterates, losses = [], []  # device arrays: the steps are dispatched without waiting for the host
    for i in range(iterations):
        iterates.append(logits)
        logits, opt_state, loss = _train_step(logits, opt_state, param, solver, flow, x_train, ref_train,
                                              denoise, float(learning_rate), objective, floor2)  # fmt: skip
        losses.append(loss)
        if callback is not None:  # the only per-step host read
            callback(i, float(loss))
    iterates.append(logits)
    losses.append(_loss(logits, param, solver, flow, x_train, ref_train, denoise, objective, floor2))
    losses = np.asarray(jax.device_get(losses), dtype=float)
    # Adam on a rough objective can end above where it started (a 10-step MNIST grid at learning rate
    # 0.05 did: 0.0078 → 0.0129): return the iterate with the lowest training objective
    best = int(np.nanargmin(losses))
    logits = iterates[best]
    ts = param.times(logits)
    tn = np.asarray(ts)
    if not np.all(np.diff(tn) * np.sign(process.t_data - process.t_noise) > 0):
        raise FloatingPointError(f"optimize_grid: the optimised grid repeats times at this precision: "
                                 f"{tn}; raise floor.")  # fmt: skip
    held = lambda g: np.sqrt(np.asarray(_squared_errors(solver, flow, x_held, g, ref_held, denoise)))  # noqa: E731
    fixed_errors = {name: held(g) for name, g in fixed.items()}
    fixed_errors["init"] = held(param.times(param.logits(init_ts)))
    nfe = solver.num_evaluations(num_steps, ends_at_data=t_end == process.t_data,
                                 finite_at_data=flow.no_evaluation_at is None,
                                 starts_at_zero_alpha=process.alpha_is_zero_at_noise())
    nfe += int(denoise)
    return OptimizedGrid(
        ts=tn, init=init_name, init_ts=np.asarray(init_ts), logits=np.asarray(logits),
        losses=np.asarray(losses), train_error=float(_squared_errors(solver, flow, x_train, ts, ref_train,
                                                                     denoise).mean()),
        heldout_errors=held(ts), fixed_heldout_errors=fixed_errors, reference_error=reference_error,
        nfe=int(nfe),
    )  # fmt: skip


__all__ = ["OBJECTIVES", "FixedEnds", "GridParameterization", "OptimizedGrid", "endpoint", "grid_loss",
           "grid_loss_and_grad", "objective_of", "optimize_grid", "squared_errors",
           "time_at_log_snr_differentiable"]  # fmt: skip
