"""Time grids (`diffjax.grids`): their ends and spacings on every kind of process, integer grids on
the DDPM chain, argument checks, and a concrete grid array given to `dj.sample`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_util import mixture_2d

import diffjax as dj
from diffjax.grids import edm_grid, logsnr_grid, uniform_grid
from diffjax.oracle import GaussianMixture, gaussian
from diffjax.processes import VESDE, VPSDE, CondOTPath, DDPMChain


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), CondOTPath()], ids=str)
def test_grids_run_from_noise_to_data_end_with_their_spacing(process):
    towards_data = np.sign(process.t_data - process.t_noise)
    t_eps = 1e-3 if process.t_data < process.t_noise else 0.0
    t_end = process.data_end(t_eps)
    for ts in (uniform_grid(process, 10, t_eps), edm_grid(process, 10, 7.0, t_eps),
               logsnr_grid(process, 10, t_eps)):  # fmt: skip
        assert ts.shape == (11,)
        assert float(ts[0]) == process.t_noise and float(ts[-1]) == pytest.approx(t_end)
        assert np.all(np.diff(np.asarray(ts)) * towards_data > 0)
    # EDM: (σ/α)^{1/ρ} equally spaced (interior points; on flow paths the noise end is infinite
    # and the data end r = 0 is reached from min_ratio).
    ts = edm_grid(process, 10, 7.0, t_eps)
    r = np.exp(-0.5 * np.asarray(process.log_snr(ts[1:-1]), np.float64)) ** (1 / 7)
    np.testing.assert_allclose(np.diff(r), np.diff(r).mean(), rtol=2e-3)
    lam = np.asarray(process.log_snr(logsnr_grid(process, 10, t_eps)[1:-1]), np.float64)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam).mean(), rtol=2e-3)


@pytest.mark.parametrize("n", [25, 100, 400])
def test_edm_grid_to_the_exact_data_end_never_repeats_times(n):
    """Regression: spacing down to r = 0 put the last steps within float32 resolution of t = 1,
    repeated times and made DPM-Solver++'s step h = λ(1) − λ(1) = ∞ − ∞ a NaN."""
    process = CondOTPath()
    assert np.all(np.diff(np.asarray(edm_grid(process, n))) > 0)
    mixture = GaussianMixture.create(jnp.array([[-2.0], [2.0]]), jnp.array([0.25, 0.25]))
    res = dj.sample("dpm_solver_pp", mixture.model(process, "velocity"), process,
                    jax.random.PRNGKey(0), (64, 1), n, grid="edm")  # fmt: skip
    assert np.all(np.isfinite(np.asarray(res.samples)))


def test_time_at_log_snr_inverts_log_snr_and_grids_jit():
    process = VPSDE()
    t = jnp.linspace(0.01, 0.99, 7)
    t_back = process.time_at_log_snr(process.log_snr(t), 1.0, 0.0)
    np.testing.assert_allclose(t_back, t, atol=1e-6)
    jitted = jax.jit(edm_grid, static_argnums=1)(process, 8)
    np.testing.assert_allclose(jitted, edm_grid(process, 8), atol=1e-6)  # float32 fusion


def test_ddpm_grids_are_integer_steps_and_bad_grid_arguments_raise():
    chain = DDPMChain.linear(1000)
    ts = uniform_grid(chain, 50)
    assert float(ts[0]) == 1000 and float(ts[-1]) == 0 and np.all(np.asarray(ts) % 1 == 0)
    with pytest.raises(ValueError, match="uniform_grid"):
        edm_grid(chain, 10)
    with pytest.raises(ValueError, match="t_eps"):
        uniform_grid(VPSDE(), 10, t_eps=1.5)
    with pytest.raises(ValueError, match="positive integer"):
        edm_grid(VPSDE(), 0)
    model = gaussian(jnp.zeros(2), jnp.eye(2)).model(VPSDE(), "eps")
    with pytest.raises(ValueError, match="Unknown grid"):
        dj.sample("euler", model, VPSDE(), jax.random.PRNGKey(0), (4, 2), 5, grid="cosine")


def test_a_grid_array_is_used_as_given():
    """A concrete array grid gives the named grid's samples (up to the float32 rounding of grid
    times computed outside vs inside jit); a grid that does not start at
    t_noise needs x_init, and one that turns back raises."""
    process, mix = VPSDE(), mixture_2d()
    model = mix.model(process)
    named = dj.sample("heun", model, process, jax.random.PRNGKey(0), (16, 2), 8, grid="logsnr")
    ts = np.asarray(logsnr_grid(process, 8))
    given = dj.sample("heun", model, process, jax.random.PRNGKey(0), (16, 2), 8, grid=ts)
    np.testing.assert_allclose(given.samples, named.samples, rtol=0, atol=1e-5)
    assert given.nfe == named.nfe == 17
    with pytest.raises(ValueError, match="x_init"):
        dj.sample("heun", model, process, jax.random.PRNGKey(0), (16, 2), 8, grid=ts * 0.5)
    with pytest.raises(ValueError, match="strictly"):
        dj.sample("heun", model, process, jax.random.PRNGKey(0), (16, 2), 8, grid=ts[::-1])
