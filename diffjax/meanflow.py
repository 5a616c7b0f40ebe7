"""MeanFlow: few-step generation by regressing the average velocity (Geng et al. 2025, "Mean Flows
for One-step Generative Modeling").

The probability-flow ODE dx/dt = v(x, t) has the flow map Φ_{t→s} (t the current time, s the target;
MeanFlow's u(z, r, t) is our u(z, t, s=r)), written through its average velocity

    u(x, t, s) = (Φ_{t→s}(x) − x)/(s − t) = 1/(s − t) ∫_t^s v(x_τ, τ) dτ,    u(x, t, t) = v(x, t),

so one step Φ_{t→s}(x) = x + (s − t)·u(x, t, s) (`diffjax.flow_map.AverageVelocityMap`; sample with
`diffjax.flow_map.flow_map_sample`). Along a trajectory x_t the endpoint Φ_{t→s}(x_t) is constant;
differentiating x_t + (s − t)·u(x_t, t, s) in t gives v − u + (s − t)·du/dt = 0, the MeanFlow
identity (their eq. 6)

    u(x_t, t, s) = v(x_t, t) − (t − s)·du/dt,     du/dt = ∂_t u + (∇_x u)·v      (total derivative),

computed by ONE forward-mode pass `jax.jvp(u, (x, t), (v, 1))` (tangents (v, 1, 0) on (x, t, s)),
which returns u and du/dt together. MeanFlow trains u_θ on this identity as a fixed point:

    L = E_{t, s, x0, ε} [ w · mean_dims ‖u_θ(x_t, t, s) − sg(u_tgt)‖² ],
    u_tgt = v − (t − s)·(∂_t u_θ + (∇_x u_θ)·v),    w = sg(1/(‖Δ‖² + c)^p),  Δ = u_θ − u_tgt,

with x_t = α x0 + σ ε and v the conditional velocity α̇ x0 + σ̇ ε (the flow-matching target), or a
teacher's marginal velocity v(x_t, t) (MeanFlow distillation). u_tgt is affine in v: with
DΦ = ∂Φ_{t→s}/∂x = I − (t − s)∇_x u, u_tgt = DΦ·v + (s − t)∂_t u. Its mean given x_t under the
conditional velocity is therefore the target with the marginal velocity E[v_c | x_t] = v, and at the
exact average velocity Δ = DΦ·(v − v_c): zero on average given x_t (the exact u is the fixed point),
with the irreducible loss E ‖DΦ·(v_c − v)‖²/D (for Gaussian data DΦ is the scalar k of the affine
flow map and the loss is k²·`irreducible_loss_gaussian(..., 'velocity')`). At s = t the loss is
conditional flow matching of u(x, t, t).

**Improved MeanFlow** (iMF; Geng et al. 2025b, "Improved Mean Flows: On the Challenges of
Fastforward Generative Models", §4.1): the same loss is ‖V_θ − v‖² with the compound velocity
V_θ = u_θ + (t − s)·sg(du/dt), and MF's du/dt runs along the regression's own v, so with the
conditional velocity the target multiplies the noise v_c by the Jacobian (Δ = DΦ·(v − v_c) above).
`tangent='model'` takes the total derivative along the network's own instantaneous velocity
sg(u_θ(x_t, t, t)) instead (one more forward pass): V_θ is then a function of x_t alone and the loss an
ordinary regression of it onto v. At the exact u, with u(x, t, t) = v, V = v exactly, so each example's
loss (p = 0) is the flow-matching residual ‖v − v_c‖²/D and its mean the untransported irreducible loss
`irreducible_loss_gaussian(..., 'velocity')` — for Gaussian data 1/k² times MF's.

**Guidance in training** (MeanFlow §4.2, "Mean Flows with Guidance"): for a class-conditional
u_θ(x, t, s | c), `guidance_scale` ω > 0 with `unconditional` = the same network under the null label
∅ replaces the regressed velocity by ṽ = ω·v + (1 − ω)·sg(u_θ(x_t, t, t | ∅)) (the tangent of MF too).
Given x_t and c its mean is ω·v(x_t | c) + (1 − ω)·v(x_t) — the classifier-free-guided velocity — so the
fixed point is the average velocity of the guided ODE and one jump samples with guidance ω at one
evaluation (no second pass at sampling). At the exact guided u (`GaussianMixture.guided`) and exact
u(·|∅): Δ = ω·DΦ·(v(x_t | c) − v_c), the unguided conditional residual scaled by ω.

The adaptive weight (their eq. 13; p = 1 in the paper, p = 0 the plain squared error) uses the
per-example mean over dimensions ‖Δ‖²/D, as the loss does; the paper sums over dimensions, which is
this loss with c_paper = D·c times the constant D^{1−p}. The weight depends on the sampled v_c, so
for p > 0 the fixed point solves E[w·(u − u_tgt) | x_t] = 0, a weighted mean of the targets that
equals their mean only where ‖Δ‖² is nearly independent of v_c given x_t (a symmetric conditional
law, or high dimension, where ‖Δ‖²/D concentrates): on 2D data p = 0 is the unbiased choice
(`experiments/fewstep/meanflow.py` measures both).

Times: `meanflow_times` is the paper's sampler (two logit-normal draws, t the one nearer the noise,
s = t for a fraction 1 − ratio). Any process with time derivatives works, on its own axis (data end
moved by t_eps, default `process.default_t_eps`, to the noise end): at the data end σ = 0 and
v_c = α̇ x0 + σ̇ ε stays finite for flow paths; VP-type SDEs have σ̇ ~ 1/√t there, hence t_eps > 0.

Shapes: model(x (N, *event), t (N,), s (N,)) -> u (N, *event); x0 (N, *event). The loss keeps x0's
dtype (float64 in, float64 out).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from diffjax._array import expand
from diffjax._validate import check_key
from diffjax.flow import check_model_output
from diffjax.guidance import guide
from diffjax.parameterization import from_x0_eps
from diffjax.processes.base import GaussianProcess

AverageVelocityFn = Callable[[Array, Array, Array], Array]
VelocityFn = Callable[[Array, Array], Array]
TwoTimeSampler = Callable[[Array, int], tuple[Array, Array]]
TANGENTS: tuple[str, ...] = ("velocity", "model")
"""Directions of MeanFlow's total derivative: the target's velocity (MF) or the network's own (iMF)."""


