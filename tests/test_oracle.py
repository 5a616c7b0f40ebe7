"""The exact mixture oracle: log-density, score, posterior means, velocity, class posterior."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from scipy.stats import multivariate_normal

import diffjax as dj
from diffjax.oracle import ExactModel, GaussianMixture, gaussian, ring_mixture
from diffjax.parameterization import convert
from diffjax.processes import VESDE, VPSDE, CondOTPath, CosinePath
from diffjax.sampling import _sample_compiled


def mixture_3d():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 3))
    covs = a @ a.transpose(0, 2, 1) * 0.3 + 0.2 * np.eye(3)
    means = rng.normal(size=(3, 3)) * 2
    return GaussianMixture.create(means, covs, weights=[0.2, 0.5, 0.3], labels=[0, 1, 1])


CASES = [(None, None), (VPSDE(), 0.4), (CondOTPath(), 0.0), (CondOTPath(), 1.0)]


@pytest.mark.parametrize("process, t", CASES, ids=["data", "VP", "CondOT-noise", "CondOT-data"])
def test_isotropic_closed_form_equals_the_general_posterior(process, t):
    """Mixtures created with scalar or (K,) covariances use the O(KD) isotropic formulas; they equal
    the general eigendecomposition path (the same mixture with isotropic=False) to float64 rounding."""
    with x64():
        mix = GaussianMixture.create(np.random.default_rng(3).normal(size=(5, 3)) * 2,
                                     np.array([0.2, 0.5, 1.0, 1.5, 0.3]), weights=[0.1, 0.2, 0.3, 0.2, 0.2])
        general = dataclasses.replace(mix, isotropic=False)
        assert mix.isotropic and not general.isotropic
        x = jnp.asarray(np.random.default_rng(4).normal(size=(40, 3)) * 2)
        tb = None if t is None else jnp.full((40,), t)
        pairs = zip(mix._posterior(x, process, tb), general._posterior(x, process, tb), strict=True)
        for fast, slow in pairs:
            np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_log_prob_matches_scipy_for_full_covariances():
    with x64():
        mix = mixture_3d()
        x = np.random.default_rng(1).normal(size=(7, 3)) * 2
        expected = np.log(sum(
            w * multivariate_normal(m, c).pdf(x)
            for w, m, c in zip(mix.weights, mix.means, mix.covs, strict=True)
        ))  # fmt: skip
        np.testing.assert_allclose(mix.log_prob(jnp.asarray(x)), expected, rtol=1e-10)


@pytest.mark.parametrize("process, t", [(None, None), (VPSDE(), 0.4), (VESDE(), 0.3),
                                        (CondOTPath(), 0.5), (CosinePath(), 0.2)])
def test_score_equals_finite_differences_of_log_density(process, t):
    with x64():
        mix = mixture_3d()
        x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)))
        score = mix.score(x, process, t)
        h = 1e-5
        fd = np.stack([
            (mix.log_prob(x + h * e, process, t) - mix.log_prob(x - h * e, process, t)) / (2 * h)
            for e in np.eye(3)
        ], axis=-1)  # fmt: skip
        np.testing.assert_allclose(score, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), CondOTPath(), CosinePath()],
                         ids=lambda p: type(p).__name__)
def test_velocity_and_eps_are_conversions_of_the_score(process):
    with x64():
        mix = mixture_3d()
        x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 3)))
        t = jnp.linspace(0.1, 0.9, 6)
        score = mix.score(x, process, t)
        for kind in ("eps", "x0", "v", "velocity"):
            np.testing.assert_allclose(
                mix.predict(x, process, t, kind), convert(score, x, t, process, "score", kind),
                rtol=1e-8, atol=1e-8, err_msg=kind,
            )  # fmt: skip


def test_marginal_velocity_is_posterior_expectation_of_conditional_velocity():
    """Theorem 5 of seeds/001: u_t(x) = ∫ u_t(x|x1) p_t(x|x1) p(x1) dx1 / p_t(x), checked by
    self-normalised importance sampling over data samples x1 (independent of the oracle's algebra)."""
    with x64():
        mix, path = ring_mixture(4, radius=2.0, std=0.5), CondOTPath()
        x1 = mix.sample(jax.random.PRNGKey(0), 400_000)[0]
        t = 0.6
        c = path.coefficients(jnp.asarray(t))
        for x in (jnp.array([1.0, 0.3]), jnp.array([-0.4, -0.9])):
            logw = -0.5 * jnp.sum((x - c.alpha * x1) ** 2, -1) / c.sigma**2
            w = jnp.exp(logw - logw.max())
            w = w / w.sum()
            noise = (x - c.alpha * x1) / c.sigma
            u_cond = c.d_alpha * x1 + c.d_sigma * noise
            u_is = jnp.sum(w[:, None] * u_cond, 0)
            se = jnp.sqrt(jnp.sum(w[:, None] ** 2 * (u_cond - u_is) ** 2, 0))
            u_oracle = mix.velocity(x[None], path, t)[0]
            assert np.all(np.abs(u_oracle - u_is) < 4.5 * se + 1e-6), (u_oracle, u_is, se)


def test_posterior_means_are_exact_at_the_endpoints():
    """At the noise end of CondOT (α=0) E[x0|x] is the data mean; at the data end E[ε|x] = 0."""
    mix, path = mixture_3d(), CondOTPath()
    x = jnp.ones((2, 3))
    x0, _ = mix.posterior_x0_eps(x, path, 0.0)
    np.testing.assert_allclose(x0, jnp.broadcast_to(mix.mean(), (2, 3)), rtol=1e-5)
    _, eps = mix.posterior_x0_eps(x, path, 1.0)
    np.testing.assert_allclose(eps, 0.0, atol=1e-6)


def test_class_posterior_is_bayes_over_labelled_components():
    with x64():
        mix, sde = mixture_3d(), VPSDE()
        x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)))
        t = 0.3
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        dens = np.stack([w * multivariate_normal(a * m, a**2 * c + s**2 * np.eye(3)).pdf(x)
                         for w, m, c in zip(mix.weights, mix.means, mix.covs, strict=True)], -1)
        post = dens / dens.sum(-1, keepdims=True)
        expected = np.stack([post[:, 0], post[:, 1] + post[:, 2]], -1)
        np.testing.assert_allclose(mix.class_posterior(x, sde, t), expected, rtol=1e-8)
        # conditional score = unconditional score + ∇ log p(y|x)
        cond = mix.condition(1)
        grad_logp_y = jax.grad(lambda z: jnp.log(mix.class_posterior(z, sde, t)[:, 1]).sum())(x)
        np.testing.assert_allclose(cond.score(x, sde, t), mix.score(x, sde, t) + grad_logp_y,
                                   rtol=1e-7, atol=1e-9)


