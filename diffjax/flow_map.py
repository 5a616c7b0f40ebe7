"""Flow maps of the probability-flow ODE: the object every few-step method learns.

For the probability-flow ODE dx/dτ = v(x, τ) of a process, the flow map Φ_{t→s}(x) is the state at
time s of the solution that passes through x at time t (t the current time, s the target; both on
the process's own axis). Every few-step method learns a piece of it:

    consistency function   f(x, t)    = Φ_{t→t_data}(x)                     (Song et al. 2023)
    average velocity       u(x, t, s) = (Φ_{t→s}(x) − x)/(s − t),  u(x, t, t) = v(x, t)
                                                          (MeanFlow, Geng et al. 2025: their u(z, r, t)
                                                           is u(z, t, s = r); shortcut models)
    reflow / distillation  Φ_{t_noise→t_data} on stored couplings

and the maps satisfy Φ_{s→r}∘Φ_{t→s} = Φ_{t→r}, Φ_{t→t} = id, and the MeanFlow identity
u = v − (t − s)·du/dt along trajectories (d/dt = ∂_t + v·∇_x).

`solve_flow_map` computes Φ for any velocity with per-example times (t, s of shape (N,)): the
substitution τ ↦ t + τ(s − t) turns every example's interval into [0, 1],

    dx/dτ = (s − t)·v(x, t + τ(s − t)),   τ ∈ [0, 1],

integrated by classical RK4 (one `lax.scan` through `diffjax.solvers.integrate`, so `jax.jit`,
`jax.grad` and `jax.jvp` go through it) on the grid τ_i = (1 − cos(π i/n))/2, which is fine near
both ends; the last step takes RK4's midpoint fallback so the velocity is never evaluated exactly at
τ = 1 (at the data end of a VP process σ̇ is infinite). The error is O(n⁻⁴).

Few-step sampling runs on the same integrator: `FlowMapStep` jumps x ← Φ(x, t_i, t_{i+1}) over a
grid, or (renoise=True) jumps to the data end, x̂0 = Φ(x, t_i, t_data), and re-noises to the next time,

    x_{t_{i+1}} = α(t_{i+1}) x̂0 + σ(t_{i+1}) (√(1 − η²) ε̂ + η z),   ε̂ = (x − α(t_i) x̂0)/σ(t_i),

with fresh z ~ N(0, I): η = 1 is multistep consistency sampling (Song et al. 2023, Alg. 1), which
keeps the marginals exact with an exact map; η = 0 is DDIM's deterministic step with x̂0 from the map
(the noise the current state implies), which does not, but with a learned map it lands the second
jump on the same line from ε̂ to x̂0 rather than at a random point (MNIST: `README.md`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._array import expand
from diffjax._jit import filter_jit
from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_batch_time
from diffjax.processes.base import GaussianProcess
from diffjax.solvers.base import Solver, integrate
from diffjax.solvers.runge_kutta import RK4

FlowMapFn = Callable[[Array, Array, Array], Array]  # (x, t, s) -> Φ_{t→s}(x)


def _batch_times(x: Array, t, name: str) -> Array:
    t = check_batch_time(x, t, name)
    return jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype)


class _RescaledTime:
    """The term of dx/dτ = (s − t)·v(x, t + τ(s − t)) with per-example t, s (what `solve_flow_map`
    integrates); no_evaluation_at = 1 makes RK4 take its midpoint fallback on the step that ends at
    τ = 1."""

    no_evaluation_at = 1.0

    def __init__(self, velocity: Callable, t: Array, s: Array):
        self._velocity, self.t, self.s = velocity, t, s

    def velocity(self, x, tau):
        return expand(self.s - self.t, x) * self._velocity(x, self.t + tau * (self.s - self.t))


def solve_flow_map(velocity: Callable[[Array, Array], Array], x: Array, t, s, *, num_steps: int = 64
                   ) -> Array:
    """Φ_{t→s}(x) of dx/dt = velocity(x, t) (velocity takes x (N, *event) and t (N,)).

    x (N, *event); t, s scalars or (N,) (every example its own interval, either direction; s = t
    gives x). RK4 on a cosine-spaced grid of `num_steps` steps in τ ∈ [0, 1] (module docstring):
    error O(num_steps⁻⁴); differentiable in x, t, s and in arrays the velocity closes over."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"solve_flow_map: num_steps must be an int >= 1, got {num_steps!r}.")
    x = jnp.asarray(x)
    t, s = _batch_times(x, t, "solve_flow_map"), _batch_times(x, s, "solve_flow_map")
    i = jnp.arange(num_steps + 1, dtype=x.dtype)
    taus = 0.5 * (1.0 - jnp.cos(jnp.pi * i / num_steps))
    term = _RescaledTime(velocity, t, s)
    return integrate(RK4(), term, x, taus).y


