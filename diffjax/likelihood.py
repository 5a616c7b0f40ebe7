"""Log-likelihood through the probability-flow ODE (instantaneous change of variables), run by the
same integrator and solvers as sampling.

The probability-flow ODE dx/dt = v(x, t) transports p_t along the process's own time axis, and the
continuity equation gives d/dt log p_t(x_t) = −∇·v(x_t, t) along its solutions (Chen et al. 2018,
"Neural ODEs", Thm. 1; Song et al. 2021, App. D.2). Integrating the augmented ODE

    d/dt [x, Δ] = [v(x, t), ∇·v(x, t)]    from t₀ (data end) to t_noise, x(t₀) = x, Δ(t₀) = 0,

yields log p_{t₀}(x) = log p_prior(x(t_noise)) + Δ(t_noise), where Δ(t_noise) = ∫_{t₀}^{t_noise} ∇·v dt
is a signed integral. `LogDensityFlow` is this augmented term: Runge–Kutta and adaptive solvers use
its velocity; DPM-Solver++ uses its semi-linear form, in which the Δ leaf has linear scale 1 and
prediction P_Δ = ∇·v / (e^l dl/dt), e^l dl/dt = (α̇σ − ασ̇)/σ² (l = ½λ), so that
Δ_next = Δ + ∫ e^l P_Δ dl is integrated with the same multistep weights as x. t₀ = t_data moved by
`t_eps` towards the noise, so the result is log p_{t₀}, the density of slightly noised data (VP-type
SDEs have σ̇ = ∞ at t = 0: use t_eps > 0, 1e-5 as in Song et al.).

The divergence is exact (the Jacobian trace from D forward-mode products with basis vectors: small
D) or Hutchinson's estimate zᵀ(∂v/∂x)z with E[zzᵀ] = I (Rademacher or Gaussian z, fixed along the
trajectory: unbiased for log p, as Δ is linear in the divergence). Both assume the model treats the
examples of a batch independently (no batch statistics).

Run from the noise end instead (`sample_with_log_prob`), the same term gives each sample its model
log-density: x(t_noise) ~ prior, Δ(t_noise) = 0, and log p_{t_end}(x(t_end)) = log p_prior(x(t_noise))
− Δ(t_end) with Δ(t_end) = ∫_{t_noise}^{t_end} ∇·v dt.

Gradients. `log_likelihood` is differentiable with respect to x and to every array inside the model
(a `jax.tree_util.Partial(apply, params)`, a pytree dataclass, or an NNX module — e.g.
`nnx.merge(graphdef, state)` inside the loss): arrays are traced by `filter_jit`, so new parameter
values reuse the compiled program, under an outer `jax.jit` or not. For likelihood training

    loss = lambda params, x: -log_likelihood(Partial(apply, params), process, x, ...).log_prob.mean()
    grads = jax.jit(jax.grad(loss))(params, x)

and ∇_x log p_{t₀}(x) (e.g. for guidance) is `jax.grad(lambda x: log_likelihood(...).log_prob.sum())`
(per example, as the examples are independent). Fixed-step solvers differentiate through the
`lax.scan` (the exact derivative of the discrete solution; memory: the scan stores one state and its
stage evaluations per step). Adaptive solvers use diffrax's adjoint (`adjoint`, see
`diffjax.solvers.adaptive`): 'recursive_checkpoint' (default) differentiates the computed solution
with O(√max_steps) checkpoints; 'backsolve' integrates the continuous adjoint backwards with memory
independent of the steps, its gradient accurate only to the tolerances. Hutchinson divergences are
differentiable for a fixed `key` (fixed probes: the gradient of that estimate, whose expectation over
keys is the gradient of the exact-divergence solution). A model given as a plain Python function
closing over parameters is static (hashed by identity) and compiles anew for each new closure:
pass parameters inside a pytree model instead.

Shapes: x is (batch, *event) (e.g. (batch, D) or images (batch, H, W, C)); results are (batch,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from diffjax._array import expand
from diffjax._jit import filter_jit
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key, is_concrete
from diffjax.flow import ProbabilityFlow, as_flow
from diffjax.grids import GRIDS, make_grid
from diffjax.parameterization import to_x0_eps
from diffjax.processes.base import GaussianProcess
from diffjax.processes.ddpm import DDPMChain, check_variance
from diffjax.sampling import make_solver
from diffjax.solvers import DEIS, Adaptive, DPMSolverPP, RungeKutta, Solver, UniPC, integrate

# exponential integrators of the semi-linear form (x/σ, weight α/σ): they run on the log-density term too
EXPONENTIAL = (DPMSolverPP, UniPC, DEIS)

VectorField = Callable[[Array], Array]
ADAPTIVE = ("tsit5", "dopri5", "dopri8")


class LikelihoodResult(NamedTuple):
    """Per-example output of `log_likelihood` (all (batch,) except `noise`, `nfe`, `success`)."""

    log_prob: Float[Array, " batch"]  # log p_{t₀}(x) in nats
    bits_per_dim: Float[Array, " batch"]  # −log p_{t₀}(x) / (D ln 2), of the continuous density
    prior_logp: Float[Array, " batch"]  # log p_prior(x_T)
    delta_logp: Float[Array, " batch"]  # ∫_{t₀}^{t_noise} ∇·v dt
    noise: Array  # x_T, the ODE image of x at t_noise, (batch, *event)
    # evaluations of v, each costing D (exact) or n_probes (Hutchinson) JVPs; for the adaptive
    # solvers (stages per attempted step)·steps + 1, which diffrax can exceed by a few after
    # rejected steps
    nfe: Int[Array, ""]
    success: Bool[Array, ""]  # False if the adaptive solver failed (e.g. hit max_steps)


class DequantizedBPD(NamedTuple):
    """Output of `bits_per_dim` for 8-bit data."""

    bits_per_dim: Float[Array, " batch"]  # ≥ −log₂ P(x)/D in expectation over the dequantization
    log_prob_bound: Float[Array, " batch"]  # log p_Y(y) + D log(2/256) ≤ log P(x) in expectation
    likelihood: LikelihoodResult  # of the dequantized, [−1, 1]-scaled y


# -- divergences ------------------------------------------------------------------------------
def exact_divergence(fn: VectorField, x: Array) -> tuple[Array, Float[Array, " batch"]]:
    """(fn(x), tr ∂fn/∂x per example) from D forward-mode products with basis vectors.

    fn maps (batch, *event) -> (batch, *event) example-wise; the same basis vector e_i is applied
    to every example at once, so the cost is D JVPs of the batched fn (memory D × batch × D).
    """
    b, d = x.shape[0], math.prod(x.shape[1:])
    fx, jvp = jax.linearize(fn, x)

    def diagonal_entry(e):  # e: (D,) one-hot -> (batch,) entries ∂fn_i/∂x_i
        tangent = jnp.broadcast_to(e, (b, d)).reshape(x.shape)
        return jvp(tangent).reshape(b, d) @ e

    return fx, jnp.sum(jax.vmap(diagonal_entry)(jnp.eye(d, dtype=x.dtype)), axis=0)


def hutchinson_divergence(
    fn: VectorField, x: Array, probes: Float[Array, "n_probes batch ..."]
) -> tuple[Array, Float[Array, " batch"]]:
    """(fn(x), mean over probes z of zᵀ(∂fn/∂x)z per example): unbiased for the trace when
    E[z zᵀ] = I (Hutchinson 1989). probes has shape (n_probes, *x.shape)."""
    if probes.shape[1:] != x.shape:
        raise ValueError(
            f"hutchinson_divergence: probes must have shape (n_probes, *x.shape) = (n, {x.shape}); "
            f"got {probes.shape}."
        )
    fx, jvp = jax.linearize(fn, x)
    jz = jax.vmap(jvp)(probes)
    quad = jnp.sum((probes * jz).reshape(probes.shape[:2] + (-1,)), axis=-1)
    return fx, jnp.mean(quad, axis=0)


def sample_probes(
    key: Array,
    shape: tuple[int, ...],
    n_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    dtype=None,
) -> Float[Array, "n_probes ..."]:
    """n_probes probe vectors of `shape` with E[z zᵀ] = I: Rademacher (±1) or standard normal."""
    dtype = dtype or jnp.result_type(float)
    if probe == "rademacher":
        return jax.random.rademacher(key, (n_probes, *shape), dtype)
    if probe == "gaussian":
        return jax.random.normal(key, (n_probes, *shape), dtype)
    raise ValueError(f"Unknown probe {probe!r}; choose 'rademacher' or 'gaussian'.")


# -- the augmented term -----------------------------------------------------------------------
@pytree_dataclass
class LogDensityFlow:
    """The probability flow augmented with Δ = ∫∇·v dt: state (x (batch, *event), Δ (batch,)).
    probes None: exact divergence; else Hutchinson with these fixed probes. ends_at_data: the grid
    ends at t_data (sampling with t_eps = 0), where Runge–Kutta methods skip their c = 1 stage."""

    flow: ProbabilityFlow
    probes: Array | None = None
    ends_at_data: bool = static_field(default=False)

    @property
    def process(self) -> GaussianProcess:
        return self.flow.process

    @property
    def no_evaluation_at(self) -> float | None:  # None: no step ends where the model must not be evaluated
        return self.flow.no_evaluation_at if self.ends_at_data else None

    def _velocity_divergence(self, x, t):
        t_batch = jnp.full(x.shape[:1], t, x.dtype)
        fn = lambda y: self.flow.velocity(y, t_batch)  # noqa: E731
        return exact_divergence(fn, x) if self.probes is None else hutchinson_divergence(fn, x, self.probes)

    def velocity(self, y, t):
        return self._velocity_divergence(y[0], t)

    def data_prediction(self, y, t):
        x = y[0]
        v, div = self._velocity_divergence(x, t)
        c = self.process.coefficients(jnp.full(x.shape[:1], t, x.dtype))
        x0 = to_x0_eps(v, "velocity", x, c)[0]
        rate = (c.d_alpha * c.sigma - c.alpha * c.d_sigma) / c.sigma**2  # e^l dl/dt
        return x0, div / rate

    def scales(self, t):
        a, s = self.process.alpha(t), self.process.sigma(t)
        return (s, jnp.ones_like(s)), (a, a / s)


def _likelihood_solver(solver: str | Solver, rtol, atol, max_steps, adjoint, owner: str) -> Solver:
    if isinstance(solver, str) and solver in ADAPTIVE:
        return Adaptive(method=solver, rtol=rtol, atol=atol, max_steps=max_steps, initial_steps=None,
                        norm="per_example", throw=False, adjoint=adjoint)  # fmt: skip
    if adjoint != "recursive_checkpoint":
        raise ValueError(f"{owner}: adjoint={adjoint!r} applies to the adaptive solvers {ADAPTIVE} named "
                         "by string; set it on an `Adaptive` object instead, fixed-step solvers "
                         "differentiate through their scan.")  # fmt: skip
    solver = make_solver(solver)
    if not isinstance(solver, (RungeKutta, Adaptive, *EXPONENTIAL)):
        raise ValueError(
            f"{owner} integrates the probability-flow ODE with its divergence: use a "
            f"deterministic ODE solver ({ADAPTIVE}, 'euler', 'heun', 'midpoint', 'rk4', "
            f"'dpm_solver_pp', 'unipc', 'deis'), not {type(solver).__name__}."
        )
    return solver


def _check_has_flow(process: GaussianProcess, owner: str) -> None:
    if not process.has_rates:
        raise ValueError(f"{owner}: {type(process).__name__} has no probability-flow ODE; "
                         "use variational_bound for the DDPM chain.")  # fmt: skip


def _check_dpm_end(solver: Solver, process: GaussianProcess, t_end: float, owner: str) -> None:
    """The exponential integrators (DPM-Solver++, UniPC, DEIS) must not touch σ = 0 (at t_end)."""
    if isinstance(solver, EXPONENTIAL):
        sigma = process.sigma(t_end)
        if is_concrete(sigma) and float(sigma) == 0.0:
            raise ValueError(
                f"{owner}: {type(solver).__name__} integrates x/σ and the log-density with weight α/σ, "
                f"singular at σ = 0 (t = {t_end} on {type(process).__name__}); use t_eps > 0 (e.g. "
                "1e-5) or an RK/adaptive solver."
            )


def _hutchinson_probes(divergence, key, shape, n_probes, probe, dtype, owner: str) -> Array | None:
    """Fixed probes for Hutchinson's estimator (None for the exact divergence)."""
    if divergence == "exact":
        return None
    if divergence != "hutchinson":
        raise ValueError(f"Unknown divergence {divergence!r}; choose 'exact' or 'hutchinson'.")
    if key is None:
        raise ValueError(f"{owner}: divergence='hutchinson' needs a PRNG `key`.")
    if n_probes < 1:
        raise ValueError(f"{owner}: n_probes must be >= 1, got {n_probes}.")
    return sample_probes(key, shape, n_probes, probe, dtype)


