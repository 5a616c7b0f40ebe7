"""Stochastic samplers: reverse-time SDE steps, ancestral sampling, predictor–corrector, EDM churn.

Constructors take (denoise, process, num_steps, **options) and return a `Sampler`; see
`diffjax.samplers.driver`. Times t (noisier) and s = t_next (cleaner) are on the process's own axis,
so every step works for diffusion SDEs (t decreasing) and flow paths (t increasing) alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.processes.base import GaussianProcess
from diffjax.samplers.driver import Denoiser, Sampler, per_example_norm, score, velocity
from diffjax.samplers.grids import time_at_log_snr


def transition(process: GaussianProcess, t, s) -> tuple:
    """(α_{t|s}, σ²_{t|s}) of the forward transition x_t = α_{t|s} x_s + σ_{t|s} z from the cleaner
    time s to t: α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α_{t|s}² σ_s² (Kingma et al. 2021, eq. 9)."""
    a_ts = process.alpha(t) / process.alpha(s)
    return a_ts, process.sigma(t) ** 2 - a_ts**2 * process.sigma(s) ** 2


def euler_maruyama(denoise: Denoiser, process: GaussianProcess, num_steps: int) -> Sampler:
    """Euler–Maruyama on the reverse-time SDE with the marginals of `process` (Song et al. 2021,
    eq. 6; in either time direction Δt = t_next − t):

        x ← x + v Δt + ½ g² ∇log p_t |Δt| + g √|Δt| z,    v = α̇ x̂0 + σ̇ ε̂,  g² = process g²(t).

    Where g² is infinite (α = 0 at a flow's noise end) the step is the ODE step. 1 evaluation."""

    def step(state, t, t_next, key):
        x, carry = state
        x0, eps = denoise(x, t)
        dt = t_next - t
        g2 = process.diffusion_squared(t)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0.0)
        z = jax.random.normal(key, x.shape, x.dtype)
        drift = velocity(process, x0, eps, t) * dt + 0.5 * g2 * jnp.abs(dt) * score(process, eps, t)
        return x + drift + jnp.sqrt(g2 * jnp.abs(dt)) * z, carry

    return Sampler(step)


def ancestral(denoise: Denoiser, process: GaussianProcess, num_steps: int) -> Sampler:
    """Ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x0 = x̂0),

        mean = (α_{t|s} σ_s²/σ_t²) x_t + (α_s σ²_{t|s}/σ_t²) x̂0,   var = σ²_{t|s} σ_s²/σ_t².

    On the DDPM chain's own grid T, T−1, …, 0 this is exactly Ho et al. (2020), Alg. 2 with
    σ_t² = β̃_t (and no noise on the last step); on coarser grids it is the respaced chain. Needs
    only α and σ (works on `DDPMChain`). 1 evaluation per step."""

    def step(state, t, t_next, key):
        x, carry = state
        x0, _ = denoise(x, t)
        a_ts, var_ts = transition(process, t, t_next)
        s2_s, s2_t = process.sigma(t_next) ** 2, process.sigma(t) ** 2
        mean = (a_ts * s2_s / s2_t) * x + (process.alpha(t_next) * var_ts / s2_t) * x0
        std = jnp.sqrt(jnp.maximum(var_ts * s2_s / s2_t, 0.0))
        return mean + std * jax.random.normal(key, x.shape, x.dtype), carry

    return Sampler(step, needs_rates=False)