# -- the exact flow map of the oracle (constructed by `GaussianMixture.flow_map` & co.) -----------
@pytree_dataclass(eq=False)
class ExactFlowMap:
    """Φ_{t→s}(x) of a Gaussian mixture's exact probability-flow ODE (see `GaussianMixture.flow_map`)."""

    mixture: object
    process: GaussianProcess
    num_steps: int = static_field(default=128)

    def velocity(self, x, t):
        return self.mixture.velocity(x, self.process, t)

    def __call__(self, x, t, s):
        return _exact_flow_map(self, x, t, s)


@jax.jit
def _exact_flow_map(flow_map: ExactFlowMap, x, t, s):
    """Compiled once per mixture shape, process and batch shape. Where s = t the map is the identity
    (returned as x, with a stand-in time inside the solve: the velocity may be singular at t itself,
    e.g. VP at t_data)."""
    t, s = _batch_times(x, t, "flow_map"), _batch_times(x, s, "flow_map")
    same = s == t
    mid = 0.5 * (flow_map.process.t_data + flow_map.process.t_noise)
    t_safe, s_safe = jnp.where(same, mid, t), jnp.where(same, mid, s)
    out = solve_flow_map(flow_map.velocity, x, t_safe, s_safe, num_steps=flow_map.num_steps)
    return jnp.where(expand(same, x), x, out)


@pytree_dataclass(eq=False)
class ExactAverageVelocity:
    """u(x, t, s) = (Φ_{t→s}(x) − x)/(s − t), and v(x, t) where s = t (see
    `GaussianMixture.average_velocity`)."""

    flow_map: ExactFlowMap

    def __call__(self, x, t, s):
        t, s = _batch_times(x, t, "average_velocity"), _batch_times(x, s, "average_velocity")
        same = s == t  # there u = v; elsewhere a harmless stand-in target away from both ends
        p = self.flow_map.process
        s_safe = jnp.where(same, 0.5 * (p.t_data + p.t_noise), s)
        gap = jnp.where(s_safe == t, 1.0, s_safe - t)
        u = (self.flow_map(x, t, s_safe) - x) / expand(gap, x)
        return jnp.where(expand(same, x), self.flow_map.velocity(x, t), u)


@pytree_dataclass(eq=False)
class ExactConsistencyFunction:
    """f(x, t) = Φ_{t→t_data}(x) (see `GaussianMixture.consistency_function`)."""

    flow_map: ExactFlowMap

    def __call__(self, x, t):
        return self.flow_map(x, t, self.flow_map.process.t_data)


# -- few-step models and sampling -----------------------------------------------------------
@pytree_dataclass
class AverageVelocityMap:
    """Φ(x, t, s) = x + (s − t)·model(x, t, s) for an average-velocity network u_θ (MeanFlow,
    shortcut models). The network's second time is passed as a keyword (`net(x, t, s=s)`) when
    `keyword_s` is set (diffjax's networks with `second_time=True`), else positionally."""

    model: Callable
    process: GaussianProcess
    keyword_s: bool = static_field(default=False)

    def average_velocity(self, x, t, s):
        t, s = _batch_times(x, t, "AverageVelocityMap"), _batch_times(x, s, "AverageVelocityMap")
        return self.model(x, t, s=s) if self.keyword_s else self.model(x, t, s)

    def __call__(self, x, t, s):
        u = self.average_velocity(x, t, s)
        t, s = _batch_times(x, t, "AverageVelocityMap"), _batch_times(x, s, "AverageVelocityMap")
        return x + expand(s - t, x) * u


@pytree_dataclass
class InstantaneousVelocity:
    """model(x, t) = net(x, t, s=t): a two-time network u(x, t, s) on its diagonal, where the average
    velocity is the velocity of the probability-flow ODE (u(x, t, t) = v(x, t)). Declares prediction
    'velocity', so every ODE sampler runs a MeanFlow or shortcut network with many steps too."""

    model: Callable
    keyword_s: bool = static_field(default=True)
    prediction: str = static_field(default="velocity")

    def __call__(self, x, t, *args, **kwargs):
        if self.keyword_s:
            return self.model(x, t, *args, s=t, **kwargs)
        return self.model(x, t, t, *args, **kwargs)


