"""The diffusion ↔ flow-matching bridge: same marginals, same ODE under τ = 1 − t/T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.oracle import ring_mixture
from diffjax.processes import (
    VESDE,
    VPSDE,
    CondOTPath,
    CosinePath,
    CosineVPSDE,
    DiffusionTime,
    FlowTime,
    SubVPSDE,
    VPPath,
    flow_path_from_sde,
    sde_from_flow_path,
)
from diffjax.solvers import SDE, EulerMaruyama, integrate


def flow_time(t, T=1.0):
    """τ = 1 − t/T (the textbook map, written independently of the library)."""
    return 1.0 - t / T


def diffusion_time(tau, T=1.0):
    return T * (1.0 - tau)


def test_flow_time_puts_the_data_at_one_and_the_noise_at_zero():
    sde = VPSDE(T=2.0)
    path = flow_path_from_sde(sde)
    tau = jnp.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(path.alpha(tau), sde.alpha(diffusion_time(tau, 2.0)), rtol=1e-6)
    assert (path.t_data, path.t_noise) == (1.0, 0.0)


def test_vp_path_is_the_vp_sde_in_flow_time():
    """Lipman et al.'s VP path α_τ = e^{−B(1−τ)/2}, σ_τ = √(1 − α_τ²), B(s) = β_min s + ½(β_max − β_min)s²,
    is the VP SDE read in flow time."""
    tau = jnp.linspace(0.0, 1.0, 11)
    path, lipman = flow_path_from_sde(VPSDE()), VPPath()
    s = 1.0 - np.asarray(tau, np.float64)
    alpha = np.exp(-0.5 * (0.1 * s + 0.5 * (20.0 - 0.1) * s**2))
    for p in (path, lipman):
        assert isinstance(p, FlowTime) and p.t_noise == 0.0 and p.t_data == 1.0
        np.testing.assert_allclose(p.alpha(tau), alpha, rtol=1e-6)
        np.testing.assert_allclose(p.sigma(tau), np.sqrt(1.0 - alpha**2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(path.alpha(tau), lipman.alpha(tau), rtol=1e-6)
    np.testing.assert_allclose(path.sigma(tau), lipman.sigma(tau), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(T=2.0), VESDE(T=4.0)],
                         ids=lambda s: f"{type(s).__name__}_T{s.T}")
def test_flow_time_carries_the_time_axis_log_snr_and_data_end_offset(sde):
    """FlowTime(sde) at τ is the SDE at t = T(1 − τ): same log-SNR; its default data end is the image of
    the SDE's (the offset 1e-3·T becomes 1e-3 in τ), and DiffusionTime(FlowTime(sde)) is the SDE on
    t/T ∈ [0, 1] with the same offset."""
    with x64():
        path = FlowTime(sde)
        tau = jnp.linspace(0.05, 0.95, 7)
        np.testing.assert_allclose(path.log_snr(tau), sde.log_snr(diffusion_time(tau, sde.T)), rtol=1e-12)
        assert path.default_t_eps == pytest.approx(1e-3, rel=1e-12)
        assert path.data_end() == pytest.approx(flow_time(sde.data_end(), sde.T), abs=1e-15)
        assert path.data_end(0.25) == pytest.approx(flow_time(sde.data_end(0.25 * sde.T), sde.T), abs=1e-15)
        assert path.time_interval() == pytest.approx((0.0, 0.999), abs=1e-15)
        back = DiffusionTime(path)
        assert (back.t_data, back.t_noise, back.T) == (0.0, 1.0, 1.0)
        assert back.default_t_eps == pytest.approx(1e-3, rel=1e-12)
        assert back.data_end() == pytest.approx(sde.data_end() / sde.T, abs=1e-15)
        u = jnp.linspace(0.05, 0.95, 7)
        np.testing.assert_allclose(back.alpha(u), sde.alpha(u * sde.T), rtol=1e-12)
        np.testing.assert_allclose(back.sigma(u), sde.sigma(u * sde.T), rtol=1e-12)
        # the derived rates are the SDE's rescaled to unit time: f and g² scale by dt/du = T
        np.testing.assert_allclose(back.drift_coeff(u), sde.T * sde.drift_coeff(u * sde.T), rtol=1e-10)
        np.testing.assert_allclose(back.diffusion_squared(u), sde.T * sde.diffusion_squared(u * sde.T),
                                   rtol=1e-10)


@pytest.mark.parametrize("path", [CondOTPath(), CosinePath()], ids=lambda p: type(p).__name__)
def test_diffusion_time_of_a_path_keeps_its_zero_offset_and_inverts_to_the_path(path):
    sde = DiffusionTime(path)
    assert sde.default_t_eps == 0.0 and sde.data_end() == 0.0 and sde.time_interval(0.1) == (0.1, 1.0)
    with x64():
        tau = jnp.linspace(0.05, 0.95, 7)
        again = FlowTime(sde)
        np.testing.assert_allclose(again.alpha(tau), path.alpha(tau), rtol=1e-12)
        np.testing.assert_allclose(again.sigma(tau), path.sigma(tau), rtol=1e-12)
        assert again.data_end() == path.data_end() == 1.0


@pytest.mark.parametrize("sde", [VPSDE(T=2.0), SubVPSDE(), VESDE(sigma_max=5.0), CosineVPSDE()],
                         ids=lambda s: type(s).__name__)
def test_probability_flow_ode_equals_flow_matching_ode_of_its_path(sde):
    """u_τ(x) = −T · [f(t)x − ½g²(t)∇log p_t(x)] at t = T(1 − τ), with the exact mixture score
    under the SDE on the right and the exact marginal velocity under the path on the left."""
    with x64():
        mix = ring_mixture(4, radius=2.0, std=0.4)
        path = flow_path_from_sde(sde)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)) * 2)
        tau = jnp.linspace(0.1, 0.9, 6)
        t = diffusion_time(tau, sde.T)
        pf = sde.drift(x, t) - 0.5 * sde.diffusion_squared(t)[:, None] * mix.score(x, sde, t)  # PF drift
        u = mix.velocity(x, path, tau)
        np.testing.assert_allclose(u, -sde.T * pf, rtol=1e-7, atol=1e-8)  # dx/dτ = −T dx/dt


@pytest.mark.parametrize("path", [CondOTPath(), CosinePath()], ids=lambda p: type(p).__name__)
def test_sde_of_a_flow_path_has_its_marginals_and_ode(path):
    with x64():
        sde = sde_from_flow_path(path)
        t = jnp.linspace(0.05, 0.95, 7)
        np.testing.assert_allclose(sde.alpha(t), path.alpha(1 - t), rtol=1e-12)
        mix = ring_mixture(4, radius=2.0, std=0.4)
        x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 2)))
        pf = sde.drift(x, t) - 0.5 * sde.diffusion_squared(t)[:, None] * mix.score(x, sde, t)
        np.testing.assert_allclose(-pf, mix.velocity(x, path, 1 - t), rtol=1e-7, atol=1e-8)


def test_sde_of_condot_path_simulated_matches_its_marginal():
    """Euler–Maruyama of dx = f x dt + g dW with the generic f = −1/(1−t), g² = 2t/(1−t) for
    CondOT (derived by the bridge) reproduces x_t ~ N((1−t)x0, t²) — Monte Carlo z-scores."""
    sde = sde_from_flow_path(CondOTPath())
    n = 20_000
    x0 = jnp.full((n, 1), 1.5)
    ts = jnp.linspace(0.0, 0.8, 801)
    x = jax.jit(lambda k: integrate(EulerMaruyama(), SDE(sde.drift, sde.diffusion), x0, ts, k).y)(
        jax.random.PRNGKey(0)
    )
    mean, std = 0.2 * 1.5, 0.8
    z_mean = (float(x.mean()) - mean) / (std / np.sqrt(n))
    z_var = (float(x.var()) - std**2) / (std**2 * np.sqrt(2 / (n - 1)))
    assert abs(z_mean) < 4.5 and abs(z_var) < 4.5, (z_mean, z_var)
