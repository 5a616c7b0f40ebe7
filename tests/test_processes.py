"""Forward processes and paths: closed forms, derived rates, the generic process interface
(transition, posterior, marginal record, log-SNR inverse, time axis), validation, compilation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.parameterization import from_x0_eps
from diffjax.processes import (
    SDE,
    VESDE,
    VPSDE,
    CondOTPath,
    CosinePath,
    CosineVPSDE,
    DiffusionTime,
    FlowTime,
    NoisedSample,
    PolynomialPath,
    SubVPSDE,
    VPPath,
)

SDES = [VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE()]
PATHS = [CondOTPath(), CondOTPath(sigma_min=0.01), CosinePath(), PolynomialPath(3.0), VPPath()]
TS = np.linspace(0.05, 0.95, 7)


@pytest.mark.parametrize("sde", SDES[:3], ids=lambda s: type(s).__name__)
def test_closed_form_rates_match_generic_vdm_formulas(sde):
    """The closed-form f(t), g²(t) of VP/sub-VP/VE equal f = dlogα/dt, g² = dσ²/dt − 2fσ² obtained
    by autodiff of the closed-form marginal: the drift/diffusion and the marginal are consistent."""
    with x64():
        t = jnp.asarray(TS * sde.T)
        c = sde.coefficients(t)
        f_generic = c.d_alpha / c.alpha
        g2_generic = 2 * c.sigma * c.d_sigma - 2 * f_generic * c.sigma**2
        np.testing.assert_allclose(sde.drift_coeff(t), f_generic, rtol=1e-10)
        np.testing.assert_allclose(sde.diffusion_squared(t), g2_generic, rtol=1e-8)


def test_vp_marginal_matches_song_equations():
    """VP: α = exp(−¼t²(β_max−β_min) − ½tβ_min), σ² = 1 − α² (Song et al. 2021, eq. 29)."""
    sde = VPSDE(0.1, 20.0)
    t = jnp.asarray(TS)
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(sde.alpha(t), np.exp(log_mean), rtol=1e-6)
    np.testing.assert_allclose(sde.sigma(t) ** 2, 1 - np.exp(2 * log_mean), rtol=1e-5)
    sub = SubVPSDE(0.1, 20.0)
    np.testing.assert_allclose(sub.sigma(t), 1 - np.exp(2 * log_mean), rtol=1e-5)
    assert np.all(sub.sigma(t) < sde.sigma(t))  # sub-VP variance stays below VP's


def test_cosine_vp_is_nichol_cosine_in_the_interior():
    """Untruncated, α² = cos²(πt/2); the log-SNR truncation changes it only near the ends."""
    sde = CosineVPSDE(logsnr_min=-30.0, logsnr_max=30.0)
    t = jnp.asarray(TS)
    np.testing.assert_allclose(sde.alpha(t) ** 2, np.cos(np.pi * TS / 2) ** 2, atol=1e-6)
    np.testing.assert_allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, 1.0, atol=1e-6)
    assert float(sde.log_snr(0.0)) == pytest.approx(30.0, abs=1e-3)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{type(p).__name__}")
def test_path_endpoints_and_derivatives(path):
    """Noise at t=0 (α≈0), data at t=1 (α=1); derivatives by jvp equal finite differences."""
    with x64():
        assert float(path.alpha(1.0)) == pytest.approx(1.0, abs=1e-6)
        assert 0.0 <= float(path.alpha(0.0)) < 1e-2  # VPPath: e^{−B(1)/2} ≈ 6.6e-3
        t = jnp.asarray(TS)
        c, h = path.coefficients(t), 1e-6
        np.testing.assert_allclose(c.d_alpha, (path.alpha(t + h) - path.alpha(t - h)) / (2 * h),
                                   rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(c.d_sigma, (path.sigma(t + h) - path.sigma(t - h)) / (2 * h),
                                   rtol=1e-6, atol=1e-8)


def test_path_conditional_velocity_is_time_derivative_of_interpolant():
    """The 'velocity' of (x1, x0) is d/dt of the interpolant α_t x1 + σ_t x0; its 'score' is that of
    N(α x1, σ² I)."""
    path = CosinePath()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x1, x0 = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    interpolant = lambda s: path.alpha(s)[:, None] * x1 + path.sigma(s)[:, None] * x0  # noqa: E731
    x, dx = jax.jvp(interpolant, (t,), (jnp.ones_like(t),))
    c = path.coefficients(t)
    np.testing.assert_allclose(from_x0_eps(x1, x0, "velocity", x, c), dx, rtol=1e-5, atol=1e-6)
    expected = -(x - path.alpha(t)[:, None] * x1) / path.sigma(t)[:, None] ** 2
    np.testing.assert_allclose(from_x0_eps(x1, x0, "score", x, c), expected, rtol=1e-4, atol=1e-5)


def test_prior_logp_is_standard_normal_for_vp():
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    expected = jax.scipy.stats.norm.logpdf(x).sum(-1)
    sde = VPSDE()
    # σ(T)² = 1 − e^{−B(T)} ≈ 1 − 4.5e-5 for the default schedule
    np.testing.assert_allclose(sde.prior_logp(x), expected, atol=5e-4)
    ve = VESDE()
    ve_exp = jax.scipy.stats.norm.logpdf(x, scale=float(ve.prior_std())).sum(-1)
    np.testing.assert_allclose(ve.prior_logp(x), ve_exp, rtol=1e-5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_min < beta_max"),
        (lambda: VPSDE(beta_min=-1.0), "beta_min must be > 0"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min must be > 0"),
        (lambda: VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min < sigma_max"),
        (lambda: SubVPSDE(T=0.0), "T must be > 0"),
        (lambda: CondOTPath(sigma_min=1.5), "sigma_min must lie in"),
        (lambda: PolynomialPath(exponent=0.0), "exponent must be > 0"),
        (lambda: CosineVPSDE(logsnr_min=5.0, logsnr_max=-5.0), "logsnr_min < logsnr_max"),
    ],
)
def test_invalid_schedule_parameters_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_time_outside_domain_and_bad_shapes_raise():
    sde, path = VPSDE(T=2.0), CondOTPath()
    # alpha/sigma are the raw formulas; the time range is checked where coefficients are used
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 2.0\]"):
        sde.coefficients(2.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        path.coefficients(jnp.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="must lie in"):
        sde.log_snr(jnp.nan)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="shape \\(batch,\\)"):
        sde.marginal(x, jnp.ones(3) * 0.5)


def test_processes_are_pytrees_that_jit_vmap_and_grad_without_retracing():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def sigma_and_grad(process, t):
        return process.sigma(t), jax.grad(lambda s: process.alpha(s).sum())(t)

    t = jnp.linspace(0.1, 0.9, 5)
    for _ in range(3):
        sigma_and_grad(VPSDE(), t)  # equal static fields → same treedef → one trace
    sigmas = jax.vmap(VPSDE().sigma)(t)
    np.testing.assert_allclose(sigmas, VPSDE().sigma(t), rtol=1e-6)
    key = jax.random.PRNGKey(0)
    noised = jax.jit(VPSDE().sample_marginal)(key, jnp.ones((3, 2)), jnp.full((3,), 0.5))
    np.testing.assert_allclose(noised.x_t, VPSDE().alpha(0.5) * 1.0 + VPSDE().sigma(0.5) * noised.eps,
                               rtol=1e-6)


# -- the generic process interface -----------------------------------------------------------------
CONTINUOUS = SDES + PATHS + [VPSDE(T=2.0), FlowTime(VPSDE(T=2.0)), DiffusionTime(CondOTPath()),
                             DiffusionTime(CosinePath())]  # fmt: skip


def _name(process):
    inner = getattr(process, "process", None)
    return type(process).__name__ + (f"({type(inner).__name__})" if inner is not None else "")


def _at(process, u):
    """Times at fractions u of the way from the data end (u = 0) to the noise end (u = 1)."""
    u = np.asarray(u, np.float64)
    return jnp.asarray(process.t_data + u * (process.t_noise - process.t_data))


@pytest.mark.parametrize("process", CONTINUOUS, ids=_name)
def test_posterior_is_bayes_conditioning_of_the_joint_gaussian(process):
    """q(x_s | x_t, x0) for s cleaner than t (not adjacent; s = t_data in the first row) equals the
    conditional of the joint Gaussian of (x_s, x_t) | x0 built by the forward chain
    x_s ~ N(α_s x0, σ_s²), x_t = (α_t/α_s) x_s + √(σ_t² − (α_t/α_s)² σ_s²) z."""
    with x64():
        u_s = np.array([0.0, 0.1, 0.3, 0.2, 0.45])
        u_t = np.array([0.6, 0.5, 0.7, 0.9, 0.55])
        s, t = _at(process, u_s), _at(process, u_t)
        rng = np.random.default_rng(0)
        x0, x_t = rng.normal(size=(5, 3)), 2.0 * rng.normal(size=(5, 3))
        mean, var = process.posterior(jnp.asarray(x_t), jnp.asarray(x0), t, s)
        a_s, a_t = np.asarray(process.alpha(s)), np.asarray(process.alpha(t))
        v_s, v_t = np.asarray(process.sigma(s)) ** 2, np.asarray(process.sigma(t)) ** 2
        cov_st = a_t / a_s * v_s  # Cov(x_s, x_t | x0)
        ref_mean = (a_s * x0.T + cov_st / v_t * (x_t.T - a_t * x0.T)).T
        ref_var = v_s - cov_st**2 / v_t
        assert var.shape == (5, 1)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var[:, 0], ref_var, rtol=1e-10, atol=1e-12)
        if float(process.sigma(process.t_data)) == 0.0:  # s = t_data: x_s is the data itself
            np.testing.assert_allclose(mean[0], x0[0] * float(process.alpha(process.t_data)), rtol=1e-12)
            assert float(var[0, 0]) == 0.0


@pytest.mark.parametrize("process", CONTINUOUS, ids=_name)
def test_transition_composes_and_reproduces_the_marginals(process):
    """For r cleaner than s cleaner than t: α_{t|s}·α_{s|r} = α_{t|r} and
    σ²_{t|r} = α_{t|s}² σ²_{s|r} + σ²_{t|s} (Chapman–Kolmogorov for Gaussians); from the data end
    the transition is the marginal, α_{t|s} α_s = α_t and α_{t|s}² σ_s² + σ²_{t|s} = σ_t²."""
    with x64():
        r = _at(process, [0.0, 0.1, 0.2, 0.05])
        s = _at(process, [0.5, 0.4, 0.25, 0.5])
        t = _at(process, [0.9, 0.8, 0.3, 0.95])
        a_ts, v_ts = process.transition(t, s)
        a_sr, v_sr = process.transition(s, r)
        a_tr, v_tr = process.transition(t, r)
        np.testing.assert_allclose(a_ts * a_sr, a_tr, rtol=1e-10)
        np.testing.assert_allclose(a_ts**2 * v_sr + v_ts, v_tr, rtol=1e-10)
        assert np.all(np.asarray(v_ts) > 0) and np.all(np.asarray(v_sr) > 0)
        np.testing.assert_allclose(a_ts * process.alpha(s), process.alpha(t), rtol=1e-10)
        np.testing.assert_allclose(a_ts**2 * process.sigma(s) ** 2 + v_ts, process.sigma(t) ** 2,
                                   rtol=1e-10)


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), CondOTPath(), VPPath()], ids=_name)
@pytest.mark.parametrize("per_example", [False, True], ids=["scalar_t", "batch_t"])
def test_sample_marginal_returns_a_consistent_noised_sample(process, per_example):
    """The record holds x_t = α x0 + σ ε with its own coefficients (those of `coefficients(t)`), the
    data, ε of x0's shape and t broadcast to (batch,); the same under jit."""
    with x64():
        x0 = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 3))
        t = _at(process, np.linspace(0.1, 0.9, 5) if per_example else 0.4)
        noised = process.sample_marginal(jax.random.PRNGKey(1), x0, t)
        assert isinstance(noised, NoisedSample)
        assert noised.t.shape == (5,) and noised.eps.shape == x0.shape == noised.x_t.shape
        np.testing.assert_array_equal(noised.t, jnp.broadcast_to(t, (5,)))
        np.testing.assert_array_equal(noised.x0, x0)
        c = noised.coefficients
        for got, want in zip(c, process.coefficients(noised.t), strict=True):
            assert got.shape == (5,)
            np.testing.assert_allclose(got, want, rtol=1e-12)
        expected = c.alpha[:, None, None] * x0 + c.sigma[:, None, None] * noised.eps
        np.testing.assert_allclose(noised.x_t, expected, rtol=1e-12, atol=1e-12)
        assert float(jnp.std(noised.eps)) > 0.5  # ε is drawn, not zero
        jitted = jax.jit(process.sample_marginal)(jax.random.PRNGKey(1), x0, t)
        np.testing.assert_allclose(jitted.x_t, noised.x_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process", CONTINUOUS, ids=_name)
def test_time_at_log_snr_inverts_log_snr(process):
    """t(λ(t)) = t on the whole axis, jitted too; λ beyond the range gives the nearer end, and a
    sub-interval [t_start, t_stop] containing t gives the same t."""
    with x64():
        span = abs(process.t_noise - process.t_data)
        t = _at(process, np.linspace(0.05, 0.95, 7))
        lam = process.log_snr(t)
        np.testing.assert_allclose(process.time_at_log_snr(lam), t, rtol=0, atol=1e-10 * span)
        np.testing.assert_allclose(jax.jit(process.time_at_log_snr)(lam), t, rtol=0, atol=1e-10 * span)
        ends = process.time_at_log_snr(jnp.array([1e3, -1e3]))
        np.testing.assert_allclose(ends, [process.t_data, process.t_noise], rtol=0, atol=1e-12 * span)
        lo, hi = _at(process, 0.02), _at(process, 0.98)
        np.testing.assert_allclose(process.time_at_log_snr(lam, hi, lo), t, rtol=0, atol=1e-10 * span)


@pytest.mark.parametrize(
    "process, t_eps_default, t_eps, interval",
    [
        (VPSDE(), 1e-3, 0.01, (0.01, 1.0)),
        (VESDE(T=2.0), 2e-3, 0.5, (0.5, 2.0)),
        (CosineVPSDE(), 1e-3, 0.0, (0.0, 1.0)),
        (CondOTPath(), 0.0, 0.01, (0.0, 0.99)),
        (VPPath(), 1e-3, 0.25, (0.0, 0.75)),  # FlowTime(VPSDE()) inherits the SDE's 1e-3
        (FlowTime(VPSDE(T=2.0)), 1e-3, 0.5, (0.0, 0.5)),  # 2e-3 of t is 1e-3 of flow time
        (DiffusionTime(CondOTPath()), 0.0, 0.1, (0.1, 1.0)),
        (DiffusionTime(FlowTime(VESDE(T=4.0))), 1e-3, 0.2, (0.2, 1.0)),
    ],
    ids=lambda v: _name(v) if hasattr(v, "t_data") else None,
)
def test_data_end_and_time_interval_move_from_the_data_towards_the_noise(
    process, t_eps_default, t_eps, interval
):
    assert process.default_t_eps == pytest.approx(t_eps_default, rel=1e-12, abs=0)
    step_to_noise = np.sign(process.t_noise - process.t_data)
    assert process.data_end() == pytest.approx(process.t_data + step_to_noise * t_eps_default, abs=1e-15)
    assert process.data_end(0.0) == process.t_data
    assert process.data_end(t_eps) == pytest.approx(process.t_data + step_to_noise * t_eps, abs=1e-15)
    assert isinstance(process.data_end(t_eps), float)
    assert process.time_interval(t_eps) == pytest.approx(interval, abs=1e-15)
    lo, hi = process.time_interval()
    assert lo < hi and hi - lo == pytest.approx(abs(process.t_noise - process.t_data) - t_eps_default)
    assert process.t_data < process.t_noise if isinstance(process, SDE) else process.t_data > process.t_noise
    span = abs(process.t_noise - process.t_data)
    for bad in (-1e-3, span, 2 * span, True, "0.1"):
        with pytest.raises(ValueError, match="t_eps"):
            process.data_end(bad)


@pytest.mark.parametrize("process", CONTINUOUS, ids=_name)
def test_continuous_processes_declare_rates_and_continuous_time(process):
    assert process.has_rates and not process.discrete
    c = process.coefficients(_at(process, [0.3, 0.6]))
    assert c.d_alpha is not None and c.d_sigma is not None
    assert np.all(np.isfinite(np.asarray(process.drift_coeff(_at(process, [0.3, 0.6])))))
