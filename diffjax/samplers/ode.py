"""Deterministic samplers: steps of the probability-flow ODE dx/dt = α̇ x̂0 + σ̇ ε̂ (and DDIM).

Each constructor takes (denoise, process, num_steps, **options) and returns a `Sampler` whose step
moves (x, carry) from t to t_next; `denoise(x, t) -> (x̂0, ε̂)` is the model converted by
`diffjax.parameterization.x0_eps_fn`. All of them work for any `GaussianProcess`, in either time
direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.processes.base import GaussianProcess
from diffjax.samplers.driver import Denoiser, Sampler, velocity


def euler(denoise: Denoiser, process: GaussianProcess, num_steps: int) -> Sampler:
    """x ← x + v(x, t)(t_next − t): the explicit Euler step (order 1; 1 evaluation per step)."""

    def step(state, t, t_next, key):
        x, carry = state
        return x + velocity(process, *denoise(x, t), t) * (t_next - t), carry

    return Sampler(step)


def heun(denoise: Denoiser, process: GaussianProcess, num_steps: int) -> Sampler:
    """Heun's method (explicit trapezoid, order 2; Karras et al. 2022, Alg. 1 in t):
    d = v(x, t), x_e = x + d Δt, x ← x + ½(d + v(x_e, t_next)) Δt, with the Euler step x_e on a last
    step that reaches t_data (where σ = 0 and ε̂ may be undefined): 2 evaluations per step."""

    def step(state, t, t_next, key):
        x, carry = state
        dt = t_next - t
        d = velocity(process, *denoise(x, t), t)
        x_e = x + d * dt

        def correct():
            return x + 0.5 * (d + velocity(process, *denoise(x_e, t_next), t_next)) * dt

        return jax.lax.cond(t_next == process.t_data, lambda: x_e, correct), carry

    return Sampler(step, evals_per_step=2, saves_at_data_end=True)


def midpoint(denoise: Denoiser, process: GaussianProcess, num_steps: int) -> Sampler:
    """Explicit midpoint rule (RK2, order 2): x ← x + Δt·v(x + ½Δt·v(x, t), t + ½Δt). It never
    evaluates the model at a step's end, so it stays second order on a last step that reaches
    t_data without Heun's Euler fallback: 2 evaluations per step."""

    def step(state, t, t_next, key):
        x, carry = state
        dt = t_next - t
        t_mid = t + 0.5 * dt
        x_mid = x + 0.5 * dt * velocity(process, *denoise(x, t), t)
        return x + dt * velocity(process, *denoise(x_mid, t_mid), t_mid), carry

    return Sampler(step, evals_per_step=2)


def ddim(denoise: Denoiser, process: GaussianProcess, num_steps: int, eta: float = 0.0) -> Sampler:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) for any α, σ:

        x_next = α_next x̂0 + √(σ_next² − c²) ε̂ + c z,   c² = η² σ²_{t|s} σ_next²/σ_t²,

    with σ²_{t|s}/σ_t² = 1 − e^{λ_t − λ_next} (λ the log-SNR). η = 0 is the deterministic map
    (the exact update of the ODE in the (x̂0, ε̂) form; first order); η = 1 is ancestral sampling."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim: eta must lie in [0, 1], got {eta}.")

    def step(state, t, t_next, key):
        x, carry = state
        x0, eps = denoise(x, t)
        a_n, s_n = process.alpha(t_next), process.sigma(t_next)
        if eta == 0.0:
            return a_n * x0 + s_n * eps, carry
        c2_over_s2 = eta**2 * -jnp.expm1(process.log_snr(t) - process.log_snr(t_next))
        z = jax.random.normal(key, x.shape, x.dtype)
        return a_n * x0 + s_n * (jnp.sqrt(1.0 - c2_over_s2) * eps + jnp.sqrt(c2_over_s2) * z), carry

    return Sampler(step, needs_rates=False)


def dpm_solver_pp(
    denoise: Denoiser, process: GaussianProcess, num_steps: int, order: int = 2
) -> Sampler:
    """Multistep DPM-Solver++ with data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 2 and the
    third-order multistep), in the half log-SNR l = log(α/σ), h = l_next − l_t, φ₁ = 1 − e^{−h}:

        x_next = (σ_next/σ_t) x + α_next φ₁ x̂0_t                                   (order 1 = DDIM)
                 + α_next φ₁ (h/2h₀)(x̂0_t − x̂0_prev)                                (2M)
        3M:    + α_next(1 − φ₁/h) D₁ − α_next((h − φ₁)/h² − ½) D₂

    with h₀, h₁ the previous two steps and D₁ ≈ h x̂0', D₂ ≈ h² x̂0'' (derivatives in l) the
    divided differences of the stored x̂0's, the coefficients being the exact integrals of
    e^{−(h−τ)}τᵏ/k! (with half this D₂ the scheme is only second order; the tests measure ≥ 3).
    The first steps use lower orders; a step whose h is infinite (ending at σ = 0, where it
    returns x̂0) is first order. α = 0 at a flow's noise end is fine (e^{−h} = 0 there). One
    evaluation per step.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver_pp: order must be 1, 2 or 3, got {order}.")

    def half_logsnr(t):
        return 0.5 * process.log_snr(t)

    def init(x):
        zero = jnp.zeros((), x.dtype)
        return (jnp.zeros_like(x), jnp.zeros_like(x), zero, zero, jnp.zeros((), jnp.int32))

    def step(state, t, t_next, key):
        x, (m1, m2, l1, l2, k) = state
        m0, _ = denoise(x, t)
        l0, l_next = half_logsnr(t), half_logsnr(t_next)
        a_n, s_n, s_t = process.alpha(t_next), process.sigma(t_next), process.sigma(t)
        h = l_next - l0
        phi1 = -jnp.expm1(-h)
        x_next = (s_n / s_t) * x + a_n * phi1 * m0
        eff = jnp.where(jnp.isfinite(h), jnp.minimum(order, k + 1), 1)
        if order >= 2:
            h0 = l0 - l1
            corr2 = a_n * phi1 * (h / (2.0 * h0)) * (m0 - m1)
            x_next = x_next + jnp.where(eff == 2, corr2, 0.0)
        if order == 3:
            h1 = l1 - l2
            d10, d11 = (h / h0) * (m0 - m1), (h / h1) * (m1 - m2)
            d1 = d10 + h0 / (h0 + h1) * (d10 - d11)
            d2 = 2.0 * (d10 - d11) * h / (h0 + h1)  # ≈ h² d²x̂0/dl²
            corr3 = a_n * (1.0 - phi1 / h) * d1 - a_n * ((h - phi1) / h**2 - 0.5) * d2
            x_next = x_next + jnp.where(eff == 3, corr3, 0.0)
        return x_next, (m0, m1, l0, l1, k + 1)

    return Sampler(step, init, needs_rates=False)
