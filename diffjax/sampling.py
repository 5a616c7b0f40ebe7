"""`sample`: draw from a model with any solver, compiled once.

    import diffjax as dj
    res = dj.sample("dpm_solver_pp", model, dj.VPSDE(), key, (512, 2), 20, prediction="eps")
    res.samples, res.nfe

The model is any callable (x, t) -> prediction: an NNX module (which declares its `prediction`), a
pytree such as `jax.tree_util.Partial` holding parameters, or a plain function. Its arrays are traced,
so new parameters, labels or guidance scales reuse the compiled sampler; a plain function is static.
`sample` draws the prior at t_noise, builds the time grid, integrates the model's `ProbabilityFlow`
with the solver (`diffjax.solvers.integrate`: one `lax.scan`, or diffrax for adaptive solvers), and
returns x̂0 at the last time (`denoise_final`). The number of model evaluations is computed from the
solver (static), or counted at run time by adaptive solvers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._jit import filter_jit
from diffjax._validate import check_key, is_concrete
from diffjax.flow import ProbabilityFlow, ThreadModelState, as_flow, evaluate_with_state, finite_at_data
from diffjax.grids import GRIDS, make_grid
from diffjax.processes.base import GaussianProcess
from diffjax.solvers import SOLVERS, Adaptive, Solver, integrate


class SampleResult(NamedTuple):
    """samples (batch, *event); trajectory (num_steps+1, batch, *event) of the states on the grid
    (before the final denoising) or None; nfe, the number of model evaluations per sample."""

    samples: Array
    trajectory: Array | None
    nfe: int | Array


def make_solver(solver: str | Solver, **options) -> Solver:
    """A solver object from a name in `diffjax.solvers.SOLVERS` and its options (or the object)."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with a solver object {solver}; set "
                             "them on the object instead.")  # fmt: skip
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"Unknown sampler {solver!r}; choose one of {tuple(SOLVERS)}.")
    try:
        return SOLVERS[solver](**options)
    except TypeError as err:
        raise ValueError(f"sampler {solver!r}: invalid options {options} ({err}).") from None


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"sample: {name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_num_steps(num_steps) -> int:
    return _check_positive_int(num_steps, "num_steps")


def steps_for_budget(
    solver: str | Solver,
    process: GaussianProcess,
    nfe: int,
    *,
    t_eps: float | None = None,
    denoise_final: bool = True,
    prediction: str | None = None,
    **solver_options,
) -> int:
    """The largest number of grid steps whose model evaluations, the final denoising step included,
    fit in a budget of `nfe` (what `sample(..., nfe=…)` uses). Heun to t_eps > 0 costs 2n + 1 (n steps
    of 2, plus x̂0 at the end), to the data 2n − 1 (2n for a velocity model on a flow path, which may
    be evaluated at t_data: `diffjax.flow.finite_at_data`; prediction None counts as not); a multistep
    method n (+ 1). Static (Python int)."""
    solver = make_solver(solver, **solver_options)
    nfe = _check_positive_int(nfe, "nfe")
    if isinstance(solver, Adaptive):
        raise ValueError("sample: an adaptive solver chooses its own steps; give rtol/atol, not nfe.")
    reaches = process.data_end(t_eps) == process.t_data
    extra = int(denoise_final and not reaches)
    finite, zero_alpha = finite_at_data(process, prediction), process.alpha_is_zero_at_noise()

    def cost(n):
        return extra + solver.num_evaluations(n, ends_at_data=reaches, finite_at_data=finite,
                                              starts_at_zero_alpha=zero_alpha)

    if cost(1) > nfe:
        raise ValueError(
            f"sample: a budget of nfe={nfe} is below one step of {type(solver).__name__} "
            f"({cost(1)} evaluations{' with the final denoising step' if extra else ''}); raise nfe, "
            "use a one-evaluation solver ('ddim', 'dpm_solver_pp', 'euler') or denoise_final=False."
        )
    n = 1
    while cost(n + 1) <= nfe:  # cost is increasing in n
        n += 1
    if process.discrete:
        n = min(n, int(abs(process.t_noise - process.t_data)))
    return n