@pytree_dataclass
class FlowMapTerm:
    """The term of a few-step model: flow_map(x, t, s) -> Φ_{t→s}(x) under `process`."""

    flow_map: Callable
    process: GaussianProcess


@pytree_dataclass
class FlowMapStep(Solver):
    """One jump of a learned flow map per step (one evaluation).

    renoise=False:  x ← Φ(x, t, t_next)                                   (MeanFlow, shortcut)
    renoise=True:   x̂0 = Φ(x, t, t_data),  ε̂ = (x − α(t) x̂0)/σ(t),
                    x ← α(t_next) x̂0 + σ(t_next)(√(1 − η²) ε̂ + η z),  z ~ N(0, I)
                    (η = 1: multistep consistency sampling; η = 0: DDIM's deterministic step with
                    x̂0 from the map; at t_next = t_data it returns x̂0)"""

    renoise: bool = static_field(default=False)
    eta: float = static_field(default=1.0)
    needs_rates: ClassVar[bool] = False

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"FlowMapStep: eta (the fresh-noise fraction of re-noising) must lie in "
                             f"[0, 1], got {self.eta}.")  # fmt: skip

    def step(self, term: FlowMapTerm, y, carry, t, t_next, key):
        if not self.renoise:
            return term.flow_map(y, t, t_next), carry
        p = term.process
        x0 = term.flow_map(y, t, p.t_data)
        a_n, s_n = p.alpha(t_next).astype(y.dtype), p.sigma(t_next).astype(y.dtype)
        if self.eta == 1.0:
            return a_n * x0 + s_n * jax.random.normal(key, y.shape, y.dtype), carry
        eps = (y - p.alpha(t).astype(y.dtype) * x0) / p.sigma(t).astype(y.dtype)  # t ≠ t_data: σ(t) > 0
        if self.eta == 0.0:
            return a_n * x0 + s_n * eps, carry
        z = jax.random.normal(key, y.shape, y.dtype)
        return a_n * x0 + s_n * (jnp.sqrt(1.0 - self.eta**2) * eps + self.eta * z), carry


def flow_map_sample(
    flow_map: FlowMapFn,
    process: GaussianProcess,
    x_noise: Array,
    ts,
    *,
    key: Array | None = None,
    renoise: bool = False,
    eta: float = 1.0,
) -> Array:
    """Few-step samples from `x_noise` (the state at ts[0]) over the grid `ts` (noise → data end):
    len(ts) − 1 evaluations of `flow_map(x, t, s) -> Φ_{t→s}(x)` (a consistency model f(x, t)
    enters as `ToDataMap(f)` with renoise=True). renoise: jump to the data end and re-noise to the
    next time with a fraction η = `eta` of fresh noise (`FlowMapStep`; η = 0 needs no key). Pure and
    jit-able; one `lax.scan`."""
    ts = jnp.asarray(ts, jnp.result_type(float))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"flow_map_sample: ts must be a 1-D grid of >= 2 times, got shape {ts.shape}.")
    step = FlowMapStep(renoise, float(eta))  # checks eta
    if renoise and eta > 0 and key is None:
        raise ValueError("flow_map_sample: renoise=True with eta > 0 draws fresh noise; pass key.")
    return _flow_map_sample(step, flow_map, process, x_noise, ts, key)


@filter_jit
def _flow_map_sample(step, flow_map, process, x_noise, ts, key):
    """Compiled once per model structure, process, shapes and step (pytree models such as NNX
    networks or `AverageVelocityMap` are traced: new parameters reuse the program)."""
    return integrate(step, FlowMapTerm(flow_map, process), x_noise, ts, key).y


@pytree_dataclass
class ToDataMap:
    """A consistency model f(x, t) read as a flow map to the data end: Φ(x, t, s) = f(x, t) for the
    multistep consistency sampling of `flow_map_sample(..., renoise=True)` (s is not used)."""

    model: Callable

    def __call__(self, x, t, s):
        return self.model(x, t)


__all__ = [
    "AverageVelocityMap", "ExactAverageVelocity", "ExactConsistencyFunction", "ExactFlowMap",
    "FlowMapStep", "FlowMapTerm", "InstantaneousVelocity", "ToDataMap", "flow_map_sample", "solve_flow_map",
]  # fmt: skip
