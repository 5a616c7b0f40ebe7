"""Forward processes and paths: closed forms, derived rates, validation, compilation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.paths.gaussian import CondOTPath, CosinePath, PolynomialPath, VPPath
from diffjax.processes.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

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
    path = CosinePath()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x1, x0 = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    _, dx = jax.jvp(lambda s: path.interpolate(x1, x0, s), (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(path.conditional_velocity(x1, x0, t), dx, rtol=1e-5, atol=1e-6)
    # conditional score of N(α x1, σ² I)
    x = path.interpolate(x1, x0, t)
    expected = -x0 / path.sigma(t)[:, None]
    np.testing.assert_allclose(path.conditional_score(x, x1, t), expected, rtol=1e-4, atol=1e-5)


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
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 2.0\]"):
        sde.sigma(2.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        path.alpha(jnp.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="must lie in"):
        sde.alpha(jnp.nan)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="shape \\(batch,\\)"):
        sde.marginal(x, jnp.ones(3) * 0.5)
    with pytest.raises(ValueError, match="same shape"):
        path.interpolate(x, jnp.zeros((4, 3)), 0.5)


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
    xt, eps = jax.jit(VPSDE().sample_marginal)(key, jnp.ones((3, 2)), jnp.full((3,), 0.5))
    np.testing.assert_allclose(xt, VPSDE().alpha(0.5) * 1.0 + VPSDE().sigma(0.5) * eps, rtol=1e-6)
