"""The shared sampling driver: one `lax.scan` over the time grid runs any sampler's step.

A sampler is a pure step function

    step((x, carry), t, t_next, key) -> (x, carry)

that moves the state x of shape (batch, *event) from time t to t_next (scalars on the process's
own time axis) using the model only through `denoise(x, t) -> (x0_hat, eps_hat)`; `carry` holds
what multistep methods remember. `integrate` runs it over a grid; `sample` draws the prior, builds
the grid, compiles the whole loop once per (shape, num_steps, sampler, options) and counts the
model evaluations statically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._validate import is_concrete
from diffjax.parameterization import ModelFn, Prediction, x0_eps_fn
from diffjax.processes.base import GaussianProcess, expand
from diffjax.processes.ddpm import DDPMChain
from diffjax.samplers.grids import GRIDS, data_end, make_grid

Denoiser = Callable[[Array, Array], tuple[Array, Array]]
State = tuple[Array, Any]
StepFn = Callable[[State, Array, Array, Array], State]


def _no_carry(x: Array) -> None:
    return None


class Sampler(NamedTuple):
    """A step function and what the driver needs to know about it.

    step: (x, carry), t, t_next, key -> (x, carry).
    init: x_init -> initial carry (None for one-step methods).
    evals_per_step: model evaluations per step.
    saves_at_data_end: one evaluation fewer on a last step that reaches t_data (t_eps = 0).
    saves_at_zero_alpha: one evaluation fewer on a first step from α(t_noise) = 0 (flow paths).
    needs_rates: uses dα/dt, dσ/dt or g²(t) (so it cannot run on the discrete DDPM chain).
    """

    step: StepFn
    init: Callable[[Array], Any] = _no_carry
    evals_per_step: int = 1
    saves_at_data_end: bool = False
    saves_at_zero_alpha: bool = False
    needs_rates: bool = True

    def nfe(self, num_steps: int, reaches_data: bool, zero_alpha_start: bool) -> int:
        """Model evaluations of `num_steps` steps (static)."""
        return (
            num_steps * self.evals_per_step
            - int(self.saves_at_data_end and reaches_data)
            - int(self.saves_at_zero_alpha and zero_alpha_start)
        )


SamplerConstructor = Callable[..., Sampler]  # (denoise, process, num_steps, **options) -> Sampler


class SampleResult(NamedTuple):
    """samples (batch, *event); trajectory (num_steps+1, batch, *event) of the states on the grid
    (before the final denoising) or None; nfe, the number of model evaluations."""

    samples: Array
    trajectory: Array | None
    nfe: int | Array


# -- formulas shared by the samplers -----------------------------------------------------------
def velocity(process: GaussianProcess, x0: Array, eps: Array, t: ArrayLike) -> Array:
    """Probability-flow velocity dx/dt = α̇ x̂0 + σ̇ ε̂ on the process's time axis."""
    c = process.coefficients(t)
    return expand(c.d_alpha, x0) * x0 + expand(c.d_sigma, eps) * eps


def score(process: GaussianProcess, eps: Array, t: ArrayLike) -> Array:
    """∇ log p_t = −ε̂/σ(t)."""
    return -eps / expand(process.sigma(t), eps)


def per_example_norm(x: Array) -> Array:
    """‖x_b‖ over the event axes, shape (batch,)."""
    return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))


# -- the loop ----------------------------------------------------------------------------------
def integrate(
    step_fn: StepFn,
    x_init: Float[Array, "batch ..."],
    ts: Float[Array, " n_plus_1"],
    key: Array,
    carry_init: Any = None,
    save_trajectory: bool = False,
) -> tuple[Array, Any, Array | None]:
    """Run `step_fn` over the consecutive pairs (ts[i], ts[i+1]) with one fresh key per step, as
    one `lax.scan`. Returns (x_final, carry_final, trajectory), the trajectory of shape
    (n+1, batch, *event) with trajectory[0] = x_init (None unless save_trajectory)."""
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"integrate: ts must be a 1-D grid of >= 2 times, got shape {ts.shape}.")
    keys = jax.random.split(key, ts.shape[0] - 1)

    def body(state, inputs):
        t, t_next, k = inputs
        x, carry = step_fn(state, t, t_next, k)
        return (x.astype(state[0].dtype), carry), (x if save_trajectory else None)

    (x, carry), path = jax.lax.scan(body, (x_init, carry_init), (ts[:-1], ts[1:], keys))
    if save_trajectory:
        path = jnp.concatenate([x_init[None], path], axis=0)
    return x, carry, path