def sample(
    solver: str | Solver,
    model,
    process: GaussianProcess,
    key: Array,
    shape: tuple[int, ...] | None = None,
    num_steps: int | None = None,
    *,
    prediction: str | None = None,
    grid: str | ArrayLike = "uniform",
    t_eps: float | None = None,
    denoise_final: bool = True,
    save_trajectory: bool = False,
    x_init: Array | None = None,
    nfe: int | None = None,
    **solver_options,
) -> SampleResult:
    """Draw samples of shape `shape` = (batch, *event) with `num_steps` steps of `solver`.

    Args:
      solver: a name in `diffjax.solvers.SOLVERS` ('euler', 'heun', 'midpoint', 'rk4', 'ddim',
        'dpm_solver_pp', 'unipc', 'deis', 'tsit5', 'dopri5', 'euler_maruyama', 'ancestral', 'pc',
        'edm', 'dpm_solver_pp_sde', 'sa_solver'), with its options as keyword arguments, or a solver
        object (e.g. `DPMSolverPP(order=3)`).
      model: model(x (batch, *event), t (batch,)) -> prediction of type `prediction`.
      process: any `GaussianProcess` (diffusion SDE, flow path, DDPM chain).
      key: PRNG key for the prior and the solver's noise.
      num_steps: steps on the grid (not needed by adaptive solvers), or
      nfe: a budget of model evaluations instead: the most steps that fit it, final denoising
        included (`steps_for_budget`); `SampleResult.nfe` reports what was used (≤ nfe).
      prediction: 'eps', 'x0', 'score', 'v' or 'velocity' (default: `model.prediction`).
      grid: 'uniform', 'edm', 'logsnr' (`diffjax.grids`) or a concrete array of num_steps+1 times
        running towards the data (from t_noise, unless x_init is given).
      t_eps: data-end offset (default `process.default_t_eps`).
      denoise_final: return x̂0 at the last time (one more evaluation; skipped when the grid ends
        at the data).
      x_init: initial state at the grid's start instead of a prior draw (e.g. a sharded batch).

    Returns:
      SampleResult(samples, trajectory, nfe). Compiled once per (shape, num_steps, solver, grid
      name, process and model structure); `jax.vmap` over keys and sharded `x_init` work unchanged.
    """
    check_key(key, "sample")
    solver = make_solver(solver, **solver_options)
    flow = as_flow(model, process, prediction)
    if nfe is not None:
        if num_steps is not None:
            raise ValueError("sample: give num_steps or nfe (a budget of evaluations), not both.")
        num_steps = steps_for_budget(solver, process, nfe, t_eps=t_eps, denoise_final=denoise_final,
                                     prediction=flow.prediction)  # fmt: skip
    adaptive = isinstance(solver, Adaptive)
    if getattr(model, "stateful", False):
        solver = _thread_model_state(solver)
    if solver.needs_rates and not process.has_rates:
        raise ValueError(
            f"{type(solver).__name__} integrates an ODE/SDE and needs dα/dt, dσ/dt or g²(t), which "
            f"{type(process).__name__} (a discrete chain) does not have. Use 'ancestral', 'ddim', "
            "'dpm_solver_pp', 'unipc' or 'deis' on the chain, or its continuous limit "
            "VPSDE(beta_min=T·β_1, beta_max=T·β_T)."
        )
    if x_init is not None:
        x_init = jnp.asarray(x_init)
        if not jnp.issubdtype(x_init.dtype, jnp.floating):
            x_init = x_init.astype(jnp.result_type(float))
        shape = x_init.shape
    if shape is None or len(shape) < 1:
        raise ValueError(f"sample: shape must be (batch, *event), got {shape}.")
    shape = tuple(int(s) for s in shape)
    t_end = process.data_end(t_eps)
    if adaptive:
        if t_end == process.t_data and flow.no_evaluation_at is not None:
            why = ("dσ/dt ~ 1/√t" if process.default_t_eps > 0 else
                   f"σ = 0 there and a {flow.prediction!r} model divides by σ; a velocity model does not")
            raise ValueError(
                f"sample: an adaptive solver would evaluate the velocity at t_data, where it is "
                f"singular on {type(process).__name__} ({why}); use t_eps > 0."
            )
        ts_arg, num_steps, grid_name = jnp.asarray([process.t_noise, t_end]), 1, None
        reaches_data = t_end == process.t_data
    elif isinstance(grid, str):
        num_steps = _check_num_steps(num_steps)
        if grid not in GRIDS:
            raise ValueError(f"Unknown grid {grid!r}; choose one of {GRIDS} or pass an array.")
        ts_arg, grid_name, reaches_data = None, grid, t_end == process.t_data
    else:
        num_steps = _check_num_steps(num_steps)
        ts_arg, grid_name = jnp.asarray(grid, jnp.result_type(float)), None
        if ts_arg.shape != (num_steps + 1,) or not is_concrete(ts_arg):
            raise ValueError(
                f"sample: a grid array must be concrete with shape (num_steps+1,) = "
                f"({num_steps + 1},); got {ts_arg.shape}. Use a grid name inside jit."
            )
        tn = np.asarray(ts_arg)
        if not np.all(np.diff(tn) * np.sign(process.t_data - process.t_noise) > 0):
            raise ValueError("sample: the grid must run strictly from the noise to the data end.")
        if x_init is None and float(tn[0]) != process.t_noise:
            raise ValueError(
                f"sample: the prior is drawn at t_noise = {process.t_noise}, but the grid starts "
                f"at {tn[0]}; start the grid there or pass x_init (the state at the grid's start)."
            )
        reaches_data = float(tn[-1]) == process.t_data
    denoise_final = bool(denoise_final and not reaches_data)
    if save_trajectory and adaptive:
        raise ValueError("sample: adaptive solvers keep no trajectory (save_trajectory=False).")
    x, path, nfe = _sample_compiled(
        solver, flow, key, x_init, ts_arg, shape=shape, num_steps=num_steps, grid=grid_name,
        t_eps=t_eps, denoise_final=denoise_final, save_trajectory=save_trajectory,
    )  # fmt: skip
    if not adaptive:
        nfe = solver.num_evaluations(num_steps, ends_at_data=reaches_data,
                                     finite_at_data=flow.no_evaluation_at is None,
                                     starts_at_zero_alpha=process.alpha_is_zero_at_noise())  # fmt: skip
    return SampleResult(x, path, nfe + int(denoise_final))


