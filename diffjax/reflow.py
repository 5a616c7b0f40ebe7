"""Rectified flow: reflow on a model's own couplings, straightness, and distillation of the pairs.

Liu, Gong & Liu (2022), "Flow Straight and Fast". A trained flow defines a deterministic coupling:
each noise draw z at t_noise is paired with the endpoint of its probability-flow ODE,

    (z, x) = (z, Φ_{t_noise→t_data}(z))                                         (`make_couplings`).

Reflow trains a new flow on these pairs with the noise of the regression held to the paired z
(ε = z/σ(t_noise), so that on flow paths with α(t_noise) = 0 the interpolant at t_noise is z itself;
on a VP process it is α(T) x + z, α(T) ≈ 0.006, the prior's own approximation):

    x_t = α(t) x + σ(t) ε,    L = E_t E_(z,x) w(t)·mean‖u_θ(x_t, t) − (α̇ x + σ̇ ε)‖²    (`reflow_loss`),

which on CondOT is Liu et al.'s eq. (1) with the lines X_t = t x + (1 − t) z. Its minimiser is the
velocity of the rectified coupling, whose trajectories are straighter: the straightness

    S = (1/|Δ|) ∫ E‖(x − z)/Δ − v(x_τ, τ)‖² dτ,   Δ = t_data − t_noise,            (`straightness`)

along the flow's own trajectories x_τ from z to x (Liu et al., Def. 2.4, in time units of the
process) is 0 iff every trajectory is a straight line traversed at constant speed, where one Euler
step is exact. A reflowed flow is then distilled into a k-step flow map by regression on the pairs
(`pair_distillation_loss`; Liu et al. §2.3).

Shapes: couplings (N, *event); t (N,). Models are callables (x, t) -> prediction (their declared
`prediction`, or the `prediction=` argument); flow maps are callables (x, t, s) -> Φ_{t→s}(x)
(`diffjax.flow_map`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from diffjax._array import expand
from diffjax._jit import filter_jit
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_key, check_same_shape
from diffjax.flow import as_flow, check_model_output
from diffjax.grids import make_grid
from diffjax.losses import TimeSampler, denoising_loss
from diffjax.processes.base import GaussianProcess
from diffjax.sampling import make_solver, sample
from diffjax.solvers import RK4, Solver, integrate


# -- couplings -------------------------------------------------------------------------------
@pytree_dataclass
class Couplings:
    """Pairs (noise z (N, *event) at t_noise, data x (N, *event)) of a deterministic coupling, with a
    JSON header (process, solver, steps, nfe) naming how they were made (static, hashable).

    waypoints (N, m, *event), optional: the same solve's states at the m interior times
    `waypoint_times` (static, increasing from t_noise towards the data), so that a k = m + 1 step
    student can regress the teacher's own trajectory (`pair_distillation_loss`) instead of the
    pair's straight line."""

    noise: Array
    data: Array
    header_json: str = static_field(default="{}")
    waypoints: Array | None = None
    waypoint_times: tuple[float, ...] = static_field(default=())

    def __post_init__(self):
        m = len(self.waypoint_times)
        if (self.waypoints is None) != (m == 0):
            raise ValueError("Couplings: waypoints and waypoint_times come together (both or neither).")
        if self.waypoints is not None and hasattr(self.waypoints, "shape"):
            want = (self.noise.shape[0], m, *self.noise.shape[1:])
            if tuple(self.waypoints.shape) != want:
                raise ValueError(f"Couplings: waypoints must have shape (N, m, *event) = {want} for "
                                 f"{m} waypoint_times, got {tuple(self.waypoints.shape)}.")  # fmt: skip

    @property
    def header(self) -> dict:
        return json.loads(self.header_json)

    def __len__(self) -> int:
        return int(self.noise.shape[0])