# -- model functions as (static function, dynamic arrays) ---------------------------------------
def split_model(model_fn: ModelFn) -> tuple[list, tuple]:
    """Split a model function (a plain function or a pytree such as `jax.tree_util.Partial`
    holding parameters) into its array leaves, traced by `jit`, and a hashable static part."""
    leaves, treedef = jax.tree_util.tree_flatten(model_fn)
    is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    arrays = [leaf for leaf, a in zip(leaves, is_array, strict=True) if a]
    static = tuple(leaf for leaf, a in zip(leaves, is_array, strict=True) if not a)
    return arrays, (treedef, is_array, static)


def join_model(arrays: list, static: tuple) -> ModelFn:
    treedef, is_array, static_leaves = static
    it_a, it_s = iter(arrays), iter(static_leaves)
    return jax.tree_util.tree_unflatten(
        treedef, [next(it_a) if a else next(it_s) for a in is_array]
    )


def zero_alpha_at_noise(process: GaussianProcess) -> bool:
    """Whether α(t_noise) = 0 (flow paths), decided at trace time where the process is concrete."""
    with jax.ensure_compile_time_eval():
        a = process.alpha(jnp.asarray(process.t_noise, jnp.result_type(float)))
    return bool(is_concrete(a) and float(a) == 0.0)


