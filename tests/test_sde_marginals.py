"""Monte-Carlo check of the closed-form marginals of every forward SDE.

Each SDE is simulated with its own `drift`/`diffusion` by Euler–Maruyama (`diffjax.integrate` with
`EulerMaruyama` on a `diffjax.solvers.SDE` term) and the sample mean and variance of X_t | X_0 = x0
are compared with the closed form by z-scores:
mean SE = σ/√n, variance SE = σ²·√(2/(n−1)) (exact for Gaussian samples; the EM chain of a linear
SDE is Gaussian). With 4 processes × 24 statistics, P(max |z| > 4.5) ≈ 96 · 6.8e-6 < 1e-3 under
the null, so a failure means a wrong closed form, drift or diffusion.

The closed form N(α(t) x0, σ(t)²) is compared directly. For the truncated CosineVPSDE, α(0)² =
sigmoid(15) differs from 1 by 3e-7, so the law of the SDE started at x0 at t = 0 differs from it
by O(3e-7) in mean and variance, far below every standard error here (≥ 3e-4 at t = 0.1 T).

Run with `pytest -s` to see the worst |z| per process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.processes import VESDE, VPSDE, CosineVPSDE, LinearSDE, SubVPSDE
from diffjax.solvers import SDE, EulerMaruyama, integrate

PROCESSES = {
    "VPSDE": VPSDE(),
    "SubVPSDE": SubVPSDE(),
    "VESDE": VESDE(),
    "CosineVPSDE": CosineVPSDE(),
}
X0 = np.array([[1.0, -2.0], [0.5, 3.0]])  # two starting points in 2-D
N_PATHS = 10_000  # per starting point
N_STEPS = 2000
EVAL_FRACTIONS = (0.1, 0.5, 1.0)  # evaluation times as fractions of T
Z_MAX = 4.5
BIAS_FRACTION = 0.5  # EM discretisation bias must stay below this many standard errors

_WORST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_worst_z():
    yield
    if _WORST:
        name = max(_WORST, key=_WORST.get)
        print(f"\n[test_sde_marginals] worst |z| = {_WORST[name]:.2f} ({name}); per process: "
              + ", ".join(f"{k} {v:.2f}" for k, v in _WORST.items()))


def time_grid(sde):
    """A grid uniform in h(t) = t/T + B(t)/B(T) + log(1 + t/t_s)/log(1 + T/t_s), t_s = T/100, with
    B = −2 log α (B = 0 for VE). The B term keeps the decay per step |f|Δt ≈ ΔB/2 small (the
    truncated cosine schedule has β(T) ≈ 6e3, where a uniform grid makes EM unstable); the log term
    refines small t, where σ and hence the standard errors are small, so the O(Δt) EM bias must be
    too. The evaluation times are snapped onto the grid; returns (ts, their indices)."""
    t_fine = np.linspace(0.0, sde.T, 200_001)
    log_ratio = -2.0 * np.log(np.asarray(sde.alpha(t_fine) / sde.alpha(0.0)))
    h = t_fine / sde.T + (log_ratio / log_ratio[-1] if log_ratio[-1] > 0 else 0.0)
    h = h + np.log1p(100.0 * t_fine / sde.T) / np.log1p(100.0)
    ts = np.interp(np.linspace(0.0, h[-1], N_STEPS + 1), h, t_fine)
    idx = [int(np.argmin(np.abs(ts - f * sde.T))) for f in EVAL_FRACTIONS]
    ts[idx] = [f * sde.T for f in EVAL_FRACTIONS]
    assert np.all(np.diff(ts) > 0)
    return ts, idx


@pytest.mark.parametrize("name", list(PROCESSES))
def test_euler_maruyama_matches_closed_form_marginals(name):
    with jax.enable_x64(True):
        sde = PROCESSES[name]
        ts, idx = time_grid(sde)
        x0 = jnp.repeat(jnp.asarray(X0), N_PATHS, axis=0)  # (2 N, 2)
        bounds = list(zip([0] + idx[:-1], idx, strict=True))

        @jax.jit
        def simulate(key, x):
            states = []
            for k, (i, j) in zip(jax.random.split(key, len(bounds)), bounds, strict=True):
                x = integrate(EulerMaruyama(), SDE(sde.drift, sde.diffusion), x, ts[i : j + 1], k).y
                states.append(x)
            return states

        states = simulate(jax.random.key(0), x0)
        linear = LinearSDE.from_scalar_sde(sde, X0.shape[1])
        zs = []
        for frac, j, x_t in zip(EVAL_FRACTIONS, idx, states, strict=True):
            t = ts[j]
            ratio, std = float(sde.alpha(t)), float(sde.sigma(t))
            mean_exact, var_exact = ratio * X0, std**2
            se_mean = std / np.sqrt(N_PATHS)
            se_var = var_exact * np.sqrt(2.0 / (N_PATHS - 1))

            # EM bias: the exact moments of the EM chain on this grid (a linear recursion) against
            # the closed form. Below BIAS_FRACTION·SE it shifts z by < 0.5, so |z| < 4.5 still tests
            # the closed form and not the discretisation.
            em_mean, em_cov = linear.euler_maruyama_moments(ts[: j + 1], X0)
            bias_mean = np.abs(np.asarray(em_mean) - mean_exact).max()
            bias_var = np.abs(np.diag(np.asarray(em_cov)) - var_exact).max()
            assert bias_mean < BIAS_FRACTION * se_mean, (name, frac, bias_mean / se_mean)
            assert bias_var < BIAS_FRACTION * se_var, (name, frac, bias_var / se_var)

            x_t = np.asarray(x_t).reshape(len(X0), N_PATHS, -1)
            z_mean = (x_t.mean(axis=1) - mean_exact) / se_mean
            z_var = (x_t.var(axis=1, ddof=1) - var_exact) / se_var
            zs.append(np.abs(np.concatenate([z_mean.ravel(), z_var.ravel()])).max())
            assert np.all(np.abs(z_mean) < Z_MAX), (name, frac, z_mean)
            assert np.all(np.abs(z_var) < Z_MAX), (name, frac, z_var)
        _WORST[name] = max(zs)
        print(f"\n{name}: worst |z| = {max(zs):.2f} over t/T in {EVAL_FRACTIONS}")