def make_couplings(
    model,
    process: GaussianProcess,
    key: Array,
    shape_or_noise: tuple[int, ...] | Array,
    *,
    solver: str | Solver = "heun",
    num_steps: int | None = None,
    prediction: str | None = None,
    grid: str = "uniform",
    t_eps: float | None = None,
    waypoints: int = 0,
    **solver_options,
) -> Couplings:
    """(z, Φ(z)): noise z ~ prior (a shape (N, *event), drawn with `key`) or given noise (N, *event),
    and the endpoint of the model's probability-flow ODE from z, by `diffjax.sample` with z as its
    initial state (`x_init`): one compiled, batched solve. `num_steps` is needed unless the solver is
    adaptive ('dopri5', 'tsit5'); the endpoint is x̂0 at the grid's last time (`denoise_final`).

    waypoints = m > 0 also keeps the solve's states after every (num_steps/(m + 1))-th step (a fixed
    grid whose num_steps m + 1 divides): the interior points of an (m + 1)-step student grid when
    both grids are uniform (`Couplings.waypoints`)."""
    check_key(key, "make_couplings")
    if not isinstance(waypoints, int) or waypoints < 0:
        raise ValueError(f"make_couplings: waypoints must be an int >= 0, got {waypoints!r}.")
    if waypoints and (not isinstance(num_steps, int) or num_steps % (waypoints + 1)):
        raise ValueError(f"make_couplings: {waypoints} waypoints split a fixed grid into {waypoints + 1} "
                         f"equal runs; num_steps={num_steps!r} is not a multiple of {waypoints + 1}.")
    k_noise, k_solve = jax.random.split(key)
    if isinstance(shape_or_noise, tuple | list):
        shape = tuple(int(n) for n in shape_or_noise)
        if len(shape) < 2:
            raise ValueError(f"make_couplings: shape must be (batch, *event), got {shape}.")
        noise = process.prior_sample(k_noise, shape, jnp.result_type(float))
    else:
        noise = jnp.asarray(shape_or_noise)
        if noise.ndim < 2 or not jnp.issubdtype(noise.dtype, jnp.floating):
            raise ValueError(
                f"make_couplings: noise must be a float array (batch, *event), got {noise.dtype} "
                f"{noise.shape}; or pass a shape tuple to draw it."
            )
    solver = make_solver(solver, **solver_options)
    res = sample(solver, model, process, k_solve, num_steps=num_steps, prediction=prediction, grid=grid,
                 t_eps=t_eps, x_init=noise, save_trajectory=bool(waypoints))  # fmt: skip
    nfe = res.nfe
    header = {
        "process": repr(process), "solver": repr(solver), "num_steps": num_steps, "grid": grid,
        "t_eps": t_eps, "nfe": int(np.max(np.asarray(nfe))),
    }  # fmt: skip
    if not waypoints:
        return Couplings(noise, res.samples.astype(noise.dtype), json.dumps(header, sort_keys=True))
    times, states = waypoints_of(res.trajectory, make_grid(process, num_steps, grid, t_eps), waypoints)
    return Couplings(noise, res.samples.astype(noise.dtype), json.dumps(header, sort_keys=True),
                     states.astype(noise.dtype), times)  # fmt: skip


def waypoints_of(trajectory: Array, ts: Array, waypoints: int) -> tuple[tuple[float, ...], Array]:
    """(times, states (N, m, *event)) of m = `waypoints` evenly spaced interior points of a solve's
    trajectory (num_steps + 1, N, *event) on its concrete grid ts (num_steps + 1,)."""
    every = (ts.shape[0] - 1) // (waypoints + 1)
    idx = [every * (j + 1) for j in range(waypoints)]
    times = tuple(float(t) for t in np.asarray(ts)[idx])
    return times, jnp.moveaxis(jnp.asarray(trajectory)[jnp.asarray(idx)], 0, 1)


def save_couplings(path: str | os.PathLike, couplings: Couplings) -> None:
    """Write the pairs and the header to an .npz file (arrays as they are, bit for bit)."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"save_couplings: the file must end in .npz, got {path!r}.")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    extra = {}
    if couplings.waypoints is not None:
        extra = dict(waypoints=np.asarray(couplings.waypoints),
                     waypoint_times=np.asarray(couplings.waypoint_times, np.float64))  # fmt: skip
    np.savez(path, noise=np.asarray(couplings.noise), data=np.asarray(couplings.data),
             header=np.asarray(couplings.header_json), **extra)  # fmt: skip


def load_couplings(path: str | os.PathLike) -> Couplings:
    """The `Couplings` written by `save_couplings` (no pickles are loaded)."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        missing = {"noise", "data", "header"} - set(f.files)
        if missing:
            raise ValueError(f"load_couplings: {path} lacks {sorted(missing)}; write it with save_couplings.")
        header = str(f["header"][()])
        json.loads(header)  # a clear error here rather than at first use
        if "waypoints" not in f.files:
            return Couplings(jnp.asarray(f["noise"]), jnp.asarray(f["data"]), header)
        times = tuple(float(t) for t in f["waypoint_times"])
        return Couplings(jnp.asarray(f["noise"]), jnp.asarray(f["data"]), header, jnp.asarray(f["waypoints"]),
                         times)  # fmt: skip


