"""LinearSDE: ODE moments vs closed forms (Van Loan, Lyapunov, scalar SDEs), vs the exact moments
of the Euler–Maruyama chain, and vs Monte Carlo; shape errors; jit without retracing.

Float64 is switched on inside each test with the `jax.enable_x64` context manager (so it does not
leak into other test modules). Statistical tolerances: |z| < 4.5 with standard errors
SE(mean_i) = √(S_ii/n) (empirical covariance S) and SE(S_ij) = √((V_ii V_jj + V_ij²)/(n−1))
(Gaussian samples); ≤ 24 statistics per test give a false-alarm rate below 24 · 6.8e-6 ≈ 2e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.processes import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from diffjax.processes.linear import LinearSDE, constant_coefficient_moments
from diffjax.solvers import SDE, EulerMaruyama, integrate

Z_MAX = 4.5
N_PATHS = 20_000
N_STEPS = 2000

# constant coefficients: rotation + damping + coupling, b ≠ 0, non-square G (3×2), Q ≠ I
A_C = np.array([[-0.5, 1.0, 0.0], [-1.0, -0.3, 0.2], [0.1, 0.0, -1.0]])
B_C = np.array([0.5, -1.0, 0.2])
G_C = np.array([[1.0, 0.0], [0.5, 0.8], [0.0, 0.3]])
Q_C = np.array([[1.0, 0.4], [0.4, 0.5]])
T_C = 2.0
X0_C = np.array([1.0, -0.5, 2.0])


def constant_sde() -> LinearSDE:
    return LinearSDE.from_constant(A_C, B_C, G_C, Q_C, T=T_C)


# time-varying coefficients (module-level functions are hashable static fields); D = 2, M = 3
def a_tv(t):
    w = 1.0 + 0.5 * jnp.sin(t)
    return jnp.stack([jnp.stack([-0.5 - 0.5 * t, w]), jnp.stack([-w, -0.2 + 0.0 * t])])


def b_tv(t):
    return jnp.stack([jnp.cos(t), 0.5 * t])


def g_tv(t):
    z = 0.0 * t
    return jnp.stack([jnp.stack([1.0 + 0.5 * t, z, 0.3 + z]), jnp.stack([0.2 * t, 0.8 + z, z])])


Q_TV = np.array([[1.0, 0.2, 0.0], [0.2, 0.5, 0.0], [0.0, 0.0, 2.0]])
T_TV = 1.5
X0_TV = np.array([2.0, -1.0])


def time_varying_sde() -> LinearSDE:
    return LinearSDE(A=a_tv, b=b_tv, G=g_tv, Q=Q_TV, T=T_TV)


def euler_maruyama(key, x0, drift_fn, diffusion_fn, ts, save_every=0):
    """Euler–Maruyama of dX = drift_fn(X, t) dt + diffusion_fn(t) dW on the grid ts: the Solution."""
    return integrate(EulerMaruyama(), SDE(drift_fn, diffusion_fn), x0, ts, key, save_every=save_every)


def assert_close(a, b, atol, what=""):
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    assert err <= atol, f"{what}: max error {err:.3g} >= {atol:.3g}"


# -- deterministic closed forms -------------------------------------------------------------------
def test_constant_coefficients_ode_matches_van_loan():
    with jax.enable_x64(True):
        ts = jnp.array([0.0, 0.3, 1.3, T_C])
        ode = constant_sde().transition(ts)
        exact = constant_coefficient_moments(A_C, B_C, G_C, Q_C, ts)
        # ODE solved with rtol = atol = 1e-8; entries are O(1), so 1e-6 leaves a 100x margin
        for name, a, b in zip("Phi m V".split(), ode, exact, strict=True):
            assert_close(a, b, 1e-6, name)
        assert_close(exact.Phi, jax.vmap(jax.scipy.linalg.expm)(ts[:, None, None] * A_C), 1e-10)
        assert_close(ode.Phi[0], np.eye(3), 1e-14, "Phi(0)")
        assert_close(ode.V[0], 0.0, 1e-14, "V(0)")
        mean, cov = constant_sde().moments(1.3, X0_C)
        assert_close(mean, exact.Phi[2] @ X0_C + exact.m[2], 1e-6, "mean")
        assert_close(cov, exact.V[2], 1e-6, "cov")
        # per-example times t of shape (batch,)
        x0 = np.stack([X0_C, -X0_C, 2 * X0_C, 0 * X0_C])
        mean, cov = constant_sde().moments(ts, x0)
        assert_close(mean, np.einsum("bij,bj->bi", exact.Phi, x0) + exact.m, 1e-6, "batched mean")
        assert_close(cov, exact.V, 1e-6, "batched cov")
        assert_close(constant_sde().drift(x0, ts), x0 @ A_C.T + B_C, 1e-12, "drift")


def test_van_loan_reaches_lyapunov_stationary_law():
    """A is stable, so as t → ∞: m → −A⁻¹b and V → V∞ with A V∞ + V∞ Aᵀ + G Q Gᵀ = 0 (solved
    here independently via Kronecker products)."""
    with jax.enable_x64(True):
        tr = constant_coefficient_moments(A_C, B_C, G_C, Q_C, 60.0)
        s = G_C @ Q_C @ G_C.T
        lyap = np.kron(np.eye(3), A_C) + np.kron(A_C, np.eye(3))
        v_inf = np.linalg.solve(lyap, -s.reshape(-1)).reshape(3, 3)
        assert_close(tr.V, v_inf, 1e-9, "V(inf)")
        assert_close(tr.m, -np.linalg.solve(A_C, B_C), 1e-9, "m(inf)")
        assert np.abs(np.asarray(tr.Phi)).max() < 1e-9


def test_time_varying_ode_matches_refined_euler_maruyama_moments():
    """The EM-chain moments converge to the ODE moments at order 1 in Δt; Richardson extrapolation
    2·M(Δt/2) − M(Δt) is second order. Two extrapolations estimate their own error."""
    with jax.enable_x64(True):
        sde = time_varying_sde()
        mean, cov = sde.moments(T_TV, X0_TV)
        levels = [sde.euler_maruyama_moments(np.linspace(0, T_TV, n + 1), X0_TV)
                  for n in (2000, 4000, 8000)]
        for k, exact in enumerate((mean, cov)):
            m1, m2, m4 = (np.asarray(level[k]) for level in levels)
            r1, r2 = 2 * m2 - m1, 2 * m4 - m2
            assert np.abs(m4 - exact).max() > 1e-5  # first-order EM error is visible ...
            err_est = np.abs(r2 - r1).max() / 3  # ... the O(Δt²) error of r2 is ≈ |r2 − r1|/3
            assert_close(r2, exact, 1e-6 + 10 * err_est, "Richardson EM moments vs ODE")


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE()],
                         ids=lambda s: type(s).__name__)
def test_from_scalar_sde_matches_closed_form(sde):
    with jax.enable_x64(True):
        lin = LinearSDE.from_scalar_sde(sde, 2)
        ts = jnp.array([0.0, 0.1, 0.5, 1.0]) * sde.T
        tr = lin.transition(ts)
        alpha, var = np.asarray(sde.alpha(ts)), np.asarray(sde.sigma(ts)) ** 2
        # tolerance 1e-5 relative (VE's variance reaches 2.5e3); for the truncated cosine schedule
        # α(0)² = sigmoid(15) ≠ 1 by 3e-7 (the SDE started at t = 0 has α_{t|0} = α(t)/α(0)).
        scale = np.maximum(1.0, var)[:, None, None]
        assert_close(tr.Phi, alpha[:, None, None] * np.eye(2), 1e-5, "alpha")
        assert_close(tr.V / scale, (var[:, None, None] * np.eye(2)) / scale, 1e-5, "sigma^2")
        assert_close(tr.m, 0.0, 1e-12, "m")
        x0 = np.array([[1.0, -2.0], [0.5, 3.0]])
        mean, cov = lin.moments(0.5 * sde.T, x0)
        assert_close(mean, alpha[2] * x0, 1e-5, "mean")


def test_float32_default_tolerances():
    sde = VPSDE()
    tr = LinearSDE.from_scalar_sde(sde, 2).transition(jnp.array([0.1, 0.5, 1.0]))
    assert tr.V.dtype == jnp.float32
    assert_close(tr.V[:, 0, 0], sde.sigma(jnp.array([0.1, 0.5, 1.0])) ** 2, 1e-4, "float32 V")


# -- Monte Carlo -----------------------------------------------------------------------------------
def mc_z_scores(samples, mean, cov):
    """z-scores of the sample mean (SE from the empirical covariance) and of the sample covariance
    entries (SE from the exact covariance), both against the exact moments."""
    x = np.asarray(samples)
    n = x.shape[0]
    mean, cov = np.asarray(mean), np.asarray(cov)
    s = np.cov(x, rowvar=False)
    z_mean = (x.mean(axis=0) - mean) / np.sqrt(np.diag(s) / n)
    d = np.diag(cov)
    se_cov = np.sqrt((np.outer(d, d) + cov**2) / (n - 1))
    iu = np.triu_indices(len(mean))
    z_cov = ((s - cov) / se_cov)[iu]
    return z_mean, z_cov, se_cov[iu]


@pytest.mark.parametrize("case", ["constant", "time_varying"])
def test_euler_maruyama_monte_carlo_matches_moments(case):
    with jax.enable_x64(True):
        sde, x0 = (constant_sde(), X0_C) if case == "constant" else (time_varying_sde(), X0_TV)
        ts = np.linspace(0.0, sde.T, N_STEPS + 1)
        mid = N_STEPS // 2

        @jax.jit
        def simulate(key, x):
            k1, k2 = jax.random.split(key)
            x_mid = euler_maruyama(k1, x, sde.drift, sde.diffusion_matrix, ts[: mid + 1]).y
            return x_mid, euler_maruyama(k2, x_mid, sde.drift, sde.diffusion_matrix, ts[mid:]).y

        states = simulate(jax.random.key(1), jnp.broadcast_to(x0, (N_PATHS, len(x0))))
        worst = 0.0
        for j, x_t in zip((mid, N_STEPS), states, strict=True):
            mean, cov = sde.moments(ts[j], x0)
            if case == "constant":
                exact = constant_coefficient_moments(A_C, B_C, G_C, Q_C, ts[j])
                assert_close(mean, exact.mean(x0), 1e-6)
                assert_close(cov, exact.V, 1e-6)
            z_mean, z_cov, se_cov = mc_z_scores(x_t, mean, cov)
            # EM bias (exact EM-chain moments vs ODE) must be < 0.5 SE, so it shifts z by < 0.5
            em_mean, em_cov = sde.euler_maruyama_moments(ts[: j + 1], x0)
            se_mean = np.sqrt(np.diag(np.asarray(cov)) / N_PATHS)
            assert np.all(np.abs(np.asarray(em_mean - mean)) < 0.5 * se_mean)
            iu = np.triu_indices(len(x0))
            assert np.all(np.abs(np.asarray(em_cov - cov))[iu] < 0.5 * se_cov)
            assert np.all(np.abs(z_mean) < Z_MAX), z_mean
            assert np.all(np.abs(z_cov) < Z_MAX), z_cov
            worst = max(worst, np.abs(z_mean).max(), np.abs(z_cov).max())
        print(f"\nLinearSDE {case}: worst |z| = {worst:.2f}")


def test_sample_marginal_matches_moments_under_jit():
    with jax.enable_x64(True):
        sde = time_varying_sde()
        traces = []

        @jax.jit
        def sample(sde, key, x0, t):
            traces.append(1)
            return sde.sample_marginal(key, x0, t)

        x0 = jnp.broadcast_to(X0_TV, (N_PATHS, 2))
        for seed, t in enumerate((0.4, 1.2)):
            x_t, eps = sample(time_varying_sde(), jax.random.key(seed), x0, t)
            mean, cov = sde.moments(t, X0_TV)
            z_mean, z_cov, _ = mc_z_scores(x_t, mean, cov)
            assert np.all(np.abs(z_mean) < Z_MAX) and np.all(np.abs(z_cov) < Z_MAX)
            assert eps.shape == x_t.shape
        assert len(traces) == 1, "sample_marginal retraced"


# -- jit and retracing -----------------------------------------------------------------------------
def test_moments_jit_does_not_retrace():
    with jax.enable_x64(True):
        traces = []

        @jax.jit
        def moments(sde, t, x0):
            traces.append(1)
            return sde.moments(t, x0)

        x0 = jnp.ones((4, 2))
        for t in (0.2, 0.7, 1.0):  # a fresh but equal LinearSDE each time
            mean, cov = moments(LinearSDE.from_scalar_sde(VPSDE(), 2), t, x0)
            sde = VPSDE()
            assert_close(mean, sde.alpha(t) * x0, 1e-6)
            assert_close(cov, sde.sigma(t) ** 2 * np.eye(2), 1e-6)
        for t in (0.5, 1.5):
            moments(constant_sde(), t, jnp.ones((4, 3)))
        assert len(traces) == 2, f"traced {len(traces)} times for 2 distinct (sde, shape) pairs"

        jitted = jax.jit(constant_sde().moments)  # bound method
        for t in (0.1, 0.9):
            mean, cov = jitted(t, jnp.asarray(X0_C))
            exact = constant_coefficient_moments(A_C, B_C, G_C, Q_C, t)
            assert_close(cov, exact.V, 1e-6)
        assert jitted._cache_size() == 1


# -- euler_maruyama --------------------------------------------------------------------------------
def test_euler_maruyama_shapes_and_deterministic_limit():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 1.0, 11)
        x0 = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
        # g = 0: the chain is exactly x_n = (1 − Δt)^n x0 for dx = −x dt
        sol = euler_maruyama(jax.random.key(0), x0, lambda x, t: -x, lambda t: 0.0 * t, ts, save_every=1)
        x1, path = sol.y, sol.trajectory
        assert path.shape == (11, 2, 2)
        assert_close(path[0], x0, 0.0)
        assert_close(path[-1], x1, 0.0)
        assert_close(x1, 0.9**10 * x0, 1e-12)
        # a decreasing grid (reverse time) and a (batch,) rate; a (D, M) matrix with M ≠ D
        x_rev = euler_maruyama(jax.random.key(0), x0, lambda x, t: 0.0 * x,
                               lambda t: jnp.array([1.0, 0.0]), ts[::-1]).y
        assert x_rev.shape == (2, 2)
        assert_close(x_rev[1], x0[1], 0.0)  # zero rate for the second example
        x_mat = euler_maruyama(jax.random.key(0), x0, lambda x, t: 0.0 * x,
                               lambda t: jnp.ones((2, 3)), ts).y
        assert_close(x_mat[:, 0] - x0[:, 0], x_mat[:, 1] - x0[:, 1], 1e-12)  # identical rows of G


def test_euler_maruyama_bad_input():
    ts = jnp.linspace(0.0, 1.0, 5)
    drift, g = (lambda x, t: -x), (lambda t: 1.0)
    key = jax.random.key(0)
    # the state's leading axis is the batch: a rate must be a scalar or one per example
    with pytest.raises(ValueError, match=r"\(batch,\) = \(2,\) rate"):
        euler_maruyama(key, jnp.ones((2, 3)), drift, lambda t: jnp.ones(3), ts)
    with pytest.raises(ValueError, match="ts"):
        euler_maruyama(key, jnp.ones((2, 3)), drift, g, jnp.array([0.0]))
    with pytest.raises(ValueError, match="diffusion matrix"):
        euler_maruyama(key, jnp.ones((2, 3)), drift, lambda t: jnp.ones((2, 2)), ts)
    with pytest.raises(ValueError, match="diffusion matrix"):  # a matrix needs a (batch, D) state
        euler_maruyama(key, jnp.ones(2), drift, lambda t: jnp.ones((2, 2)), ts)
    with pytest.raises(ValueError, match="drift"):
        euler_maruyama(key, jnp.ones((2, 3)), lambda x, t: x[:, :2], g, ts)


def test_euler_maruyama_rejects_a_non_monotone_grid():
    with pytest.raises(ValueError, match="monotone|increasing"):
        euler_maruyama(jax.random.key(0), jnp.ones((2, 3)), lambda x, t: -x, lambda t: 1.0,
                       jnp.array([0.0, 0.5, 0.2]))


# -- validation ------------------------------------------------------------------------------------
def test_bad_shapes_and_times_raise():
    ok = dict(A=A_C, b=B_C, G=G_C, Q=Q_C)
    bad = [
        (dict(A=np.ones((3, 2))), "square"),
        (dict(b=np.ones(2)), "b"),
        (dict(b=np.ones((3, 1))), "b"),
        (dict(G=np.ones((2, 2))), "rows"),
        (dict(Q=np.eye(3)), "Q must be"),
        (dict(Q=np.array([[1.0, 0.0], [0.5, 1.0]])), "symmetric"),
        (dict(Q=np.array([[1.0, 2.0], [2.0, 1.0]])), "positive semi-definite"),
    ]
    for change, match in bad:
        kwargs = {**ok, **change}
        with pytest.raises(ValueError, match=match):
            LinearSDE.from_constant(**kwargs)
        with pytest.raises(ValueError, match=match):
            constant_coefficient_moments(**kwargs, t=1.0)
    sde = constant_sde()
    with pytest.raises(ValueError, match="time t"):
        sde.moments(T_C + 0.5, X0_C)
    with pytest.raises(ValueError, match="time t"):
        sde.transition(-0.1)
    with pytest.raises(ValueError, match="time t"):
        sde.sample_marginal(jax.random.key(0), X0_C, 3.0)
    with pytest.raises(ValueError, match="x must have shape"):
        sde.moments(1.0, np.ones((4, 2)))
    with pytest.raises(ValueError, match="dim"):
        LinearSDE.from_scalar_sde(VPSDE(), 0)
    with pytest.raises(ValueError, match="T"):
        LinearSDE.from_constant(A_C, B_C, G_C, Q_C, T=0.0)
