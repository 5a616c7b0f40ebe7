"""Variational diffusion models (Kingma et al. 2021): the learned monotone schedule, the continuous-time
ELBO against the exact negative log-likelihood of Gaussian data, the invariance of the diffusion loss
to the schedule's shape, the variance-minimising schedule update, and a network that carries its
schedule through training (`WithSchedule`, `model_loss`)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import diffjax as dj
from diffjax.likelihood import continuous_elbo
from diffjax.losses import BoundLabels
from diffjax.models import WithSchedule, build_model, process_of
from diffjax.processes.learned import mean_with_variance_gradient, variance_gradient
from diffjax.training import model_loss

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


def test_vdm_loss_with_its_batch_stratified_times_is_the_bound_in_bits_per_dim():
    """`dj.vdm_loss` (one time per example, stratified over the whole batch with one shared offset) is an
    unbiased estimate of the same closed-form bound, per example, in bits/dim (z-test, 4 standard
    errors): offsets that missed part of [t0, T] or counted part twice would bias it."""
    n, process = 4000, dj.LearnedSchedule.create(-8.0, 6.0)
    x = GAUSSIAN.sample(jax.random.key(0), n)[0]
    model = GAUSSIAN.model(process, "eps")
    bits = dj.vdm_loss(model, x, jax.random.key(1), process=process, decoder="gaussian", reduce=False)
    gap = bits * 2 * np.log(2.0) + GAUSSIAN.log_prob(x)
    z = (float(jnp.mean(gap)) - expected_gap(-8.0, 6.0)) / (float(jnp.std(gap)) / np.sqrt(n))
    assert abs(z) < 4, z


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


# -- a network that carries its learned schedule (training) ------------------------------------
def test_mean_with_variance_gradient_gives_the_chosen_leaves_the_gradient_of_the_mean_square():
    """The custom VJP against plain autodiff: chosen leaves get ∇(1/n)Σ L_i², the others ∇(1/n)Σ L_i."""
    params = {"shape": jnp.array([0.3, -1.2]), "rest": jnp.array(0.7)}
    x = jax.random.normal(jax.random.key(0), (64, 2))

    def per_example(p, x):
        return jnp.sin(x @ p["shape"]) ** 2 + p["rest"] * jnp.sum(x, -1) + p["rest"] ** 2 * x[:, 0]

    chosen = lambda path: path[0].key == "shape"  # noqa: E731
    value, got = jax.value_and_grad(
        lambda p: mean_with_variance_gradient(per_example, p, x, square=chosen))(params)  # fmt: skip
    mean_grad = jax.grad(lambda p: jnp.mean(per_example(p, x)))(params)
    square_grad = jax.grad(lambda p: jnp.mean(per_example(p, x) ** 2))(params)
    assert float(value) == pytest.approx(float(jnp.mean(per_example(params, x))), rel=1e-6)
    np.testing.assert_allclose(got["shape"], square_grad["shape"], rtol=1e-5)
    np.testing.assert_allclose(got["rest"], mean_grad["rest"], rtol=1e-5)
    assert not np.allclose(mean_grad["shape"], square_grad["shape"], rtol=0.1)  # the test can tell them apart


def small_with_schedule(learn_endpoints=True):
    spec = {"kind": "mlp", "dim": 2, "width": 32, "depth": 2, "prediction": "eps",
            "learned_schedule": {"gamma_min": -9.0, "gamma_max": 6.0, "hidden": 8,
                                 "learn_endpoints": learn_endpoints}}  # fmt: skip
    return build_model(spec, seed=3)


def test_a_network_with_a_schedule_sees_its_normalised_gamma_and_carries_its_process():
    model = small_with_schedule()
    assert isinstance(model, WithSchedule) and model.prediction == "eps"
    process = process_of(model, dj.VPSDE())
    assert isinstance(process, dj.LearnedSchedule)
    assert float(process.gamma(0.0)) == pytest.approx(-9.0, abs=1e-5)
    assert float(process.gamma(1.0)) == pytest.approx(6.0, abs=1e-5)
    x, t = jax.random.normal(jax.random.key(1), (5, 2)), jnp.linspace(0.05, 0.95, 5)
    tau = process.unit_gamma(t)
    np.testing.assert_allclose(tau, (process.gamma(t) + 9.0) / 15.0, atol=1e-6)
    np.testing.assert_allclose(model(x, t), model.network(x, tau), atol=1e-6)
    vp = dj.VPSDE()
    assert process_of(model.network, vp) is vp  # a plain network carries none


def test_the_training_loss_gives_the_shape_the_variance_gradient_and_the_rest_the_mean_gradient():
    """`diffjax.training.model_loss` of a `WithSchedule` network with the per-example VDM loss, against
    autodiff of the same per-example values: the network and the endpoints descend the mean (the
    bound), the schedule's shape descends the mean square (the variance of its estimate); with
    learn_endpoints=False no gradient reaches the endpoints."""
    x = GAUSSIAN.sample(jax.random.key(2), 128)[0]
    key = jax.random.key(3)
    loss = functools.partial(dj.vdm_loss, decoder="gaussian", reduce=False)
    for learn_endpoints in (True, False):
        graphdef, params = nnx.split(small_with_schedule(learn_endpoints))
        got = jax.grad(model_loss(graphdef, loss))(params, (x, None), key)

        def per_example(p, graphdef=graphdef):  # what model_loss computes, by hand
            k_loss, k_dropout, _ = jax.random.split(key, 3)
            network = nnx.merge(graphdef, p)
            return loss(BoundLabels(network, None, {"rngs": k_dropout}), x, k_loss, process=network.process)

        mean_grad = jax.grad(lambda p: jnp.mean(per_example(p)))(params)
        square_grad = jax.grad(lambda p: jnp.mean(per_example(p) ** 2))(params)
        for name in dj.LearnedSchedule.SHAPE_FIELDS:
            np.testing.assert_allclose(got["schedule"][name][...], square_grad["schedule"][name][...],
                                       rtol=1e-4, atol=1e-6)  # fmt: skip
        for a, b in zip(jax.tree.leaves(got["network"]), jax.tree.leaves(mean_grad["network"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for name in ("gamma_min", "gamma_max"):
            endpoint = float(got["schedule"][name][...])
            if learn_endpoints:
                assert endpoint == pytest.approx(float(mean_grad["schedule"][name][...]), rel=1e-4)
                assert endpoint != 0.0
            else:
                assert endpoint == 0.0
    with pytest.raises(ValueError, match=r"must return per-example values \(batch,\), got shape \(\)"):
        model_loss(graphdef, functools.partial(dj.vdm_loss, decoder="gaussian"))(params, (x, None), key)