# -- reflow ----------------------------------------------------------------------------------
def _paired_noise(process: GaussianProcess, noise: Array) -> Array:
    """ε = z/σ(t_noise): the standard-normal noise of the regression that a prior draw z stands for."""
    return noise / process.prior_std().astype(noise.dtype)


def reflow_loss(
    model,
    pair: Couplings | tuple[Array, Array],
    key: Array,
    *,
    process: GaussianProcess,
    prediction: str | None = None,
    weighting: str | Callable = "none",
    time_sampler: TimeSampler | None = None,
    reduce: bool = True,
) -> Array:
    """Flow matching on coupled pairs: E[w(t)·mean‖u_θ(x_t, t) − (α̇ x + σ̇ ε)‖²] with
    x_t = α(t) x + σ(t) ε and ε = z/σ(t_noise) the paired noise (module docstring), t ~ time_sampler
    (default `uniform_time(process)`). The model's prediction is converted to the velocity exactly;
    `weighting` as in `diffjax.losses` (default none: Liu et al.'s plain regression). pair:
    `Couplings` or (noise, data), each (batch, *event). A scalar (or (batch,) with reduce=False).

    It is `diffjax.losses.denoising_loss(target='velocity')` with ε given instead of drawn."""
    noise, data = (pair.noise, pair.data) if isinstance(pair, Couplings) else pair
    check_same_shape(noise, data, "noise and data", "reflow_loss")
    prediction = prediction or getattr(model, "prediction", None) or "velocity"
    return denoising_loss(model, data, check_key(key, "reflow_loss"), process=process, prediction=prediction,
                          target="velocity", weighting=weighting, time_sampler=time_sampler,
                          eps=_paired_noise(process, noise), reduce=reduce)  # fmt: skip


# -- straightness ------------------------------------------------------------------------------
@pytree_dataclass
class _AugmentedFlow:
    """The term RK4 integrates in `straightness` (kept separate from the field of the velocity)."""

    field: Callable

    def velocity(self, y, t):
        x, _ = y
        v = self.field(x, jnp.broadcast_to(t, x.shape[:1]))
        return v, jnp.sum(jnp.square(v).reshape(x.shape[0], -1), axis=-1)


