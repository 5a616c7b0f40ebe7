"""Time grids for samplers, from the noise end to the data end of any `GaussianProcess`.

Every grid is an array of shape (n+1,) on the process's own time axis with ts[0] = t_noise (where
the prior is drawn) and ts[n] = t_end = t_data ∓ t_eps (the data end, offset by t_eps towards the
noise; t_eps = 0 ends exactly at the data). Diffusion SDEs run t from T down to t_eps, flow paths
from 0 up to 1 − t_eps, the discrete DDPM chain over integer steps T..0 (uniform grids only,
rounded: the respacing of Nichol & Dhariwal 2021).

    uniform   t_i = t_noise + (i/n)(t_end − t_noise)
    edm       r_i^{1/ρ} = r_max^{1/ρ} + (i/n)(r_min^{1/ρ} − r_max^{1/ρ}),  r = σ/α   (Karras et al.
              2022, eq. 5; for VE σ/α = σ, for general processes the noise-to-signal ratio)
    logsnr    λ_i = λ_noise + (i/n)(λ_end − λ_noise),  λ = log(α²/σ²)   (uniform in log-SNR)

The non-uniform grids are defined through σ/α or λ and mapped back to times by bisection
(`time_at_log_snr`, jittable). Where these are infinite (α = 0 at a flow's noise end, σ = 0 at the
data end) the spacing uses a finite stand-in (`max_ratio`/`min_ratio`, `max_abs_logsnr`) and the end point is
still t_noise / t_end; finite values are never clipped, so the grids refine everywhere as n grows
(except for the interval from an infinite end to its stand-in, where every solver is accurate).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax.processes.base import GaussianProcess
from diffjax.processes.ddpm import DDPMChain

GRIDS = ("uniform", "edm", "logsnr")


def default_t_eps(process: GaussianProcess) -> float:
    """1e-3·T for diffusion SDEs (score_sde's sampling end), 0 for flow paths and the DDPM chain
    (whose models are finite at the data end)."""
    if isinstance(process, DDPMChain) or process.direction > 0:
        return 0.0
    return 1e-3 * abs(process.t_noise - process.t_data)


def data_end(process: GaussianProcess, t_eps: float | None = None) -> float:
    """t_end = t_data − direction·t_eps, the last time of every grid (a static float)."""
    t_eps = default_t_eps(process) if t_eps is None else t_eps
    span = abs(process.t_noise - process.t_data)
    if not isinstance(t_eps, (int, float, np.floating, np.integer)) or not 0.0 <= t_eps < span:
        raise ValueError(
            f"t_eps must be a float in [0, {span}) (the offset of the last time from the data end "
            f"t_data={process.t_data}), got {t_eps!r}."
        )
    if isinstance(process, DDPMChain) and float(t_eps) != round(float(t_eps)):
        raise ValueError(f"t_eps must be an integer number of steps for DDPMChain, got {t_eps}.")
    return float(process.t_data - process.direction * t_eps)


def _check_n(n, process: GaussianProcess, grid: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}.")
    if isinstance(process, DDPMChain):
        if grid != "uniform":
            raise ValueError(
                f"{grid}_grid: the DDPM chain's log-SNR jumps to +inf at its last step, so rounded "
                "non-uniform grids repeat steps; use uniform_grid or pass an array of distinct "
                "integer steps."
            )
        if n > process.num_steps:
            raise ValueError(f"uniform_grid: at most T = {process.num_steps} steps, got {n}.")


def _finish(process: GaussianProcess, ts: Array, t_end: float) -> Array:
    ts = ts.at[0].set(process.t_noise).at[-1].set(t_end)
    return jnp.round(ts) if isinstance(process, DDPMChain) else ts


def time_at_log_snr(
    process: GaussianProcess, lam: Float[ArrayLike, "*n"], t_noise: ArrayLike, t_end: ArrayLike
) -> Float[Array, "*n"]:
    """The time t between t_noise and t_end with λ(t) = lam, by bisection (λ increases from the
    noise to the data end). Values of lam outside [λ(t_noise), λ(t_end)] give the nearer end.
    Jittable; accurate to the floating-point resolution of t."""
    lam = jnp.asarray(lam, jnp.result_type(float))
    t_noise = jnp.asarray(t_noise, lam.dtype)
    t_end = jnp.asarray(t_end, lam.dtype)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = process.log_snr(t_noise + mid * (t_end - t_noise)) < lam
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    zeros = jnp.zeros_like(lam)
    lo, hi = jax.lax.fori_loop(0, jnp.finfo(lam.dtype).nmant + 3, body, (zeros, zeros + 1.0))
    return t_noise + 0.5 * (lo + hi) * (t_end - t_noise)


def uniform_grid(
    process: GaussianProcess, n: int, t_eps: float | None = None
) -> Float[Array, " n_plus_1"]:
    """n equal steps in t from t_noise to t_end."""
    _check_n(n, process, "uniform")
    t_end = data_end(process, t_eps)
    ts = jnp.linspace(process.t_noise, t_end, n + 1, dtype=jnp.result_type(float))
    return _finish(process, ts, t_end)


def edm_grid(
    process: GaussianProcess,
    n: int,
    rho: float = 7.0,
    t_eps: float | None = None,
    max_ratio: float = 80.0,
    min_ratio: float = 0.002,
) -> Float[Array, " n_plus_1"]:
    """Karras et al. (2022) ρ-spacing of the noise-to-signal ratio r = σ/α from r_max = r(t_noise)
    to r_min = r(t_end), mapped back to times. Where r(t_noise) is infinite (α = 0 on flow paths)
    the spacing starts from max_ratio (EDM's σ_max = 80); where r(t_end) = 0 (t_eps = 0) it ends at
    min_ratio (EDM's σ_min = 0.002) before the last point t_end — spacing down to r = 0 would put
    the last steps within float32 resolution of t_end and repeat times."""
    _check_n(n, process, "edm")
    if not rho > 0:
        raise ValueError(f"edm_grid: rho must be > 0, got {rho}.")
    t_end = data_end(process, t_eps)
    dtype = jnp.result_type(float)
    log_ratio = lambda t: -0.5 * process.log_snr(jnp.asarray(t, dtype))  # noqa: E731
    log_r_max = log_ratio(process.t_noise)
    r_max = jnp.exp(jnp.where(jnp.isfinite(log_r_max), log_r_max, jnp.log(max_ratio)))
    r_min = jnp.exp(log_ratio(t_end))
    r_min = jnp.where(r_min > 0, r_min, min_ratio)
    i = jnp.arange(n + 1, dtype=dtype) / n
    r = (r_max ** (1 / rho) + i * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
    ts = time_at_log_snr(process, -2.0 * jnp.log(r), process.t_noise, t_end)
    return _finish(process, ts, t_end)


def logsnr_grid(
    process: GaussianProcess, n: int, t_eps: float | None = None, max_abs_logsnr: float = 15.0
) -> Float[Array, " n_plus_1"]:
    """Uniform steps in λ = log(α²/σ²) from λ(t_noise) to λ(t_end), mapped back to times; an
    infinite end (α = 0 or σ = 0) is replaced by ∓max_abs_logsnr (±15: the truncation of the cosine
    schedule)."""
    _check_n(n, process, "logsnr")
    t_end = data_end(process, t_eps)
    dtype = jnp.result_type(float)

    def finite_log_snr(t):
        lam = process.log_snr(jnp.asarray(t, dtype))
        return jnp.where(jnp.isfinite(lam), lam, jnp.sign(lam) * max_abs_logsnr)

    lam = jnp.linspace(finite_log_snr(process.t_noise), finite_log_snr(t_end), n + 1, dtype=dtype)
    ts = time_at_log_snr(process, lam, process.t_noise, t_end)
    return _finish(process, ts, t_end)


def make_grid(
    process: GaussianProcess, n: int, grid: str = "uniform", t_eps: float | None = None
) -> Float[Array, " n_plus_1"]:
    """The grid called `grid` ('uniform', 'edm' or 'logsnr') with default options."""
    if grid not in GRIDS:
        raise ValueError(f"Unknown grid {grid!r}; choose one of {GRIDS} or pass an array of times.")
    return {"uniform": uniform_grid, "edm": edm_grid, "logsnr": logsnr_grid}[grid](
        process, n, t_eps=t_eps
    )