def test_samples_have_the_mixture_moments():
    mix = mixture_3d()
    n = 100_000
    x, y = mix.sample(jax.random.PRNGKey(5), n)
    cov = np.asarray(mix.covariance())
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(np.asarray(x.mean(0) - mix.mean())) < 4.5 * se)
    p1 = float(jnp.mean(y == 1))
    assert abs(p1 - 0.8) < 4.5 * np.sqrt(0.8 * 0.2 / n)


def test_invalid_mixtures_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture.create(np.zeros((2, 2)), weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture.create(np.zeros((1, 2)), covs=np.array([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixture.create(np.zeros(3))
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixture.create(np.zeros((2, 3)), covs=np.ones((2, 2)))
    g = gaussian(np.zeros(2), np.eye(2))
    assert g.means.shape == (1, 2)


def test_oracle_jits_and_vmaps():
    mix, sde = ring_mixture(), VPSDE()
    f = jax.jit(lambda m, x, t: m.score(x, sde, t))
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(f(mix, x, 0.5), mix.score(x, sde, 0.5), rtol=1e-5)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    xs = jax.vmap(lambda k: mix.sample(k, 5)[0])(keys)
    assert xs.shape == (3, 5, 2)


def test_exact_model_is_a_pytree_so_sampling_compiles_once_for_new_mixtures():
    """`mixture.model(process, prediction)` holds the mixture's arrays as leaves: sampling with a
    second mixture of the same shapes reuses the compiled sampler, and still uses the new arrays
    (its samples equal those of a plain function of that mixture, which compiles anew)."""
    process, key = VPSDE(), jax.random.PRNGKey(0)
    mix_a = ring_mixture(6, radius=4.0, std=0.5)
    mix_b = GaussianMixture.create(np.random.default_rng(0).normal(size=(6, 2)), 0.2)
    model_a, model_b = mix_a.model(process, "eps"), mix_b.model(process, "eps")
    assert isinstance(model_b, ExactModel) and model_b.prediction == "eps"
    leaves_a, tree_a = jax.tree.flatten(model_a)
    leaves_b, tree_b = jax.tree.flatten(model_b)
    assert tree_a == tree_b and all(isinstance(leaf, jax.Array) for leaf in leaves_a)

    def draw(model, **kw):
        return dj.sample("dpm_solver_pp", model, process, key, (64, 2), 6, **kw).samples

    draw(model_a)  # compiled here (or earlier in the session, for the same structure)
    before = _sample_compiled.compiled._cache_size()
    x_a, x_b = draw(model_a), draw(model_b)
    assert _sample_compiled.compiled._cache_size() == before  # no new compilation for mixture b
    plain_b = lambda x, t: mix_b.predict(x, process, t, "eps")  # noqa: E731  static: compiles anew
    x_plain = draw(plain_b, prediction="eps")
    assert _sample_compiled.compiled._cache_size() == before + 1  # the count sees a compilation
    np.testing.assert_allclose(x_b, x_plain, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(x_a - x_b))) > 0.1  # mixture b's arrays were used


def test_the_conditional_model_is_each_class_mixture_and_the_null_label_the_whole_one():
    """`conditional_model(process, prediction)(x, t, y)` equals `condition(y).predict` per example and
    the unconditional prediction at y = n_classes (∅), for mixed labels in one batch."""
    means = jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    mix = GaussianMixture.create(means, 0.3, labels=[0, 1, 1])
    process = VPSDE()
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.linspace(0.1, 0.9, 6)
    y = jnp.array([0, 1, 2, 0, 2, 1])
    got = mix.conditional_model(process, "x0")(x, t, y)
    for i in range(6):
        ref = (mix if int(y[i]) == 2 else mix.condition(int(y[i]))).predict(x[i : i + 1], process,
                                                                             t[i : i + 1], "x0")  # fmt: skip
        np.testing.assert_allclose(got[i], ref[0], rtol=1e-5, atol=1e-6)
