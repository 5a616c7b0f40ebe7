"""Losses: Bayes-optimal value at the oracle, minimality, weightings, composability."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax.losses import (
    cfm_loss,
    conditional_loss,
    constant_time,
    denoising_loss,
    dsm_loss,
    irreducible_loss_gaussian,
    logit_normal_time,
    uniform_time,
)
from diffjax.oracle import gaussian, ring_mixture
from diffjax.processes import VESDE, VPSDE, CondOTPath, CosinePath

N = 40_000


def _z(per_example, expected):
    per_example = np.asarray(per_example)
    return (per_example.mean() - expected) / (per_example.std() / np.sqrt(per_example.size))


@pytest.mark.parametrize("process, t", [(VPSDE(), 0.3), (VESDE(sigma_max=5.0), 0.5)],
                         ids=["VP", "VE"])
def test_dsm_at_oracle_equals_analytic_irreducible_value(process, t):
    """For N(μ, s²I) data, E‖ε_θ* − ε‖²/D = α²s²/(α²s² + σ²) at fixed t (ε-weighting)."""
    s = 0.7
    data = gaussian(jnp.array([1.0, -2.0, 0.5]), s**2)
    x0 = data.sample(jax.random.PRNGKey(0), N)[0]
    per_ex = dsm_loss(data.model(process, "eps"), x0, jax.random.PRNGKey(1), process=process,
                      time_sampler=constant_time(t), reduce=False)
    expected = float(irreducible_loss_gaussian(process, jnp.asarray(t), s, "eps"))
    assert abs(_z(per_ex, expected)) < 4.5


@pytest.mark.parametrize("path", [CondOTPath(), CosinePath()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("target", ["velocity", "x0", "v"])
def test_cfm_at_oracle_equals_analytic_irreducible_value(path, target):
    s = 1.3
    data = gaussian(jnp.zeros(2), s**2)
    x1 = data.sample(jax.random.PRNGKey(2), N)[0]
    per_ex = cfm_loss(data.model(path, "velocity"), x1, jax.random.PRNGKey(3), process=path,
                      target=target, time_sampler=constant_time(0.4), reduce=False)
    expected = float(irreducible_loss_gaussian(path, jnp.asarray(0.4), s, target))
    assert abs(_z(per_ex, expected)) < 4.5


@pytest.mark.parametrize("loss, kw", [(dsm_loss, {"process": VPSDE()}),
                                      (dsm_loss, {"process": VPSDE(), "weighting": "likelihood"}),
                                      (cfm_loss, {"process": CondOTPath()})])
def test_the_oracle_is_the_minimiser(loss, kw):
    """The loss is quadratic in the model output, so for a direction δ(x, t)
    L(f* + δ) − L(f*) = q + c with q = E[w‖δ‖²] > 0 and a cross term c = 2E[w⟨δ, f* − target⟩]
    that vanishes iff f* is the minimiser (first-order condition). From the paired differences
    D1 = L(f*+δ) − L(f*) and D2 = L(f*+2δ) − L(f*): q = (D2 − 2D1)/2, c = D1 − q.
    We check c = 0 within 4.5 standard errors and q > 0, on a 6-component mixture."""
    mix = ring_mixture(6, radius=3.0, std=0.4)
    process = kw["process"]
    x0 = mix.sample(jax.random.PRNGKey(4), 20_000)[0]
    exact = mix.model(process, "eps" if loss is dsm_loss else "velocity")
    key = jax.random.PRNGKey(5)
    base = loss(exact, x0, key, reduce=False, **kw)
    for delta in (lambda x, t: 0.1 * x, lambda x, t: 0.1 * jnp.ones_like(x)):
        d1 = loss(lambda x, t, d=delta: exact(x, t) + d(x, t), x0, key, reduce=False, **kw) - base
        d2 = loss(lambda x, t, d=delta: exact(x, t) + 2 * d(x, t), x0, key, reduce=False, **kw) - base
        q = np.asarray((d2 - 2 * d1) / 2)
        c = np.asarray(d1) - q
        assert np.all(q > -1e-4 * np.abs(np.asarray(base)).max()) and q.mean() > 0
        assert abs(c.mean()) < 4.5 * c.std() / np.sqrt(c.size), (c.mean(), c.std())
        # the same check fails at a model that is not the minimiser: at f* + δ the cross term is
        # c' = c + 2q = (D2 − D1) − q, whose mean 2E[q] is many standard errors from zero
        c_wrong = np.asarray(d2 - d1) - q
        assert abs(c_wrong.mean()) > 4.5 * c_wrong.std() / np.sqrt(c_wrong.size)


def test_weightings_and_prediction_kinds_are_consistent():
    sde, mix = VPSDE(), ring_mixture()
    x0 = mix.sample(jax.random.PRNGKey(6), 512)[0]
    key, t = jax.random.PRNGKey(7), 0.37
    common = dict(process=sde, time_sampler=constant_time(t), reduce=False)
    model = lambda x, t_: 0.3 * x  # noqa: E731 — an arbitrary (wrong) ε model
    eps_w = dsm_loss(model, x0, key, **common)
    lik_w = dsm_loss(model, x0, key, weighting="likelihood", **common)
    uni_w = dsm_loss(model, x0, key, weighting="uniform", **common)
    sig2 = float(sde.sigma(t)) ** 2
    np.testing.assert_allclose(lik_w, eps_w * float(sde.beta(t)) / sig2, rtol=1e-5)
    np.testing.assert_allclose(uni_w, eps_w / sig2, rtol=1e-5)
    # the same model declared as an x0-predictor gives the same ε-loss after conversion
    x0_model = lambda x, t_: (x - sde.sigma(t_)[:, None] * 0.3 * x) / sde.alpha(t_)[:, None]  # noqa: E731
    np.testing.assert_allclose(dsm_loss(x0_model, x0, key, prediction="x0", **common), eps_w,
                               rtol=1e-4)


def test_time_samplers_cover_the_right_range():
    key = jax.random.PRNGKey(8)
    t = uniform_time(VPSDE(), 1e-3)(key, 10_000)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    t = uniform_time(CondOTPath(), 1e-2)(key, 10_000)
    assert float(t.max()) <= 0.99  # the data end of a flow path is t = 1
    t = logit_normal_time(CondOTPath())(key, 10_000)
    assert abs(float(jnp.median(t)) - 0.5) < 0.02
    with pytest.raises(ValueError, match=r"t_eps must be a float in \[0, 1.0\)"):
        uniform_time(CondOTPath(), 1.5)
    with pytest.raises(ValueError, match="Unknown weighting"):
        dsm_loss(lambda x, t: x, jnp.ones((2, 2)), key, process=VPSDE(), weighting="snr")


def test_losses_jit_grad_vmap_without_retracing():
    """A loss bound to a tiny linear model composes with jit, grad and vmap in a few lines."""
    sde, path = VPSDE(), CondOTPath()
    x0 = ring_mixture().sample(jax.random.PRNGKey(9), 256)[0]

    def apply(params, x, t):
        return x @ params["w"] + t[:, None] * params["b"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_and_grad(params, x, key):
        def total(p):
            model = lambda x_, t_: apply(p, x_, t_)  # noqa: E731
            return (dsm_loss(model, x, key, process=sde) +
                    cfm_loss(model, x, key, process=path) +
                    denoising_loss(model, x, key, process=sde, prediction="eps", target="x0"))
        return jax.value_and_grad(total)(params)

    params = {"w": jnp.eye(2) * 0.1, "b": jnp.ones(2)}
    for i in range(3):
        value, grads = loss_and_grad(params, x0, jax.random.PRNGKey(i))
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    per_key = jax.vmap(lambda k: dsm_loss(lambda x, t: apply(params, x, t), x0, k, process=sde))(
        keys
    )
    assert per_key.shape == (4,)


# -- one weighting for every target ------------------------------------------------------------
class _Declared:
    """An arbitrary (wrong) model declaring its prediction, u(x, t) = 0.3·x + 0.2·t + 0.1."""

    def __init__(self, prediction):
        self.prediction = prediction

    def __call__(self, x, t):
        return 0.3 * x + 0.2 * t[:, None] + 0.1


WEIGHTINGS = ["eps", "likelihood", "uniform", lambda t: 1.0 + t**2]


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=["eps", "likelihood", "uniform", "callable"])
@pytest.mark.parametrize("process", [VPSDE(), CondOTPath()], ids=lambda p: type(p).__name__)
def test_every_target_expresses_the_same_weighted_score_loss(process, weighting):
    """‖target_θ − target‖² = c_target²σ²‖s_θ − ∇log p(x_t|x0)‖², so with the score-matching weight
    λ(t) converted into each target's space, the velocity, x0 and v regressions of one model equal
    its ε-regression per example (same key: same t and ε), up to float64 rounding; and cfm_loss
    with weighting 'eps' is dsm_loss (default weighting 'eps') at the same key."""
    with x64():
        model = _Declared("velocity")
        x0 = ring_mixture(4, radius=2.0).sample(jax.random.PRNGKey(10), 256)[0]
        key = jax.random.PRNGKey(11)
        common = dict(process=process, weighting=weighting, reduce=False)
        ref = np.asarray(denoising_loss(model, x0, key, target="eps", **common))
        assert np.all(np.isfinite(ref)) and ref.std() > 0.1 * ref.mean()  # t varies per example
        for target in ("velocity", "x0", "v"):
            got = cfm_loss(model, x0, key, target=target, **common)
            np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=target)
        if weighting == "eps":
            np.testing.assert_allclose(cfm_loss(model, x0, key, process=process, weighting="eps"),
                                       dsm_loss(model, x0, key, process=process), rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("process", [VPSDE(), CondOTPath()], ids=lambda p: type(p).__name__)
def test_cfm_without_weighting_is_the_plain_velocity_regression(process):
    """weighting='none' (cfm_loss's default) is mean‖u_θ(x_t, t) − (α̇ x0 + σ̇ ε)‖² over the draws
    of the loss: t from split(key)[0] by uniform_time(process), ε from split(key)[1]."""
    with x64():
        model = _Declared("velocity")
        x0 = ring_mixture(4, radius=2.0).sample(jax.random.PRNGKey(12), 256)[0]
        key = jax.random.PRNGKey(13)
        k_t, k_eps = jax.random.split(key)
        t = uniform_time(process)(k_t, x0.shape[0])
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        a, s, da, ds = (v[:, None] for v in process.coefficients(t))
        plain = jnp.mean((model(a * x0 + s * eps, t) - (da * x0 + ds * eps)) ** 2, axis=-1)
        np.testing.assert_allclose(cfm_loss(model, x0, key, process=process, reduce=False), plain,
                                   rtol=1e-12)  # fmt: skip
        np.testing.assert_allclose(cfm_loss(model, x0, key, process=process, weighting="none"),
                                   plain.mean(), rtol=1e-12)  # fmt: skip
        # and a weighting changes it: the test can fail
        weighted = cfm_loss(model, x0, key, process=process, weighting="uniform")
        assert abs(float(weighted) / float(plain.mean()) - 1) > 0.01


# -- input checks ------------------------------------------------------------------------------
LOSSES = [functools.partial(dsm_loss, process=VPSDE()), functools.partial(cfm_loss, process=CondOTPath()),
          functools.partial(denoising_loss, process=VPSDE(), prediction="x0", target="v")]  # fmt: skip


@pytest.mark.parametrize("loss", LOSSES, ids=["dsm", "cfm", "denoising"])
def test_a_model_of_the_wrong_output_shape_is_rejected_at_trace_time(loss):
    """The model's output shape is checked while tracing: jax.eval_shape (no computation at all)
    raises, naming the model's shape and the data's."""
    x0 = jnp.ones((8, 2))
    wrong = lambda x, t: x[:, :1]  # noqa: E731  (B, 1) for (B, 2)
    msg = re.escape("returned shape (8, 1) for x of shape (8, 2)")
    with pytest.raises(ValueError, match=msg):
        jax.eval_shape(lambda x: loss(wrong, x, jax.random.PRNGKey(0)), x0)
    with pytest.raises(ValueError, match=msg):
        loss(wrong, x0, jax.random.PRNGKey(0))
    assert jax.eval_shape(lambda x: loss(lambda x_, t: x_, x, jax.random.PRNGKey(0)), x0).shape == ()


@pytest.mark.parametrize("loss", LOSSES, ids=["dsm", "cfm", "denoising"])
def test_integer_data_and_empty_batches_are_rejected(loss):
    model, key = (lambda x, t: x), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="floating point, got int32"):
        loss(model, jnp.ones((8, 2), jnp.int32), key)
    with pytest.raises(ValueError, match=re.escape("non-empty batch (batch, *event), got (0, 2)")):
        loss(model, jnp.ones((0, 2)), key)
    with pytest.raises(ValueError, match="non-empty batch"):
        loss(model, jnp.ones(()), key)


# -- class conditioning ------------------------------------------------------------------------
def _labels_as_output(x, t, y):
    """A conditional 'model' whose output is its label, so a loss returning the model's output shows
    which labels reached the network."""
    return jnp.broadcast_to(y[:, None].astype(x.dtype), x.shape)


def _model_output(model, x0, key):
    return model(x0, jnp.zeros(x0.shape[:1]))


def test_conditional_loss_without_dropout_is_the_loss_of_the_bound_model():
    """p_uncond = 0: the loss of model(·, ·, y) with the labels bound (the loss's draws use
    split(key)[0]); model_kwargs reach the model."""
    with x64():
        sde, mix = VPSDE(), ring_mixture(4)
        x0, y = mix.sample(jax.random.PRNGKey(14), 512)
        key = jax.random.PRNGKey(15)

        def model(x, t, labels, scale=1.0):
            return scale * (0.2 * x + 0.1 * labels[:, None] + 0.05 * t[:, None])

        loss = functools.partial(dsm_loss, process=sde)
        got = conditional_loss(loss, model, x0, y, key, scale=0.5)
        bound = loss(lambda x, t: model(x, t, y, scale=0.5), x0, jax.random.split(key)[0])
        np.testing.assert_allclose(got, bound, rtol=1e-12)
        other = loss(lambda x, t: model(x, t, (y + 1) % 4, scale=0.5), x0, jax.random.split(key)[0])
        assert abs(float(other) - float(got)) > 1e-3 * float(got)  # the labels matter
        out = conditional_loss(_model_output, _labels_as_output, x0, y, key)
        np.testing.assert_array_equal(out[:, 0], y)  # every label kept


def test_conditional_loss_with_full_dropout_sees_only_the_null_label():
    x0, y = ring_mixture(4).sample(jax.random.PRNGKey(16), 1000)
    null = 4
    out = conditional_loss(_model_output, _labels_as_output, x0, y, jax.random.PRNGKey(17),
                           p_uncond=1.0, null_label=null)  # fmt: skip
    np.testing.assert_array_equal(out, null)
    part = conditional_loss(_model_output, _labels_as_output, x0, y, jax.random.PRNGKey(17),
                            p_uncond=0.3, null_label=null)[:, 0]  # fmt: skip
    dropped = np.asarray(part == null)
    np.testing.assert_array_equal(np.asarray(part)[~dropped], np.asarray(y)[~dropped])
    assert abs(dropped.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 1000)  # 5 binomial standard errors
    with pytest.raises(ValueError, match="null_label"):
        conditional_loss(_model_output, _labels_as_output, x0, y, jax.random.PRNGKey(17), p_uncond=0.1)
