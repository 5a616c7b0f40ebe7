"""The diffusion ↔ flow-matching bridge: same marginals, same ODE under τ = 1 − t/T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.convention import (
    diffusion_time,
    flow_path_from_sde,
    flow_time,
    sde_from_flow_path,
    velocity_to_flow_time,
)
from diffjax.oracle import ring_mixture
from diffjax.paths.gaussian import CondOTPath, CosinePath, VPPath
from diffjax.processes.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from diffjax.simulate import euler_maruyama


def test_time_maps_are_inverse():
    t = jnp.linspace(0, 2.0, 5)
    np.testing.assert_allclose(diffusion_time(flow_time(t, 2.0), 2.0), t, atol=1e-7)
    assert float(flow_time(0.0, 2.0)) == 1.0  # data end ↔ τ = 1


def test_vp_path_is_the_vp_sde_in_flow_time():
    tau = jnp.linspace(0.0, 1.0, 11)
    path, lipman = flow_path_from_sde(VPSDE()), VPPath()
    np.testing.assert_allclose(path.alpha(tau), lipman.alpha(tau), rtol=1e-6)
    np.testing.assert_allclose(path.sigma(tau), lipman.sigma(tau), rtol=1e-6, atol=1e-7)


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
        pf = sde.probability_flow_drift(lambda x_, t_: mix.score(x_, sde, t_))(x, t)
        u = mix.velocity(x, path, tau)
        np.testing.assert_allclose(u, velocity_to_flow_time(pf, sde.T), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("path", [CondOTPath(), CosinePath()], ids=lambda p: type(p).__name__)
def test_sde_of_a_flow_path_has_its_marginals_and_ode(path):
    with x64():
        sde = sde_from_flow_path(path)
        t = jnp.linspace(0.05, 0.95, 7)
        np.testing.assert_allclose(sde.alpha(t), path.alpha(1 - t), rtol=1e-12)
        mix = ring_mixture(4, radius=2.0, std=0.4)
        x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 2)))
        pf = sde.probability_flow_drift(lambda x_, t_: mix.score(x_, sde, t_))(x, t)
        np.testing.assert_allclose(velocity_to_flow_time(pf), mix.velocity(x, path, 1 - t),
                                   rtol=1e-7, atol=1e-8)


def test_sde_of_condot_path_simulated_matches_its_marginal():
    """Euler–Maruyama of dx = f x dt + g dW with the generic f = −1/(1−t), g² = 2t/(1−t) for
    CondOT (derived by the bridge) reproduces x_t ~ N((1−t)x0, t²) — Monte Carlo z-scores."""
    sde = sde_from_flow_path(CondOTPath())
    n = 20_000
    x0 = jnp.full((n, 1), 1.5)
    ts = jnp.linspace(0.0, 0.8, 801)
    x = jax.jit(lambda k: euler_maruyama(k, x0, sde.drift, sde.diffusion, ts))(
        jax.random.PRNGKey(0)
    )
    mean, std = 0.2 * 1.5, 0.8
    z_mean = (float(x.mean()) - mean) / (std / np.sqrt(n))
    z_var = (float(x.var()) - std**2) / (std**2 * np.sqrt(2 / (n - 1)))
    assert abs(z_mean) < 4.5 and abs(z_var) < 4.5, (z_mean, z_var)
