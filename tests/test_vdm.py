"""Variational diffusion models (Kingma et al. 2021): the learned monotone schedule, the continuous-time
ELBO against the exact negative log-likelihood of Gaussian data, the invariance of the diffusion loss
to the schedule's shape, and the variance-minimising schedule update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax.likelihood import continuous_elbo
from diffjax.processes.learned import variance_gradient

S, MU = 0.7, jnp.array([0.3, -0.2])
GAUSSIAN = dj.gaussian(MU, S**2 * jnp.eye(2))


def test_schedule_is_monotone_with_its_endpoints_and_its_sde_is_consistent():
    process = dj.LearnedSchedule.create(-10.0, 6.0, key=jax.random.key(3))
    t = jnp.linspace(0.0, 1.0, 201)
    gamma = process.gamma(t)
    assert float(gamma[0]) == pytest.approx(-10.0, abs=1e-5)
    assert float(gamma[-1]) == pytest.approx(6.0, abs=1e-5)
    assert bool(jnp.all(jnp.diff(gamma) > 0))
    np.testing.assert_allclose(process.alpha(t) ** 2 + process.sigma(t) ** 2, 1.0, rtol=1e-6)
    d_gamma = jax.vmap(jax.grad(process.gamma))(t)  # g² = σ²·γ'(t) for a VP schedule
    np.testing.assert_allclose(process.diffusion_squared(t), process.sigma(t) ** 2 * d_gamma, rtol=1e-4)
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        dj.LearnedSchedule.create(3.0, -3.0)


def expected_gap(gamma_min, gamma_max, dim=2):
    """E_x[−ELBO − (−log p(x))] in closed form for x ~ N(μ, s²I) and the exact denoiser: the diffusion
    term is ½D[log(1 + s²e^{−γ})] between the endpoints, the Gaussian decoder's term D/2(log 2πσ̃0² + 1)
    with σ̃0² = e^{γ_min}, the prior KL α_T²(|μ|² + Ds²)/(2σ_T²)."""
    s2 = S**2
    diffusion = 0.5 * dim * (np.log1p(s2 * np.exp(-gamma_min)) - np.log1p(s2 * np.exp(-gamma_max)))
    recon = 0.5 * dim * (np.log(2 * np.pi) + gamma_min + 1.0)
    snr_T = np.exp(-gamma_max)
    prior = 0.5 * snr_T * (float(jnp.sum(MU**2)) + dim * s2)
    nll = 0.5 * dim * (np.log(2 * np.pi * s2) + 1.0)
    return diffusion + recon + prior - nll


@pytest.mark.parametrize("gamma_min, gamma_max", [(-4.0, 3.0), (-8.0, 6.0), (-13.3, 5.0)])
def test_continuous_elbo_bounds_the_exact_nll_and_matches_its_closed_form(gamma_min, gamma_max):
    n = 4000
    process = dj.LearnedSchedule.create(gamma_min, gamma_max)
    x = GAUSSIAN.sample(jax.random.key(0), n)[0]
    res = continuous_elbo(GAUSSIAN.model(process, "eps"), process, x, jax.random.key(1), num_times=64)
    gap = res.total + GAUSSIAN.log_prob(x)  # −ELBO − (−log p)
    z = (float(jnp.mean(gap)) - expected_gap(gamma_min, gamma_max)) / (float(jnp.std(gap)) / np.sqrt(n))
    assert abs(z) < 4, (z, float(jnp.mean(gap)), expected_gap(gamma_min, gamma_max))


def test_the_bound_tightens_as_the_endpoints_widen():
    gaps = [expected_gap(-w, w * 0.75) for w in (4.0, 8.0, 12.0, 16.0)]
    assert all(g > 0 for g in gaps) and all(b < a for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-3 < gaps[0]


def per_example_diffusion(process, x, key):
    """One-time Monte Carlo estimates of the diffusion term (num_times = 1): the estimator whose
    variance the schedule's shape controls."""
    return continuous_elbo(GAUSSIAN.model(process, "eps"), process, x, key, num_times=1).diffusion


def test_diffusion_loss_depends_only_on_the_endpoints_and_the_shape_update_lowers_its_variance():
    """VDM eq. 13: with fixed endpoints the expected diffusion loss is the same for every shape; the
    variance-minimising update (gradient of the mean square in the shape) lowers the variance of
    the one-sample estimate while the mean stays put (both measured with fresh draws)."""
    process = dj.LearnedSchedule.create(-10.0, 8.0, key=jax.random.key(1))
    x_eval = GAUSSIAN.sample(jax.random.key(10), 20_000)[0]

    def measure(p):
        values = jax.jit(per_example_diffusion)(p, x_eval, jax.random.key(11))
        return float(jnp.mean(values)), float(jnp.var(values)), float(jnp.std(values)) / np.sqrt(values.size)

    mean0, var0, se0 = measure(process)
    exact = 0.5 * 2 * (np.log1p(S**2 * np.exp(10.0)) - np.log1p(S**2 * np.exp(-8.0)))
    assert abs(mean0 - exact) < 4 * se0, (mean0, exact, se0)

    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(process)

    @jax.jit
    def step(p, opt_state, key):
        x = GAUSSIAN.sample(key, 512)[0]
        _, _, grad = variance_gradient(per_example_diffusion, p, x, jax.random.fold_in(key, 1))
        grad = dataclasses.replace(grad, gamma_min=jnp.zeros(()), gamma_max=jnp.zeros(()))  # endpoints fixed
        updates, opt_state = optimizer.update(grad, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    for i in range(150):
        process, opt_state = step(process, opt_state, jax.random.key(100 + i))
    mean1, var1, se1 = measure(process)
    assert float(process.gamma(0.0)) == pytest.approx(-10.0, abs=1e-4)  # endpoints kept
    assert abs(mean1 - exact) < 4 * se1, (mean1, exact, se1)
    # the variance must drop well beyond the sampling error of a variance ratio (heavy tails: 20%)
    assert var1 < 0.8 * var0, (var0, var1)