def _thread_model_state(solver: Solver) -> ThreadModelState:
    """A model with state across steps (APG momentum) runs only on solvers that evaluate it once per
    step, at the step's start; refused otherwise, before any compute."""
    if isinstance(solver, Adaptive) or solver.evals_per_step != 1:
        raise ValueError(
            f"sample: the model carries state from step to step (e.g. APG momentum), which needs one "
            f"model evaluation per step; {solver!r} takes "
            f"{'adaptive steps' if isinstance(solver, Adaptive) else f'{solver.evals_per_step} per step'}. "
            "Use 'ddim', 'dpm_solver_pp', 'unipc', 'deis', 'euler', 'ancestral', 'euler_maruyama', "
            "'dpm_solver_pp_sde' or 'sa_solver'."
        )
    return ThreadModelState(solver)


@filter_jit
def _sample_compiled(
    solver: Solver, flow: ProbabilityFlow, key, x_init, ts, *, shape, num_steps, grid, t_eps,
    denoise_final, save_trajectory,
):  # fmt: skip
    process = flow.process
    dtype = jnp.result_type(float)
    if ts is None:
        ts = make_grid(process, num_steps, grid, t_eps)
    ts = ts.astype(dtype)
    k_prior, k_steps = jax.random.split(key)
    if x_init is None:
        x_init = process.prior_sample(k_prior, shape, dtype)
    sol = integrate(solver, flow, x_init, ts, k_steps, save_every=int(save_trajectory))
    x = sol.y
    if denoise_final:
        if isinstance(solver, ThreadModelState):  # the last evaluation sees the carried state too
            flow = evaluate_with_state(flow, x, ts[-1], sol.carry[1])[0]
        x = flow.denoise(x, ts[-1])[0].astype(x.dtype)
    return x, sol.trajectory, sol.nfe


__all__ = ["SampleResult", "make_solver", "sample", "steps_for_budget"]
