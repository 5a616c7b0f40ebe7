"""Log-likelihood through the probability-flow ODE (instantaneous change of variables).

The probability-flow ODE dx/dt = v(x, t) transports p_t along the process's own time axis, and the
continuity equation gives d/dt log p_t(x_t) = −∇·v(x_t, t) along its solutions (Chen et al. 2018,
"Neural ODEs", Thm. 1; Song et al. 2021, App. D.2). Integrating the augmented ODE

    d/dt [x, Δ] = [v(x, t), ∇·v(x, t)]    from t₀ (data end) to t_noise, x(t₀) = x, Δ(t₀) = 0,

yields log p_{t₀}(x) = log p_prior(x(t_noise)) + Δ(t_noise), where
Δ(t_noise) = ∫_{t₀}^{t_noise} ∇·v dt is a signed integral (t decreases towards the noise for
flow-matching paths). The velocity v = α̇ E[x0|x] + σ̇ E[ε|x] comes from a model of any
prediction kind (`diffjax.parameterization`). t₀ = t_data moved by `t_eps` towards the noise, so
the result is log p_{t₀}, the density of slightly noised data. t_eps = 0 needs a velocity finite
at the data end: true for CondOTPath, but VP-type SDEs have σ ∝ √t, so σ̇ = ∞ at t = 0 (use
t_eps > 0; 1e-5 as in Song et al.), and x0-models are singular where σ = 0.

The divergence is exact (the Jacobian trace from D forward-mode products with basis vectors: small
D) or Hutchinson's estimate zᵀ(∂v/∂x)z with E[zzᵀ] = I (Rademacher or Gaussian z, fixed along the
trajectory: unbiased for log p, as Δ is linear in the divergence). Both assume the model treats the
examples of a batch independently (no batch statistics).

Everything runs on the device: an adaptive diffrax solve (Tsit5/Dopri5 with a PID controller whose
error norm is the worst example's RMS, so every example meets rtol/atol) or a fixed-step
Euler/Heun/RK4 `lax.scan`. Wrap calls in `jax.jit` (closing over the model) to compile once.

Shapes: x is (batch, *event) (e.g. (batch, D) or images (batch, H, W, C)); results are (batch,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from diffjax._validate import is_concrete
from diffjax.parameterization import ModelFn, Prediction, as_prediction
from diffjax.processes.base import GaussianProcess

VectorField = Callable[[Array], Array]
ADAPTIVE_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8}
# explicit Runge–Kutta tableaus (a, b, c) for the fixed-step solvers
FIXED_SOLVERS = {
    "euler": ((), (1.0,), (0.0,)),
    "heun": (((1.0,),), (0.5, 0.5), (0.0, 1.0)),
    "rk4": (
        ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
        (0.0, 0.5, 0.5, 1.0),
    ),
}
# new vector-field evaluations per adaptive step (Tsit5/Dopri5 are first-same-as-last: 7 stages, the
# last reused as the next first; Dopri8 has 13 stages)
_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6, "dopri8": 13}


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


# -- integrators --------------------------------------------------------------------------------
def _max_rms_per_example(err) -> Array:
    """Error norm for the PID controller: RMS over (x, Δ) of each example, worst example."""
    x_err, d_err = err
    sq = jnp.sum(x_err.reshape(d_err.shape[0], -1) ** 2, axis=-1) + d_err**2
    return jnp.sqrt(jnp.max(sq) / (x_err[0].size + 1))


def _fixed_step_solve(field, y0, t0: float, t1: float, num_steps: int, tableau):
    """Explicit Runge–Kutta with `num_steps` uniform steps from t0 to t1, as one `lax.scan`."""
    a, b, c = tableau
    h = (t1 - t0) / num_steps

    def combine(y, ks, weights):
        return jax.tree.map(
            lambda yi, *k: yi + h * sum(w * kj for w, kj in zip(weights, k, strict=True)), y, *ks
        )

    def step(y, t):
        ks = [field(t, y)]
        for i, ai in enumerate(a):
            ks.append(field(t + c[i + 1] * h, combine(y, ks, ai)))
        return combine(y, ks, b), None

    dtype = jax.tree.leaves(y0)[0].dtype
    ts = t0 + h * jnp.arange(num_steps, dtype=dtype)
    y1, _ = jax.lax.scan(step, y0, ts)
    return y1


def log_likelihood(
    model_fn: ModelFn,
    process: GaussianProcess,
    x: Float[Array, "batch ..."],
    key: Array | None = None,
    *,
    kind: Prediction = "eps",
    divergence: Literal["exact", "hutchinson"] = "exact",
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    n_probes: int = 1,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 100,
    t_eps: float = 1e-5,
    prior_logp: Callable[[Array], Array] | None = None,
    max_steps: int = 4096,
) -> LikelihoodResult:
    """log p_{t₀}(x) by the augmented probability-flow ODE (module docstring), per example.

    Args:
      model_fn: model(x, t) -> prediction of type `kind`, x (batch, *event), t (batch,).
      process: the process/path the model was trained on (either time convention).
      x: data, (batch, *event), on the scale the model was trained on.
      key: PRNG key for the Hutchinson probes (drawn once, fixed along the trajectory).
      divergence: 'exact' (D JVPs per evaluation; small D) or 'hutchinson' (n_probes JVPs).
      solver: adaptive 'tsit5' | 'dopri5' | 'dopri8' (diffrax, rtol/atol, at most max_steps
        steps; `success` reports failure) or fixed-step 'euler' | 'heun' | 'rk4' (num_steps).
      t_eps: start at t₀ = t_data moved by t_eps towards the noise (process time units); the result
        is then log p_{t₀}(x), the density of data noised to t₀.
      prior_logp: log-density of x_T, (batch, *event) -> (batch,); default `process.prior_logp`,
        N(0, σ(t_noise)² I), which neglects α(t_noise)·x_data (exact when α(t_noise) = 0, e.g.
        CondOTPath; for VPSDE(β_max=20), α(T) ≈ 6.6e-3, an error of order α(T)·|x_T|·|E x_data|).
    Returns:
      `LikelihoodResult` with log_prob and bits_per_dim of shape (batch,).
    """
    if x.ndim < 2:
        raise ValueError(f"log_likelihood: x must be (batch, *event); got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if is_concrete(t_eps) and not 0.0 <= t_eps < abs(process.t_noise - process.t_data):
        raise ValueError(f"log_likelihood: t_eps must lie in [0, |t_noise − t_data|), got {t_eps}.")
    velocity = as_prediction(model_fn, process, kind, "velocity")
    b = x.shape[0]

    if divergence == "exact":

        def div_fn(xt, t):
            return exact_divergence(lambda y: velocity(y, t), xt)
    elif divergence == "hutchinson":
        if key is None:
            raise ValueError("log_likelihood: divergence='hutchinson' needs a PRNG `key`.")
        if n_probes < 1:
            raise ValueError(f"log_likelihood: n_probes must be >= 1, got {n_probes}.")
        probes = sample_probes(key, x.shape, n_probes, probe, x.dtype)

        def div_fn(xt, t):
            return hutchinson_divergence(lambda y: velocity(y, t), xt, probes)
    else:
        raise ValueError(f"Unknown divergence {divergence!r}; choose 'exact' or 'hutchinson'.")

    def field(t, y):
        v, div = div_fn(y[0], jnp.full((b,), t, x.dtype))
        return v, div

    t0 = process.t_data - process.direction * t_eps
    t1 = process.t_noise
    y0 = (x, jnp.zeros((b,), x.dtype))
    if solver in ADAPTIVE_SOLVERS:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: field(t, y)),
            ADAPTIVE_SOLVERS[solver](),
            t0,
            t1,
            None,
            y0,
            stepsize_controller=diffrax.PIDController(
                rtol=rtol, atol=atol, norm=_max_rms_per_example
            ),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
            throw=False,  # no host callback; failure is reported in `success`
        )
        x_t, delta = (leaf[-1] for leaf in sol.ys)
        # + 1: the initial step-size probe (diffrax may add a few after rejected steps)
        nfe = _EVALS_PER_STEP[solver] * sol.stats["num_steps"] + 1
        success = sol.result == diffrax.RESULTS.successful
    elif solver in FIXED_SOLVERS:
        if num_steps < 1:
            raise ValueError(f"log_likelihood: num_steps must be >= 1, got {num_steps}.")
        tableau = FIXED_SOLVERS[solver]
        x_t, delta = _fixed_step_solve(field, y0, t0, t1, num_steps, tableau)
        nfe, success = jnp.asarray(num_steps * len(tableau[1])), jnp.asarray(True)
    else:
        raise ValueError(
            f"Unknown solver {solver!r}; choose one of "
            f"{sorted(ADAPTIVE_SOLVERS) + sorted(FIXED_SOLVERS)}."
        )
    logp_prior = (prior_logp or process.prior_logp)(x_t)
    log_prob = logp_prior + delta
    d = math.prod(x.shape[1:])
    return LikelihoodResult(
        log_prob, -log_prob / (d * np.log(2.0)), logp_prior, delta, x_t, nfe, success
    )


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
    model_fn: ModelFn, process: GaussianProcess, x: Array, key: Array, **likelihood_kwargs
) -> DequantizedBPD:
    """Bits/dim of 8-bit images under a model on [−1, 1] data, with uniform dequantization inside.

    x: (batch, *event) uint8 pixels in {0, …, 255} (or floats k/127.5 − 1). One dequantization
    draw per example (average over keys for a lower-variance estimate of the bound); the
    change of variables to [−1, 1] and the bin width are accounted for
    (`discrete_bits_per_dim`). likelihood_kwargs go to `log_likelihood` (kind, divergence, solver,
    tolerances, t_eps, …). Note the dequantized y spans [−1, 1) while k/127.5 − 1 spans [−1, 1].
    """
    k_deq, k_div = jax.random.split(key)
    y = dequantize(k_deq, x)
    res = log_likelihood(model_fn, process, y, k_div, **likelihood_kwargs)
    d = math.prod(y.shape[1:])
    log_bound = res.log_prob + d * np.log(2.0 / 256.0)
    return DequantizedBPD(discrete_bits_per_dim(res.log_prob, d), log_bound, res)