def log_likelihood(
    model,
    process: GaussianProcess,
    x: Float[Array, "batch ..."],
    key: Array | None = None,
    *,
    prediction: str | None = None,
    divergence: Literal["exact", "hutchinson"] = "exact",
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    n_probes: int = 1,
    solver: str | Solver = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 100,
    grid: str = "uniform",
    t_eps: float = 1e-5,
    prior_logp: Callable[[Array], Array] | None = None,
    max_steps: int = 4096,
    adjoint: Literal["recursive_checkpoint", "backsolve"] = "recursive_checkpoint",
) -> LikelihoodResult:
    """log p_{t₀}(x) by the augmented probability-flow ODE (module docstring), per example.
    Differentiable with respect to x and the model's arrays (module docstring, "Gradients").

    Args:
      model: model(x, t) -> prediction of type `prediction` (default `model.prediction`).
      process: the process/path the model was trained on (either time convention).
      x: data, (batch, *event), on the scale the model was trained on.
      key: PRNG key for the Hutchinson probes (drawn once, fixed along the trajectory).
      divergence: 'exact' (D JVPs per evaluation; small D) or 'hutchinson' (n_probes JVPs).
      solver: adaptive 'tsit5' | 'dopri5' | 'dopri8' (rtol/atol, at most max_steps steps;
        `success` reports failure), or a fixed-grid ODE solver ('euler', 'heun', 'midpoint', 'rk4',
        'dpm_solver_pp' or a solver object) on `num_steps` steps of the reversed sampling `grid`.
      t_eps: start at t₀ = t_data moved by t_eps towards the noise (process time units); the result
        is then log p_{t₀}(x), the density of data noised to t₀.
      prior_logp: log-density of x_T, (batch, *event) -> (batch,); default `process.prior_logp`,
        N(0, σ(t_noise)² I), which neglects α(t_noise)·x_data (exact when α(t_noise) = 0, e.g.
        CondOTPath; for VPSDE(β_max=20), α(T) ≈ 6.6e-3, an error of order α(T)·|x_T|·|E x_data|).
      adjoint: reverse-mode gradients of an adaptive solve ('recursive_checkpoint': exact derivative
        of the computed solution, O(√max_steps) checkpoints; 'backsolve': continuous adjoint,
        memory independent of the steps, accurate to the tolerances); see `diffjax.solvers.adaptive`.
    Returns:
      `LikelihoodResult` with log_prob and bits_per_dim of shape (batch,). Compiled once per
      (shapes, solver, process and model structure).
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"log_likelihood: x must be (batch, *event); got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if is_concrete(t_eps) and not 0.0 <= t_eps < abs(process.t_noise - process.t_data):
        raise ValueError(f"log_likelihood: t_eps must lie in [0, |t_noise − t_data|), got {t_eps}.")
    _check_has_flow(process, "log_likelihood")
    solver = _likelihood_solver(solver, rtol, atol, max_steps, adjoint, "log_likelihood")
    _check_dpm_end(solver, process, process.data_end(float(t_eps)), "log_likelihood")
    if float(t_eps) == 0.0:  # every solver evaluates v at t₀ = t_data
        c = process.coefficients(jnp.asarray(process.t_data, jnp.result_type(float)))
        if is_concrete(c) and not (np.isfinite(float(c.d_alpha)) and np.isfinite(float(c.d_sigma))):
            raise ValueError(
                f"log_likelihood: dα/dt or dσ/dt is infinite at t_data on {type(process).__name__}, so the "
                "probability flow (and its gradient) is NaN there; use t_eps > 0 (e.g. 1e-5)."
            )
    probes = _hutchinson_probes(divergence, key, x.shape, n_probes, probe, x.dtype, "log_likelihood")
    term = LogDensityFlow(as_flow(model, process, prediction), probes)
    adaptive = isinstance(solver, Adaptive)
    if not adaptive and (not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"log_likelihood: num_steps must be an integer >= 1, got {num_steps}.")
    (x_t, delta), nfe, success = _solve(term, solver, x, steps=1 if adaptive else num_steps,
                                        grid="uniform" if adaptive else grid, t_eps=float(t_eps))  # fmt: skip
    if not adaptive:
        nfe, success = jnp.asarray(solver.num_evaluations(num_steps)), jnp.asarray(True)
    logp_prior = (prior_logp or process.prior_logp)(x_t)
    log_prob = logp_prior + delta
    d = math.prod(x.shape[1:])
    return LikelihoodResult(
        log_prob, -log_prob / (d * np.log(2.0)), logp_prior, delta, x_t, nfe, success
    )


@filter_jit
def _solve(term: LogDensityFlow, solver: Solver, x, *, steps: int, grid: str, t_eps: float):
    ts = make_grid(term.process, steps, grid, t_eps)[::-1].astype(x.dtype)  # data end → noise
    sol = integrate(solver, term, (x, jnp.zeros(x.shape[:1], x.dtype)), ts)
    return sol.y, sol.nfe, sol.success


# -- log p during sampling --------------------------------------------------------------------
class SampleLogProb(NamedTuple):
    """Output of `sample_with_log_prob`: samples at t_end with their model log-density."""

    samples: Array  # x(t_end), the ODE state at t_end = data_end(t_eps) (no final denoising), (batch, *event)
    log_prob: Float[Array, " batch"]  # log p_{t_end}(samples) of the model's flow, in nats
    prior_logp: Float[Array, " batch"]  # log p_prior(x_T)
    delta_logp: Float[Array, " batch"]  # ∫_{t_noise}^{t_end} ∇·v dt, so log_prob = prior_logp − delta_logp
    noise: Array  # x_T, the prior draw (batch, *event)
    nfe: int | Int[Array, ""]  # evaluations of v (static for fixed grids; counted by adaptive solvers)
    success: Bool[Array, ""]  # False if the adaptive solver failed (e.g. hit max_steps)


def sample_with_log_prob(
    solver: str | Solver,
    model,
    process: GaussianProcess,
    key: Array,
    shape: tuple[int, ...],
    num_steps: int | None = None,
    *,
    prediction: str | None = None,
    grid: str | Array = "uniform",
    t_eps: float | None = None,
    divergence: Literal["exact", "hutchinson"] = "exact",
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    adjoint: Literal["recursive_checkpoint", "backsolve"] = "recursive_checkpoint",
    prior_logp: Callable[[Array], Array] | None = None,
) -> SampleLogProb:
    """Samples of the probability-flow ODE with their log-density under the model, in one solve.

    Draws x_T ~ N(0, σ(t_noise)² I) (`process.prior_sample`, from the first half of `key` as
    `diffjax.sample` does, so the samples are those of `sample(solver, ..., denoise_final=False)`
    for a fixed-grid solver) and integrates the `LogDensityFlow` term [x, Δ]' = [v, ∇·v] from
    t_noise to t_end = `process.data_end(t_eps)` with Δ(t_noise) = 0. By the instantaneous change of
    variables (module docstring) the returned state x(t_end) has, under the model's flow,

        log p_{t_end}(x(t_end)) = log p_prior(x_T) − Δ(t_end),   Δ(t_end) = ∫_{t_noise}^{t_end} ∇·v dt:

    the density at t_end of the prior pushed forward by the model's ODE. There is no final
    denoising step: `samples` is the ODE state at t_end and `log_prob` is its density at t_end,
    the quantity `log_likelihood(model, process, samples, t_eps=t_eps)` computes from the other
    end (equal up to the errors of the two solves; for the exact model of data p_data and an exact
    prior, log p_{t_end} of p_data noised to t_end, = log p_data at t_eps = 0 on a flow path).

    Args:
      solver: a deterministic ODE solver: adaptive 'tsit5' | 'dopri5' | 'dopri8' (rtol/atol per
        example, at most max_steps steps), or a fixed-grid one ('euler', 'heun', 'midpoint', 'rk4',
        'dpm_solver_pp' or a solver object) on `num_steps` steps of `grid`.
      model, process, prediction: as for `diffjax.sample`.
      key: PRNG key: the prior draw (first half of `jax.random.split(key)`) and the Hutchinson probes
        (second half; drawn once, fixed along the trajectory).
      shape: (batch, *event).
      grid: 'uniform', 'edm', 'logsnr' or a concrete array of num_steps+1 times from t_noise
        towards the data. DPM-Solver++ steps in log-SNR: give it 'logsnr' (on a uniform-t grid its
        last steps span long log-SNR intervals where the log-density weight α/σ is large, and
        log_prob converges slowly: off by ≈ 50 nats at 16 steps on 2-D Gaussian data, CondOT).
      t_eps: data-end offset (default `process.default_t_eps`, as `sample`).
      divergence, probe, n_probes: exact divergence (D JVPs per evaluation) or Hutchinson's estimate
        (unbiased for log_prob: Δ is linear in the divergence).
      prior_logp: log-density of x_T (default `process.prior_logp`, the density x_T is drawn from).
    Returns:
      `SampleLogProb`; compiled once per (shape, num_steps, solver, grid name, process and model
      structure), and differentiable with respect to the model's arrays like `log_likelihood`.
    """
    owner = "sample_with_log_prob"
    check_key(key, owner)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{owner}: shape must be (batch, *event), got {shape}.")
    shape = tuple(int(s) for s in shape)
    _check_has_flow(process, owner)
    solver = _likelihood_solver(solver, rtol, atol, max_steps, adjoint, owner)
    t_eps = None if t_eps is None else float(t_eps)  # static
    t_end = process.data_end(t_eps)
    adaptive = isinstance(solver, Adaptive)
    ts_arg, grid_name = None, None
    if adaptive:
        if t_end == process.t_data and process.default_t_eps > 0:
            raise ValueError(
                f"{owner}: an adaptive solver would evaluate the velocity at t_data, where it is "
                f"singular on {type(process).__name__} (dσ/dt ~ 1/√t); use t_eps > 0."
            )
        ts_arg, num_steps = jnp.asarray([process.t_noise, t_end]), 1
    else:
        if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"{owner}: num_steps must be a positive integer, got {num_steps!r}.")
        num_steps = int(num_steps)
        if isinstance(grid, str):
            if grid not in GRIDS:
                raise ValueError(f"Unknown grid {grid!r}; choose one of {GRIDS} or pass an array.")
            grid_name = grid
        else:
            ts_arg = jnp.asarray(grid, jnp.result_type(float))
            if ts_arg.shape != (num_steps + 1,) or not is_concrete(ts_arg):
                raise ValueError(
                    f"{owner}: a grid array must be concrete with shape (num_steps+1,) = "
                    f"({num_steps + 1},); got {ts_arg.shape}. Use a grid name inside jit."
                )
            tn = np.asarray(ts_arg)
            towards_data = np.sign(process.t_data - process.t_noise)
            if not np.all(np.diff(tn) * towards_data > 0) or float(tn[0]) != process.t_noise:
                raise ValueError(f"{owner}: the grid must start at t_noise = {process.t_noise} and run "
                                 "strictly towards the data end.")  # fmt: skip
            t_end = float(tn[-1])
    _check_dpm_end(solver, process, t_end, owner)
    k_prior, k_probes = jax.random.split(key)
    dtype = jnp.result_type(float)
    probes = _hutchinson_probes(divergence, k_probes, shape, n_probes, probe, dtype, owner)
    reaches_data = t_end == process.t_data
    term = LogDensityFlow(as_flow(model, process, prediction), probes, ends_at_data=reaches_data)
    (x, delta), x_T, nfe, success = _solve_from_noise(
        term, solver, k_prior, ts_arg, shape=shape, steps=num_steps, grid=grid_name, t_eps=t_eps
    )
    if not adaptive:
        nfe = solver.num_evaluations(num_steps, ends_at_data=reaches_data,
                                     finite_at_data=term.no_evaluation_at is None,
                                     starts_at_zero_alpha=process.alpha_is_zero_at_noise())  # fmt: skip
        success = jnp.asarray(True)
    logp_prior = (prior_logp or process.prior_logp)(x_T)
    return SampleLogProb(x, logp_prior - delta, logp_prior, delta, x_T, nfe, success)


@filter_jit
def _solve_from_noise(term: LogDensityFlow, solver: Solver, key, ts, *, shape, steps, grid, t_eps):
    process, dtype = term.process, jnp.result_type(float)
    ts = make_grid(process, steps, grid, t_eps) if ts is None else ts  # noise end → data
    x_T = process.prior_sample(key, shape, dtype)
    sol = integrate(solver, term, (x_T, jnp.zeros(shape[:1], dtype)), ts.astype(dtype))
    return sol.y, x_T, sol.nfe, sol.success


# -- the discrete chain's bound -----------------------------------------------------------------
class VariationalBound(NamedTuple):
    """Per-example negative ELBO in bits/dim: total = prior + Σ_t terms[:, t−1]."""

    total: Float[Array, " batch"]
    terms: Float[Array, "batch T"]
    prior: Float[Array, " batch"]


def variational_bound(
    model, chain: DDPMChain, x0: Array, key: Array, *, prediction: str | None = None,
    variance: str = "posterior",
) -> VariationalBound:  # fmt: skip
    """Negative ELBO −log p_θ(x_0) ≤ L_T + Σ_{t>1} L_{t−1} + L_0 (Ho et al. eq. 5), bits/dim.

    p_θ(x_{t−1}|x_t) = N(μ̃_t(x_t, x̂0), exp(chain.model_log_variance(t))), x̂0 the model's estimate
    (Ho et al. eq. 11 for an ε-model). Each term uses its own draw x_t ~ q(x_t | x_0) (an unbiased
    single-sample estimate per t); the loop over t is a `lax.scan` (one compiled model call).
    x0: (batch, *event) on the 8-bit grid scaled to [−1, 1]."""
    check_variance(variance)
    flow = as_flow(model, chain, prediction or getattr(model, "prediction", None) or "eps")
    batch = x0.shape[0]
    ts = jnp.arange(1, chain.num_steps + 1, dtype=jnp.int32)
    keys = jax.random.split(key, chain.num_steps)

    def term(carry, kt):
        k, t = kt
        tb = jnp.full((batch,), t)
        x_t = chain.sample_marginal(k, x0, tb).x_t
        mean, _ = chain.posterior(x_t, flow.denoise(x_t, tb)[0], tb, tb - 1)
        logvar = expand(chain.model_log_variance(tb, variance), x0)
        return carry, chain.elbo_terms(x0, x_t, tb, mean, logvar)

    _, terms = jax.lax.scan(term, None, (keys, ts))
    terms = terms.T
    prior = chain.prior_kl(x0)
    return VariationalBound(prior + terms.sum(axis=1), terms, prior)


# -- the continuous-time bound ----------------------------------------------------------------
class ContinuousELBO(NamedTuple):
    """Per-example negative ELBO in nats: total = prior + diffusion + reconstruction."""

    total: Float[Array, " batch"]
    prior: Float[Array, " batch"]
    diffusion: Float[Array, " batch"]
    reconstruction: Float[Array, " batch"]


def continuous_elbo(
    model, process: GaussianProcess, x0: Array, key: Array, *, prediction: str | None = None,
    num_times: int = 16, t_eps: float | None = None, decoder: Literal["gaussian", "discrete"] = "gaussian",
    stratify: Literal["example", "batch"] = "example",
) -> ContinuousELBO:  # fmt: skip
    """The continuous-time variational bound (Kingma et al. 2021, eqs. 11–17; Song et al. 2021b):

        −log p(x) ≤ KL(q(x_T|x) ‖ p(x_T)) + E_{q(x_{t0}|x)}[−log p(x | x_{t0})]
                    + ½ ∫_{t0}^{T} |dλ/dt| E_ε ‖ε − ε̂(x_t, t)‖² dt,

    λ the log-SNR, t0 the data end moved by t_eps, p(x_T) = N(0, σ(T)²I) the process's prior. The
    integral is estimated with `num_times` stratified times per example and a fresh ε per time:
    stratify 'example' gives each example its own uniform offset u and the times u + k/num_times
    (mod 1); 'batch' stratifies all batch·num_times times with one shared offset (VDM's low-discrepancy
    sampler: in training, with num_times = 1, the batch covers [t0, T] evenly).
    decoder 'gaussian': p(x | x_{t0}) =
    N(x; x_{t0}/α, (σ/α)² I) (continuous data; its expectation is closed form); 'discrete': VDM's
    8-bit decoder p(x_d = k | x_{t0}) ∝ exp(−(x_{t0,d}/α − c_k)²/(2(σ/α)²)), c_k = k/127.5 − 1, with
    x0 on that grid (one draw of x_{t0}). Bits/dim: total / (D·ln 2). x0: (batch, *event)."""
    if process.discrete:
        raise ValueError("continuous_elbo: the DDPM chain is discrete; use variational_bound.")
    if decoder not in ("gaussian", "discrete"):
        raise ValueError(f"continuous_elbo: decoder must be 'gaussian' or 'discrete', got {decoder!r}.")
    flow = as_flow(model, process, prediction or getattr(model, "prediction", None) or "eps")
    batch, dim = x0.shape[0], x0[0].size
    lo, hi = process.time_interval(t_eps)
    if stratify not in ("example", "batch"):
        raise ValueError(f"continuous_elbo: stratify must be 'example' or 'batch', got {stratify!r}.")
    k_u, k_eps, k_rec = jax.random.split(key, 3)
    if stratify == "example":
        u = jnp.mod(jax.random.uniform(k_u, (batch, 1)) + jnp.arange(num_times) / num_times, 1.0)
    else:  # one offset u: example i takes u + (i + b·k)/(b·m), k < m (stratified per example too)
        n = batch * num_times
        offsets = (jnp.arange(batch)[:, None] + batch * jnp.arange(num_times)) / n  # (batch, num_times)
        u = jnp.mod(jax.random.uniform(k_u) + offsets, 1.0)
    t = (lo + (hi - lo) * u).reshape(-1).astype(x0.dtype)  # (batch·num_times,)
    xs = jnp.repeat(x0, num_times, axis=0)
    noised = process.sample_marginal(k_eps, xs, t)
    eps_hat = flow.denoise(noised.x_t, t)[1]
    _, d_lam = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
    sq = jnp.sum(jnp.square(noised.eps - eps_hat).reshape(t.shape[0], -1), axis=-1)
    diffusion = 0.5 * (hi - lo) * jnp.mean((jnp.abs(d_lam) * sq).reshape(batch, num_times), axis=1)

    a_T, s_T = process.alpha(process.t_noise), process.sigma(process.t_noise)
    s_p = process.prior_std()
    flat = x0.reshape(batch, -1)
    prior = jnp.sum(jnp.log(s_p / s_T) + (s_T**2 + (a_T * flat) ** 2) / (2 * s_p**2) - 0.5, axis=-1)

    t_end = process.data_end(t_eps)
    a0, s0 = process.alpha(t_end), process.sigma(t_end)
    ratio = s0 / a0  # the noise-to-signal ratio σ̃ at t0
    if decoder == "gaussian":
        reconstruction = jnp.full((batch,), 0.5 * dim * (jnp.log(2 * jnp.pi * ratio**2) + 1.0))
    else:
        z = flat + ratio * jax.random.normal(k_rec, flat.shape, flat.dtype)  # x_{t0}/α = x + σ̃ ε
        levels = jnp.arange(256, dtype=flat.dtype) / 127.5 - 1.0
        logits = -jnp.square(z[..., None] - levels) / (2 * ratio**2)
        index = jnp.round((flat + 1.0) * 127.5).astype(jnp.int32)
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), index[..., None], -1)[..., 0]
        reconstruction = -jnp.sum(log_p, axis=-1)
    return ContinuousELBO(prior + diffusion + reconstruction, prior, diffusion, reconstruction)


def vdm_loss(
    model, x0: Array, key: Array, *, process: GaussianProcess, prediction: str | None = None,
    decoder: Literal["gaussian", "discrete"] = "discrete", num_times: int = 1, t_eps: float | None = None,
    reduce: bool = True,
) -> Float[Array, ""] | Float[Array, " batch"]:  # fmt: skip
    """VDM's training objective (Kingma et al. 2021): the negative ELBO of `continuous_elbo` in
    bits/dim, prior + reconstruction + ½∫|λ'|‖ε − ε̂‖² over (D·ln 2), with `num_times` times per
    example stratified over the whole batch (VDM's low-discrepancy sampler) and its 8-bit decoder by
    default (x0 on the grid k/127.5 − 1). The mean over the batch, or with reduce=False the (batch,)
    values a learned schedule's variance gradient needs (`diffjax.models.WithSchedule`,
    `diffjax.processes.learned.mean_with_variance_gradient`). With a fixed process it is ε-matching
    under the likelihood weighting plus terms that do not depend on the network."""
    bound = continuous_elbo(model, process, x0, key, prediction=prediction, num_times=num_times, t_eps=t_eps,
                            decoder=decoder, stratify="batch")  # fmt: skip
    bits = bound.total / (x0[0].size * math.log(2.0))
    return jnp.mean(bits) if reduce else bits


# -- 8-bit data -------------------------------------------------------------------------------
def _as_counts(x: Array) -> Array:
    """8-bit data as float counts in {0, …, 255}: integer input as is, float input read as
    k/127.5 − 1 (the usual [−1, 1] scaling)."""
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        if is_concrete(x) and x.size and (int(jnp.min(x)) < 0 or int(jnp.max(x)) > 255):
            raise ValueError("bits_per_dim: integer data must lie in {0, …, 255} (8-bit pixels).")
        return x.astype(jnp.result_type(float))
    counts = (x + 1.0) * 127.5
    if is_concrete(x) and x.size:
        c = np.asarray(counts)
        if c.min() < -1e-3 or c.max() > 255 + 1e-3 or np.abs(c - np.round(c)).max() > 1e-2:
            raise ValueError(
                "bits_per_dim: float data must be 8-bit values scaled to [−1, 1] as k/127.5 − 1 "
                "(k in {0, …, 255}); pass the raw uint8 pixels instead if your scaling differs."
            )
    return jnp.round(counts)


def dequantize(key: Array, x: Array) -> Float[Array, "batch ..."]:
    """Uniform dequantization of 8-bit data to the model's range: y = 2(k + u)/256 − 1,
    u ~ U[0, 1)^D, for counts k (uint8, or floats k/127.5 − 1). y lies in [−1, 1)."""
    counts = _as_counts(jnp.asarray(x))
    u = jax.random.uniform(key, counts.shape, counts.dtype)
    return 2.0 * (counts + u) / 256.0 - 1.0


def discrete_bits_per_dim(log_prob_scaled: Array, dim: int) -> Array:
    """Bits/dim of 8-bit data from log p_Y(y) of its dequantized, [−1, 1]-scaled version.

    With v = k + u ∈ [0, 256)^D and y = 2v/256 − 1, p_V(v) = p_Y(y)·(2/256)^D, and by Jensen
    log P(k) = log ∫_{[0,1)^D} p_V(k + u) du ≥ E_u[log p_Y(y)] + D log(2/256) (Theis et al. 2016;
    Ho et al. 2019). Hence bpd = −(log p_Y(y) + D log(2/256)) / (D ln 2) = −log p_Y(y)/(D ln 2) + 7,
    an upper bound on −log₂ P(k)/D in expectation; a uniform p_Y on [−1, 1]^D gives 8.
    """
    return -(log_prob_scaled + dim * np.log(2.0 / 256.0)) / (dim * np.log(2.0))


def bits_per_dim(
    model, process: GaussianProcess, x: Array, key: Array, **likelihood_kwargs
) -> DequantizedBPD:
    """Bits/dim of 8-bit images under a model on [−1, 1] data, with uniform dequantization inside.

    x: (batch, *event) uint8 pixels in {0, …, 255} (or floats k/127.5 − 1). One dequantization
    draw per example (average over keys for a lower-variance estimate of the bound); the
    change of variables to [−1, 1] and the bin width are accounted for
    (`discrete_bits_per_dim`). likelihood_kwargs go to `log_likelihood` (prediction, divergence,
    solver, tolerances, t_eps, …). Note the dequantized y spans [−1, 1) while k/127.5 − 1 spans [−1, 1].
    """
    k_deq, k_div = jax.random.split(key)
    y = dequantize(k_deq, x)
    res = log_likelihood(model, process, y, k_div, **likelihood_kwargs)
    d = math.prod(y.shape[1:])
    log_bound = res.log_prob + d * np.log(2.0 / 256.0)
    return DequantizedBPD(discrete_bits_per_dim(res.log_prob, d), log_bound, res)

