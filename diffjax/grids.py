"""Time grids for samplers, from the noise end to the data end of any `GaussianProcess`.

Every grid is an array of shape (n+1,) on the process's own time axis with ts[0] = t_noise (where
the prior is drawn) and ts[n] = `process.data_end(t_eps)` (t_data moved by t_eps towards the noise;
t_eps = 0 ends exactly at the data). A discrete process (the DDPM chain) takes uniform grids only,
rounded to integer steps (the respacing of Nichol & Dhariwal 2021).

    uniform   t_i = t_noise + (i/n)(t_end − t_noise)
    edm       r_i^{1/ρ} = r_max^{1/ρ} + (i/n)(r_min^{1/ρ} − r_max^{1/ρ}),  r = σ/α   (Karras et al.
              2022, eq. 5; for VE σ/α = σ, for general processes the noise-to-signal ratio)
    logsnr    λ_i = λ_noise + (i/n)(λ_end − λ_noise),  λ = log(α²/σ²)   (uniform in log-SNR)

The non-uniform grids are defined through σ/α or λ and mapped back to times by
`process.time_at_log_snr` (bisection, jittable). Where these are infinite (α = 0 at a flow's noise
end, σ = 0 at the data end) the spacing uses a finite stand-in (`max_ratio`/`min_ratio`,
`max_abs_logsnr`) and the end point is still t_noise / t_end; finite values are never clipped, so
the grids refine everywhere as n grows (except for the interval from an infinite end to its
stand-in, where every solver is accurate).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from diffjax.processes.base import GaussianProcess

GRIDS = ("uniform", "edm", "logsnr")


def _check_n(n, process: GaussianProcess, grid: str) -> None:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}.")
    if process.discrete:
        if grid != "uniform":
            raise ValueError(
                f"{grid}_grid: the log-SNR of {type(process).__name__} jumps to +inf at its last step, "
                "so rounded non-uniform grids repeat steps; use uniform_grid or pass an array of "
                "distinct integer steps."
            )
        span = abs(process.t_noise - process.t_data)
        if n > span:
            raise ValueError(f"uniform_grid: at most {int(span)} steps on {type(process).__name__}, got {n}.")


def _finish(process: GaussianProcess, ts: Array, t_end: float) -> Array:
    ts = ts.at[0].set(process.t_noise).at[-1].set(t_end)
    return jnp.round(ts) if process.discrete else ts


def uniform_grid(
    process: GaussianProcess, n: int, t_eps: float | None = None
) -> Float[Array, " n_plus_1"]:
    """n equal steps in t from t_noise to t_end."""
    _check_n(n, process, "uniform")
    t_end = process.data_end(t_eps)
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
    t_end = process.data_end(t_eps)
    dtype = jnp.result_type(float)
    log_ratio = lambda t: -0.5 * process.log_snr(jnp.asarray(t, dtype))  # noqa: E731
    log_r_max = log_ratio(process.t_noise)
    r_max = jnp.exp(jnp.where(jnp.isfinite(log_r_max), log_r_max, jnp.log(max_ratio)))
    r_min = jnp.exp(log_ratio(t_end))
    r_min = jnp.where(r_min > 0, r_min, min_ratio)
    i = jnp.arange(n + 1, dtype=dtype) / n
    r = (r_max ** (1 / rho) + i * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
    ts = process.time_at_log_snr(-2.0 * jnp.log(r), process.t_noise, t_end)
    return _finish(process, ts, t_end)


def logsnr_grid(
    process: GaussianProcess, n: int, t_eps: float | None = None, max_abs_logsnr: float = 15.0
) -> Float[Array, " n_plus_1"]:
    """Uniform steps in λ = log(α²/σ²) from λ(t_noise) to λ(t_end), mapped back to times; an
    infinite end (α = 0 or σ = 0) is replaced by ∓max_abs_logsnr (±15: the truncation of the cosine
    schedule)."""
    _check_n(n, process, "logsnr")
    t_end = process.data_end(t_eps)
    dtype = jnp.result_type(float)

    def finite_log_snr(t):
        lam = process.log_snr(jnp.asarray(t, dtype))
        return jnp.where(jnp.isfinite(lam), lam, jnp.sign(lam) * max_abs_logsnr)

    lam = jnp.linspace(finite_log_snr(process.t_noise), finite_log_snr(t_end), n + 1, dtype=dtype)
    ts = process.time_at_log_snr(lam, process.t_noise, t_end)
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
