"""Conversions between ε / x0 / score / v / velocity are exact and round-trip."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.parameterization import (
    PREDICTIONS,
    as_prediction,
    clip_denoised,
    convert,
    from_x0_eps,
    to_x0_eps,
)
from diffjax.processes import VESDE, VPSDE, CondOTPath, CosinePath, DDPMChain, SubVPSDE

PROCESSES = [VPSDE(), SubVPSDE(), VESDE(), CondOTPath(), CosinePath()]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("source, target", list(itertools.permutations(PREDICTIONS, 2)))
def test_conversions_round_trip_to_float_precision(process, source, target):
    with x64():
        k1, k2 = jax.random.split(jax.random.PRNGKey(3))
        x0, eps = jax.random.normal(k1, (6, 3)), jax.random.normal(k2, (6, 3))
        t = jnp.linspace(0.1, 0.9, 6)
        x = process.sample_marginal(k2, x0, t).x_t  # any x works; use a realistic one
        c = process.coefficients(t)
        pred = from_x0_eps(x0, eps, source, x, c)
        there = convert(pred, x, t, process, source, target)
        back = convert(there, x, t, process, target, source)
        np.testing.assert_allclose(back, pred, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_conversions_recover_the_true_pair_from_a_consistent_x(process):
    """With x = αx0 + σε exactly, every kind maps back to the same (x0, ε)."""
    with x64():
        k1, k2 = jax.random.split(jax.random.PRNGKey(4))
        x0, eps = jax.random.normal(k1, (5, 2)), jax.random.normal(k2, (5, 2))
        t = jnp.linspace(0.2, 0.8, 5)
        c = process.coefficients(t)
        x = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
        for kind in PREDICTIONS:
            got_x0, got_eps = to_x0_eps(from_x0_eps(x0, eps, kind, x, c), kind, x, c)
            np.testing.assert_allclose(got_x0, x0, rtol=1e-9, atol=1e-9, err_msg=kind)
            np.testing.assert_allclose(got_eps, eps, rtol=1e-9, atol=1e-9, err_msg=kind)


def test_known_formulas():
    """Spot checks against the textbook forms: score = −ε/σ, v = αε − σx0, VP velocity = PF drift."""
    sde = VPSDE()
    t = jnp.array([0.3, 0.7])
    x0, eps = jnp.ones((2, 1)), -jnp.ones((2, 1))
    c = sde.coefficients(t)
    x = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
    np.testing.assert_allclose(from_x0_eps(x0, eps, "score", x, c), 1 / c.sigma[:, None], rtol=1e-6)
    np.testing.assert_allclose(
        from_x0_eps(x0, eps, "v", x, c), (-c.alpha - c.sigma)[:, None], rtol=1e-6
    )
    # velocity = f x − ½ g² score, the probability-flow drift (conditional on x0 here)
    score = -eps / c.sigma[:, None]
    pf = sde.drift(x, t) - 0.5 * sde.diffusion_squared(t)[:, None] * score
    np.testing.assert_allclose(from_x0_eps(x0, eps, "velocity", x, c), pf, rtol=1e-5)


def test_ddpm_chain_conversions_without_velocity():
    """The chain converts between ε, x0, score and v; 'velocity' needs dα/dt, dσ/dt, which the chain
    does not have: a clear error either way (not a NaN)."""
    chain = DDPMChain.linear(100)
    t = jnp.array([1, 50, 100])
    x0, eps = jnp.ones((3, 2)), jnp.full((3, 2), 0.5)
    x = chain.sample_marginal(jax.random.PRNGKey(0), x0, t).x_t
    pred = convert(eps, x, t, chain, "eps", "score")
    np.testing.assert_allclose(convert(pred, x, t, chain, "score", "eps"), eps, rtol=1e-5)
    for source, target in (("eps", "velocity"), ("velocity", "x0"), ("v", "velocity")):
        with pytest.raises(ValueError, match="time derivatives"):
            convert(eps, x, t, chain, source, target)
    with pytest.raises(ValueError, match="time derivatives"):
        as_prediction(lambda x, t: x, chain, "eps", "velocity")(x, t)


def test_clip_denoised_on_the_ddpm_chain():
    """The discrete chain (integer t) as sampled by DDIM / DPM-Solver++ / ancestral: ε of a model whose
    x̂0 overshoots is replaced by the ε of the clipped x̂0."""
    chain = DDPMChain.linear(100)
    t = jnp.array([1, 50, 100])
    x = jnp.array([[0.3, -2.0], [1.5, 0.0], [-0.7, 0.9]])
    model = jax.tree_util.Partial(lambda scale, x, t: scale * x, -3.0)
    c = chain.coefficients(t)
    x0_raw, _ = to_x0_eps(model(x, t), "eps", x, c)
    eps = clip_denoised(model, chain, "eps")(x, t)
    x0, eps2 = to_x0_eps(eps, "eps", x, c)
    np.testing.assert_allclose(x0, jnp.clip(x0_raw, -1, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(eps2, eps)
    assert float(jnp.max(jnp.abs(x0_raw))) > 1  # the clip was active


def test_as_prediction_wraps_a_model_and_unknown_kinds_raise():
    sde = VPSDE()
    eps_model = lambda x, t: 0.5 * x  # noqa: E731
    score_model = as_prediction(eps_model, sde, "eps", "score")
    x, t = jnp.ones((2, 3)), jnp.array([0.4, 0.6])
    np.testing.assert_allclose(score_model(x, t), -0.5 * x / sde.sigma(t)[:, None], rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown prediction type 'noise'"):
        convert(x, x, t, sde, "noise", "eps")


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_clip_denoised_projects_x0_and_keeps_x_consistent(process, kind):
    """x̂0 becomes clip(x̂0, −1, 1), ε is re-derived so that x = αx̂0 + σε still holds, and wide bounds
    leave the model unchanged."""
    with x64():
        k1, k2 = jax.random.split(jax.random.PRNGKey(5))
        x = 2.0 * jax.random.normal(k1, (6, 4))
        t = jnp.linspace(0.15, 0.85, 6)
        w = jax.random.normal(k2, (4, 4))

        def model(x, t):  # an arbitrary smooth model whose x̂0 leaves [−1, 1]
            return jnp.tanh(x @ w) * 3.0 + t[:, None]

        c = process.coefficients(t)
        x0_raw, _ = to_x0_eps(model(x, t), kind, x, c)
        clipped = clip_denoised(model, process, kind)
        x0, eps = to_x0_eps(clipped(x, t), kind, x, c)
        np.testing.assert_allclose(x0, jnp.clip(x0_raw, -1, 1), rtol=1e-9, atol=1e-9)
        a, s = c.alpha[:, None], c.sigma[:, None]
        np.testing.assert_allclose(a * x0 + s * eps, x, rtol=1e-9, atol=1e-9)
        assert float(jnp.mean(jnp.abs(x0_raw) > 1)) > 0.1  # the clip was active
        wide = clip_denoised(model, process, kind, low=-1e6, high=1e6)
        np.testing.assert_allclose(wide(x, t), model(x, t), rtol=1e-8, atol=1e-8)


def test_clip_denoised_at_the_noise_free_end_and_compiles_once():
    path = CondOTPath()  # σ = 0 at the data end t = 1: x̂0 = x/α is kept, no 0/0
    model = jax.tree_util.Partial(lambda p, x, t: p * x, 2.0)
    x = jnp.array([[0.5, -3.0]])
    out = clip_denoised(model, path, "velocity")(x, jnp.ones(1))
    assert bool(jnp.all(jnp.isfinite(out)))
    # new parameters, the same pytree structure: a jitted sampler reuses its compiled code
    a = clip_denoised(jax.tree_util.Partial(lambda p, x, t: p * x, 2.0), path, "eps")
    b = clip_denoised(jax.tree_util.Partial(a.model.func, 3.0), path, "eps")
    assert a.prediction == b.prediction == "eps"  # the clipped model declares its prediction
    assert jax.tree.structure(a) == jax.tree.structure(b)
    traces = []

    @jax.jit
    def run(fn, x):
        traces.append(1)
        return fn(x, jnp.full(x.shape[:1], 0.5))

    run(a, x), run(b, x)
    assert len(traces) == 1
    with pytest.raises(ValueError):
        clip_denoised(model, path, "logits")