# -- the user-facing entry point ---------------------------------------------------------------
def _resolve(sampler) -> SamplerConstructor:
    from diffjax.samplers import SAMPLERS  # the plain name -> constructor dict

    if callable(sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {tuple(SAMPLERS)}.")
    return SAMPLERS[sampler]


def sample(
    sampler: str | SamplerConstructor,
    model_fn: ModelFn,
    process: GaussianProcess,
    key: Array,
    shape: tuple[int, ...],
    num_steps: int,
    *,
    prediction: Prediction = "eps",
    grid: str | ArrayLike = "uniform",
    t_eps: float | None = None,
    denoise_final: bool = True,
    save_trajectory: bool = False,
    x_init: Array | None = None,
    **sampler_options,
) -> SampleResult:
    """Draw samples of shape `shape` = (batch, *event) with `num_steps` steps of `sampler`.

    Args:
      sampler: a name in `diffjax.samplers.SAMPLERS` or a constructor
        (denoise, process, num_steps, **options) -> Sampler.
      model_fn: model(x (batch, *event), t (batch,)) -> prediction of kind `prediction` ('eps',
        'x0', 'score', 'v' or 'velocity'), converted exactly to (x̂0, ε̂). A plain function is
        static (hashed by identity); a pytree function (e.g. `jax.tree_util.Partial(apply,
        params)`) has its arrays traced, so new parameters do not recompile.
      process: any `GaussianProcess` (diffusion SDE, flow path, DDPM chain).
      key: PRNG key for the prior and the sampler's noise.
      grid: 'uniform', 'edm', 'logsnr' (see `diffjax.samplers.grids`) or a concrete array of
        num_steps+1 times running towards the data (from t_noise, unless x_init is given).
      t_eps: data-end offset (default `grids.default_t_eps(process)`).
      denoise_final: return x̂0 at the last time (one more evaluation; skipped when t_eps = 0,
        where the grid already ends at the data).
      x_init: initial state at t_noise instead of a prior draw (e.g. a sharded batch).
      sampler_options: passed to the sampler's constructor (static: floats, ints, strings).

    Returns:
      SampleResult(samples, trajectory, nfe). Compiled once per (shape, num_steps, sampler,
      options, grid name, process); `jax.vmap` over keys and sharded `x_init` work unchanged.
    """
    make = _resolve(sampler)
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"sample: num_steps must be a positive integer, got {num_steps!r}.")
    shape = tuple(int(s) for s in (x_init.shape if x_init is not None else shape))
    if len(shape) < 1:
        raise ValueError(f"sample: shape must be (batch, *event), got {shape}.")
    t_end = data_end(process, t_eps)
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"Unknown grid {grid!r}; choose one of {GRIDS} or pass an array.")
        ts_arg, reaches_data = None, t_end == process.t_data
    else:
        ts_arg = jnp.asarray(grid, jnp.result_type(float))
        if ts_arg.shape != (num_steps + 1,) or not is_concrete(ts_arg):
            raise ValueError(
                f"sample: a grid array must be concrete with shape (num_steps+1,) = "
                f"({num_steps + 1},); got {ts_arg.shape}. Use a grid name inside jit."
            )
        tn = np.asarray(ts_arg)
        towards_data = np.diff(tn) * process.direction
        if not np.all(towards_data > 0):
            raise ValueError("sample: the grid must run strictly from the noise to the data end.")
        if x_init is None and float(tn[0]) != process.t_noise:
            raise ValueError(
                f"sample: the prior is drawn at t_noise = {process.t_noise}, but the grid starts "
                f"at {tn[0]}; start the grid there or pass x_init (the state at the grid's start)."
            )
        reaches_data = float(tn[-1]) == process.t_data
    denoise_final = bool(denoise_final and not reaches_data)
    built = make(None, process, int(num_steps), **sampler_options)  # validates the options
    nfe = built.nfe(int(num_steps), reaches_data, zero_alpha_at_noise(process))
    options = tuple(sorted(sampler_options.items()))
    arrays, static_model = split_model(model_fn)
    x, path = _sample_compiled(
        arrays, process, key, x_init, ts_arg,
        make=make, static_model=static_model, prediction=prediction, shape=shape,
        num_steps=int(num_steps), grid=grid if ts_arg is None else None, t_eps=t_eps,
        denoise_final=denoise_final, save_trajectory=save_trajectory, options=options,
    )  # fmt: skip
    return SampleResult(x, path, nfe + int(denoise_final))


@functools.partial(
    jax.jit,
    static_argnames=(
        "make", "static_model", "prediction", "shape", "num_steps", "grid", "t_eps",
        "denoise_final", "save_trajectory", "options",
    ),
)  # fmt: skip
def _sample_compiled(
    arrays, process, key, x_init, ts, *, make, static_model, prediction, shape, num_steps, grid,
    t_eps, denoise_final, save_trajectory, options,
):  # fmt: skip
    model_fn = join_model(arrays, static_model)
    denoise = x0_eps_fn(model_fn, process, prediction)
    built = make(denoise, process, num_steps, **dict(options))
    if built.needs_rates and isinstance(process, DDPMChain):
        raise ValueError(
            "This sampler integrates an ODE/SDE and needs dα/dt, dσ/dt or g²(t), which the "
            "discrete DDPMChain does not have. Use 'ancestral', 'ddim' or 'dpm_solver_pp' on the "
            "chain, or its continuous limit VPSDE(beta_min=T·β_1, beta_max=T·β_T)."
        )
    if ts is None:
        ts = make_grid(process, num_steps, grid, t_eps)
    k_prior, k_steps = jax.random.split(key)
    dtype = jnp.result_type(float)
    if x_init is None:
        x_init = process.prior_sample(k_prior, shape, dtype)
    x, _, path = integrate(
        built.step, x_init, ts.astype(dtype), k_steps, built.init(x_init), save_trajectory
    )
    if denoise_final:
        x = denoise(x, ts[-1])[0].astype(x.dtype)
    return x, path