def straightness(
    velocity_or_model,
    process: GaussianProcess,
    noise: Array,
    *,
    num_steps: int = 64,
    prediction: str | None = None,
    t_eps: float | None = None,
    reduce: bool = True,
) -> Array:
    """Liu et al.'s straightness S of the flow through the noise draws z (module docstring), with
    ‖·‖ the Euclidean norm over the event axes, in one `lax.scan`: since ∫ v dτ = x − z on the
    trajectory, S = (1/|Δ|)∫‖v‖² dτ − ‖(x − z)/Δ‖², and RK4 integrates the augmented ODE
    d(x, q)/dτ = (v, ‖v‖²) on `num_steps` uniform steps from t_noise to the data end (moved by
    t_eps, default `process.default_t_eps`): error O(num_steps⁻⁴), nothing stored along the way.

    velocity_or_model: a model (x, t) -> prediction (its declared `prediction` or `prediction=`),
    or a plain velocity function (x (N, *event), t (N,)) -> dx/dt (prediction defaults to
    'velocity'). noise (N, *event) at t_noise. Returns the mean (or (N,) with reduce=False)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"straightness: num_steps must be an int >= 1, got {num_steps!r}.")
    noise = jnp.asarray(noise)
    if noise.ndim < 2:
        raise ValueError(f"straightness: noise must be (batch, *event), got shape {noise.shape}.")
    prediction = prediction or getattr(velocity_or_model, "prediction", None) or "velocity"
    flow = as_flow(velocity_or_model, process, prediction)
    process.data_end(t_eps)  # validates t_eps
    per_example = _straightness_compiled(flow, noise, num_steps=num_steps, t_eps=t_eps)
    return jnp.mean(per_example) if reduce else per_example


@filter_jit
def _straightness_compiled(flow, noise, *, num_steps, t_eps):
    ts = make_grid(flow.process, num_steps, "uniform", t_eps).astype(noise.dtype)
    span = ts[-1] - ts[0]
    y0 = (noise, jnp.zeros(noise.shape[:1], noise.dtype))
    x, energy = integrate(RK4(), _AugmentedFlow(flow.velocity), y0, ts).y
    chord = jnp.sum(jnp.square(x - noise).reshape(x.shape[0], -1), axis=-1) / span**2
    return energy / span - chord  # q = ∫ from t_noise to the data end, signed like span


def gaussian_straightness(std: float, dim: int) -> float:
    """Liu et al.'s S of the exact flow of data N(m, std² I) in `dim` dimensions under CondOT (σ_min = 0).

    The trajectory from z is x_τ = τ m + r(τ) z with r = √(τ² std² + (1 − τ)²) (r(0) = 1, r(1) = std),
    its velocity m + r'(τ) z and its chord m + (std − 1) z, so per draw S_z = ‖z‖²·∫₀¹(std − 1 − r')² dτ
    = ‖z‖²·(∫₀¹ r'² dτ − (std − 1)²). With a = 1 + std², (aτ − 1)² = a·r² − std² gives
    r'² = a − std²/r², and ∫₀¹ dτ/r² = (arctan std + arctan(1/std))/std = π/(2 std), so
    S_z = ‖z‖²·std·(2 − π/2) and S = dim·std·(2 − π/2) for every mean m: the speed along each ray
    varies (r is not affine in τ) unless std → 0 (a point mass). Returns the factor std·(2 − π/2)
    times dim."""
    return float(dim * std * (2.0 - np.pi / 2.0))


# -- distillation of the pairs ------------------------------------------------------------------
def pair_distillation_loss(
    flow_map: Callable[[Array, Array, Array], Array],
    pair: Couplings | tuple[Array, Array],
    key: Array | None = None,
    *,
    process: GaussianProcess,
    num_steps: int | tuple[int, ...] = 1,
    grid: str | Array = "uniform",
    t_eps: float | None = None,
    reduce: bool = True,
) -> Array:
    """k-step distillation of a coupling into a flow map Φ_θ(x, t, s) (Liu et al. §2.3): on the grid
    t_0 = t_noise, …, t_k = data end (`grid` a name or a concrete (k+1,) array), each example draws a
    step i ~ U{0, …, k−1} and regresses the jump from its state y_i at t_i onto y_{i+1}:

        L = E mean‖Φ_θ(y_i, t_i, t_{i+1}) − y_{i+1}‖²,    y_0 = z, y_k = x.

    Without waypoints the states are the pair's line, y_i = α(t_i) x + σ(t_i) ε with ε = z/σ(t_noise)
    (a reflowed coupling; on a VP process the line's α(T) x is dropped at t_noise). With m waypoints
    (`Couplings.waypoints`) they are the teacher's own trajectory and the grid is every ((m + 1)/k)-th
    of (t_noise, *waypoint_times, data end) (k must divide m + 1): trajectory distillation, where each
    jump is a piece of the teacher's flow map (the `grid` argument must then be left at its default).
    k = 1 is one-step distillation Φ_θ(z, t_noise, t_data) → x (the key is not used).

    num_steps a tuple (k_1, k_2, …): one network for several budgets — each example draws k uniformly
    among them, then its step i ~ U{0, …, k−1} on the k-step grid (with waypoints (1, 2) regresses the
    whole jump z → x and both halves z → x_½ → x of the teacher's trajectory; `grid` must be a name).
    A single k, as an int or a 1-tuple, draws exactly as before.

    The map of a flow whose trajectories are the pairs' lines has loss 0 at every k; the exact map of
    a flow with curved trajectories only at k = 1, or at every k (and every tuple) on its own
    waypoints (tests/test_reflow.py). A scalar (or (batch,))."""
    noise, data = (pair.noise, pair.data) if isinstance(pair, Couplings) else pair
    check_same_shape(noise, data, "noise and data", "pair_distillation_loss")
    ks = tuple(num_steps) if isinstance(num_steps, tuple | list) else (num_steps,)
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks) \
            or len(set(ks)) != len(ks):  # fmt: skip
        raise ValueError("pair_distillation_loss: num_steps must be an int >= 1 or a tuple of distinct "
                         f"ints >= 1, got {num_steps!r}.")  # fmt: skip
    if len(ks) > 1 and not isinstance(grid, str):
        raise ValueError("pair_distillation_loss: several num_steps need a named grid, not an array.")
    waypoints = pair.waypoints if isinstance(pair, Couplings) else None
    if waypoints is not None:
        m = len(pair.waypoint_times)
        if not (isinstance(grid, str) and grid == "uniform"):
            raise ValueError("pair_distillation_loss: with waypoints the grid is theirs; leave grid unset.")
        trajectory_ts = jnp.asarray([float(process.t_noise), *pair.waypoint_times, process.data_end(t_eps)])
    # every jump of every k-step grid: start/end times and the indices of its start/end states
    starts, ends, first, last, weights = [], [], [], [], []
    for k in ks:
        if waypoints is None:
            ts = make_grid(process, k, grid, t_eps) if isinstance(grid, str) else jnp.asarray(grid)
            index = list(range(k + 1))
        else:
            if (m + 1) % k:
                raise ValueError(f"pair_distillation_loss: couplings with {m} waypoints split the path into "
                                 f"{m + 1} pieces; num_steps={k} must divide {m + 1}.")  # fmt: skip
            stride = (m + 1) // k
            ts, index = trajectory_ts[::stride], list(range(0, m + 2, stride))
        if ts.shape != (k + 1,):
            raise ValueError(f"pair_distillation_loss: the grid must have num_steps + 1 = {k + 1} times, "
                             f"got shape {ts.shape}.")  # fmt: skip
        starts.append(ts[:-1])
        ends.append(ts[1:])
        first += index[:-1]
        last += index[1:]
        weights += [1.0 / (len(ks) * k)] * k
    t_of, s_of = jnp.concatenate(starts).astype(data.dtype), jnp.concatenate(ends).astype(data.dtype)
    n, num_jumps = data.shape[0], len(weights)
    if num_jumps == 1:
        j = jnp.zeros((n,), jnp.int32)
    else:
        if key is None:
            raise ValueError("pair_distillation_loss: more than one jump draws a jump per example; pass key.")
        key = check_key(key, "pair_distillation_loss")
        if len(ks) == 1:
            j = jax.random.randint(key, (n,), 0, num_jumps)
        else:
            j = jax.random.choice(key, num_jumps, (n,), p=jnp.asarray(weights))
    t, s = t_of[j], s_of[j]
    a, b = jnp.asarray(first)[j], jnp.asarray(last)[j]
    if waypoints is None:
        eps = _paired_noise(process, noise)

        def on_line(tau):
            return expand(process.alpha(tau), data) * data + expand(process.sigma(tau), data) * eps

        x_t = jnp.where(expand(a == 0, data), noise, on_line(t))  # the state at t_noise is z itself
        target = on_line(s)
    else:
        states = jnp.concatenate([noise[:, None], waypoints.astype(data.dtype), data[:, None]], axis=1)
        rows = jnp.arange(n)
        x_t, target = states[rows, a], states[rows, b]
    out = flow_map(x_t, t, s)
    check_model_output(out, data, "pair_distillation_loss")
    per_example = jnp.mean(jnp.square(out - target).reshape(n, -1), axis=-1)
    return jnp.mean(per_example) if reduce else per_example


__all__ = [
    "Couplings", "gaussian_straightness", "load_couplings", "make_couplings",
    "pair_distillation_loss", "reflow_loss", "save_couplings", "straightness", "waypoints_of",
]  # fmt: skip