def meanflow_times(
    process: GaussianProcess,
    mean: float = -0.4,
    std: float = 1.0,
    ratio: float = 0.25,
    t_eps: float | None = None,
    distribution: str = "logit_normal",
) -> TwoTimeSampler:
    """MeanFlow's (t, s) sampler (Geng et al. 2025, Table 1): a, b = sigmoid(N(mean, std²)) are
    two fractions of the way from the data end (moved by t_eps) to the noise end; t is the one
    nearer the noise, s the other, and s = t with probability 1 − ratio (ratio = the fraction with
    s ≠ t; 0.25 in the paper). distribution='uniform' draws a, b ~ U(0, 1) instead (their Table 1c;
    mean and std unused). Returns sampler(key, n) -> (t (n,), s (n,)) on the process's axis."""
    if distribution not in ("logit_normal", "uniform"):
        raise ValueError(
            f"meanflow_times: distribution must be 'logit_normal' or 'uniform', got {distribution!r}."
        )
    if process.discrete:
        raise ValueError("meanflow_times: the process is discrete; MeanFlow needs continuous times.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"meanflow_times: ratio (the fraction with s != t) must lie in [0, 1], got {ratio}.")
    if not std > 0:
        raise ValueError(f"meanflow_times: std must be positive, got {std}.")
    end, noise = process.data_end(t_eps), float(process.t_noise)

    def sampler(key, n):
        k_ab, k_eq = jax.random.split(key)
        if distribution == "uniform":
            ab = jax.random.uniform(k_ab, (2, n))
        else:
            ab = jax.nn.sigmoid(mean + std * jax.random.normal(k_ab, (2, n)))
        far, near = jnp.max(ab, axis=0), jnp.min(ab, axis=0)
        near = jnp.where(jax.random.uniform(k_eq, (n,)) < ratio, near, far)
        return end + (noise - end) * far, end + (noise - end) * near

    return sampler


def average_velocity_and_derivative(
    model: AverageVelocityFn,
    x: Float[Array, "N ..."],
    t: Float[Array, " N"],
    s: Float[Array, " N"],
    v: Float[Array, "N ..."],
) -> tuple[Array, Array]:
    """(u, du/dt) at (x, t, s): u = model(x, t, s) and its total derivative along dx/dt = v,
    du/dt = ∂_t u + (∇_x u)·v, by one `jax.jvp` with tangents (v, 1) on (x, t) (s held fixed)."""
    return jax.jvp(lambda x_, t_: model(x_, t_, s), (x, t), (v, jnp.ones_like(t)))


def meanflow_loss(
    model: AverageVelocityFn,
    x0: Array,
    key: Array,
    *,
    process: GaussianProcess,
    time_sampler: TwoTimeSampler | None = None,
    velocity: VelocityFn | None = None,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
    tangent: str = "velocity",
    guidance_scale: float = 1.0,
    unconditional: AverageVelocityFn | None = None,
    reduce: bool = True,
) -> Array:
    """The MeanFlow loss (module docstring): a scalar, or the per-example losses (N,).

    model(x, t, s) -> u (the average velocity on the process's axis); time_sampler(key, n) ->
    (t, s) (default `meanflow_times(process)`); velocity(x, t) -> v: a teacher's marginal velocity
    (distillation) instead of the conditional velocity α̇ x0 + σ̇ ε; adaptive_p, adaptive_c: the
    adaptive weight sg(1/(‖Δ‖²/D + c)^p) (p = 0: plain squared error); tangent: the direction of the
    total derivative du/dt — 'velocity' (v, the target's own velocity: MeanFlow) or 'model' (the
    network's sg(u(x_t, t, t)): improved MeanFlow, one more forward pass); guidance_scale ω and
    unconditional(x, t, s) -> u(x, t, s | ∅): guidance in training, ṽ = ω·v + (1 − ω)·sg(u(x_t, t, t | ∅))
    (module docstring; one more forward pass; ω = 1 is unguided and needs no unconditional)."""
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"meanflow_loss: x0 must be a non-empty batch (batch, *event), got {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"meanflow_loss: x0 must be floating point, got {x0.dtype}; scale the data first.")
    if not adaptive_p >= 0 or (adaptive_p > 0 and not adaptive_c > 0):
        raise ValueError(
            f"meanflow_loss: need adaptive_p >= 0 and adaptive_c > 0, got p={adaptive_p}, "
            f"c={adaptive_c} (p = 0 is the plain squared error; the paper uses p = 1, c = 1e-3)."
        )
    if tangent not in TANGENTS:
        raise ValueError(f"meanflow_loss: tangent must be one of {TANGENTS}, got {tangent!r}.")
    if not guidance_scale > 0:
        raise ValueError(f"meanflow_loss: guidance_scale must be > 0, got {guidance_scale}.")
    if guidance_scale != 1 and unconditional is None:
        raise ValueError("meanflow_loss: guidance_scale != 1 needs `unconditional`, the network under the "
                         "null label (x, t, s) -> u(x, t, s | ∅).")  # fmt: skip
    time_sampler = time_sampler or meanflow_times(process)
    n = x0.shape[0]
    k_t, k_eps = jax.random.split(check_key(key, "meanflow_loss"))
    t, s = time_sampler(k_t, n)
    t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), (n,))
    s = jnp.broadcast_to(jnp.asarray(s, x0.dtype), (n,))
    noised = process.sample_marginal(k_eps, x0, t)
    x_t = noised.x_t
    if velocity is None:
        v = from_x0_eps(x0, noised.eps, "velocity", x_t, noised.coefficients)
    else:
        v = jax.lax.stop_gradient(velocity(x_t, t))
        check_model_output(v, x0, "meanflow_loss (velocity)")
    if guidance_scale != 1:
        v_null = jax.lax.stop_gradient(unconditional(x_t, t, t))
        check_model_output(v_null, x0, "meanflow_loss (unconditional)")
        v = guide(v, v_null.astype(v.dtype), jnp.asarray(guidance_scale))
    direction = v.astype(x_t.dtype)
    if tangent == "model":
        direction = jax.lax.stop_gradient(model(x_t, t, t)).astype(x_t.dtype)
        check_model_output(direction, x0, "meanflow_loss (u(x, t, t))")
    u, du_dt = average_velocity_and_derivative(model, x_t, t, s, direction)
    check_model_output(u, x0, "meanflow_loss")
    target = jax.lax.stop_gradient(v - expand(t - s, v) * du_dt)
    per_example = jnp.mean(jnp.square(u - target).reshape(n, -1), axis=-1)
    if adaptive_p > 0:
        per_example = per_example / jax.lax.stop_gradient((per_example + adaptive_c) ** adaptive_p)
    return jnp.mean(per_example) if reduce else per_example


__all__ = ["TANGENTS", "TwoTimeSampler", "average_velocity_and_derivative", "meanflow_loss", "meanflow_times"]