def predictor_corrector(
    denoise: Denoiser,
    process: GaussianProcess,
    num_steps: int,
    snr: float = 0.16,
    n_corrector: int = 1,
    predictor: str = "reverse_diffusion",
) -> Sampler:
    """Predictor–corrector sampling (Song et al. 2021, Algs. 4–5): at each time t, `n_corrector`
    Langevin steps x ← x + ε ∇log p_t + √(2ε) z with the signal-to-noise step size
    ε = 2 a (r ‖z‖/‖∇log p_t‖)², a = (α_t/α_s)² (the discrete α_i of VP, 1 for VE), the norms being
    batch means of per-example norms as in Song et al.'s code (per-example ratios of two
    chi-distributed norms make rare huge steps in low dimension), then a predictor step to s:

        'reverse_diffusion'  x ← (2 − α_{t|s}) x + σ²_{t|s} ∇log p_t + σ_{t|s} z
                             (Song et al. eq. 46; for α_{t|s} ≈ 1, i.e. not from the α = 0
                             noise end of a flow path)
        'euler_maruyama'     the `euler_maruyama` step.

    Song et al. use r = 0.16 for VE and 0.01–0.17 for VP. 1 + n_corrector evaluations per step."""
    if predictor not in ("reverse_diffusion", "euler_maruyama"):
        raise ValueError(
            f"predictor_corrector: predictor must be 'reverse_diffusion' or 'euler_maruyama', "
            f"got {predictor!r}."
        )
    if not isinstance(n_corrector, (int, np.integer)) or n_corrector < 0:
        raise ValueError(f"predictor_corrector: need an int n_corrector >= 0, got {n_corrector}.")
    if not snr > 0:
        raise ValueError(f"predictor_corrector: snr must be > 0, got {snr}.")
    em_step = euler_maruyama(denoise, process, num_steps).step

    def step(state, t, t_next, key):
        x, carry = state
        keys = jax.random.split(key, n_corrector + 1)
        a = jnp.minimum((process.alpha(t) / process.alpha(t_next)) ** 2, 1.0)

        def langevin(x, k):
            grad = score(process, denoise(x, t)[1], t)
            z = jax.random.normal(k, x.shape, x.dtype)
            ratio = jnp.mean(per_example_norm(z)) / jnp.mean(per_example_norm(grad))
            eps = 2.0 * a * (snr * ratio) ** 2
            return x + eps * grad + jnp.sqrt(2.0 * eps) * z, None

        x, _ = jax.lax.scan(langevin, x, keys[:-1])
        if predictor == "euler_maruyama":
            return em_step((x, carry), t, t_next, keys[-1])
        a_ts, var_ts = transition(process, t, t_next)
        grad = score(process, denoise(x, t)[1], t)
        z = jax.random.normal(keys[-1], x.shape, x.dtype)
        return (2.0 - a_ts) * x + var_ts * grad + jnp.sqrt(jnp.maximum(var_ts, 0.0)) * z, carry

    return Sampler(step, evals_per_step=1 + n_corrector)


def edm(
    denoise: Denoiser,
    process: GaussianProcess,
    num_steps: int,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Sampler:
    """Karras et al. (2022) Alg. 2 (stochastic churn + Heun) for any process, in the scaled
    variable x̃ = x/α whose noise level is ν = σ/α (EDM's σ): dx̃/dν = ε̂ along the flow.

    Per step: γ = min(S_churn/N, √2 − 1) if S_tmin ≤ ν_t ≤ S_tmax else 0; raise the noise to
    ν̂ = ν_t(1 + γ) (at the time t̂ with σ/α = ν̂, capped at t_noise) by adding √(ν̂² − ν_t²) S_noise z
    to x̃; then a Heun step in ν from ν̂ to ν_next (an Euler/DDIM step when reaching t_data, or from
    α = 0 where ν is infinite). S_churn = 0 is the deterministic EDM sampler (Alg. 1, order 2).
    S_tmin, S_tmax are in units of ν = σ/α. 2 evaluations per step."""
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"edm: need s_churn >= 0 and s_noise >= 0, got {s_churn}, {s_noise}.")
    gamma_max = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)

    def step(state, t, t_next, key):
        x, carry = state
        a_t, s_t = process.alpha(t), process.sigma(t)
        t_hat, a_hat, s_hat, x_hat = t, a_t, s_t, x
        if gamma_max > 0:
            nu = s_t / a_t
            churn = (a_t > 0) & (nu >= s_tmin) & (nu <= s_tmax)
            gamma = jnp.where(churn, gamma_max, 0.0)
            t_up = time_at_log_snr(process, process.log_snr(t) - 2.0 * jnp.log1p(gamma),
                                   process.t_noise, t)  # fmt: skip
            a_up, s_up = process.alpha(t_up), process.sigma(t_up)
            extra = jnp.sqrt(jnp.maximum((s_up / a_up) ** 2 - nu**2, 0.0))
            z = jax.random.normal(key, x.shape, x.dtype)
            x_up = (a_up / a_t) * x + a_up * extra * s_noise * z
            t_hat, a_hat, s_hat = (jnp.where(churn, u, v) for u, v in
                                   ((t_up, t), (a_up, a_t), (s_up, s_t)))  # fmt: skip
            x_hat = jnp.where(churn, x_up, x)
        a_n, s_n = process.alpha(t_next), process.sigma(t_next)
        x0, eps1 = denoise(x_hat, t_hat)
        x_euler = a_n * x0 + s_n * eps1  # x̃ + (ν_next − ν̂) ε̂ in x-units

        def correct():
            eps2 = denoise(x_euler, t_next)[1]
            return (a_n / a_hat) * x_hat + (s_n - a_n * s_hat / a_hat) * 0.5 * (eps1 + eps2)

        skip = (t_next == process.t_data) | (a_hat == 0)
        return jax.lax.cond(skip, lambda: x_euler, correct), carry

    return Sampler(step, evals_per_step=2, saves_at_data_end=True, saves_at_zero_alpha=True)
