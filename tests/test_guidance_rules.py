"""Modern guidance rules (diffjax.guidance) against exact identities of the Gaussian-mixture oracle.

Data: `experiments.guidance_table.ring_2d` (8 components on a circle of radius 3, std 0.8, 4 classes of
two opposite components: neighbours belong to different classes and overlap, exact conditional samples
are classified correctly with probability ≈ 0.78, so guidance changes them). Models: the exact
labelled oracle (`GaussianMixture.conditional_model`, y = 4 is ∅). Float32 throughout: two routes to
the same samples must agree to float32 rounding propagated through the sampler (observed ≤ 4e-6 on
samples up to 5 in size; the bound 1e-3 is 250× that and 1000× below the real differences these tests
also check: APG with η = 0 against CFG, or CFG++ at λ = 1 against conditional DDIM, differ by ≈ 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.flow import ProbabilityFlow
from diffjax.guidance import (
    apg,
    autoguidance,
    bind_labels,
    cfg_model,
    cfgpp_equivalent_scales,
    cfgpp_sample,
    guidance_interval,
)
from diffjax.processes import VPSDE, CondOTPath
from experiments import guidance_table
from experiments.guidance_table import ring_2d

N, STEPS, NULL = 128, 12, 4
TOL = 1e-3
VP = VPSDE()


def setup(process=VP, prediction="eps", n=N):
    mix = ring_2d()
    model = mix.conditional_model(process, prediction)
    y = jnp.arange(n) % 4
    x_init = process.prior_sample(jax.random.key(0), (n, 2))
    return mix, model, y, x_init


def draw(model, process=VP, x_init=None, prediction="eps", solver="dpm_solver_pp", steps=STEPS):
    return dj.sample(solver, model, process, jax.random.key(1), num_steps=steps, prediction=prediction,
                     grid="logsnr", x_init=x_init).samples  # fmt: skip


def close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)


def test_cfg_at_scale_one_and_empty_interval_sample_the_conditional():
    """Same noise, same samples: CFG with w = 1, and CFG (w = 3) restricted to an empty interval
    (1, 1], both give the conditional model's samples; so does autoguidance at w = 1."""
    _, model, y, x0 = setup()
    cond = draw(bind_labels(model, y), x_init=x0)
    close(draw(cfg_model(model, y, 1.0, NULL), x_init=x0), cond)
    close(draw(guidance_interval(cfg_model(model, y, 3.0, NULL), VP, 1.0, 1.0), x_init=x0), cond)
    bad = bind_labels(ring_2d(1.5).conditional_model(VP), y)
    close(draw(autoguidance(bind_labels(model, y), bad, 1.0), x_init=x0), cond)
    guided = draw(cfg_model(model, y, 3.0, NULL), x_init=x0)
    assert np.abs(np.asarray(guided - cond)).max() > 100 * TOL  # the identities are not vacuous


def test_full_interval_and_unit_apg_and_autoguidance_against_unconditional_equal_cfg():
    """(0, ∞] contains every noise level: the intervalled rule is the rule; APG with η = 1, r = ∞ is
    CFG; autoguidance with D_bad = the unconditional model is CFG (one formula)."""
    _, model, y, x0 = setup()
    cfg = cfg_model(model, y, 3.0, NULL)
    ref = draw(cfg, x_init=x0)
    unit_apg = apg(cfg, VP, eta=1.0, norm_threshold=np.inf, prediction="eps")
    close(draw(unit_apg, x_init=x0), ref)
    close(draw(guidance_interval(cfg, VP, 0.0, np.inf), x_init=x0), ref)
    close(draw(guidance_interval(unit_apg, VP, 0.0, np.inf), x_init=x0), ref)  # stacked
    auto = autoguidance(bind_labels(model, y), bind_labels(model, NULL), 3.0)
    close(draw(auto, x_init=x0), ref)
    projected = draw(apg(cfg, VP, eta=0.0, prediction="eps"), x_init=x0)
    assert np.abs(np.asarray(projected - ref)).max() > 100 * TOL  # η = 0 does change the samples


@pytest.mark.parametrize("process, prediction", [(VP, "eps"), (VP, "x0"), (CondOTPath(), "velocity")])
def test_apg_identity_and_interval_hold_for_any_prediction_including_the_ends(process, prediction):
    """At the model level on noisy points, with t including α = 0 (flow noise end) and σ = 0 (flow
    data end): APG(η = 1, r = ∞) = CFG, and APG outside the interval is the conditional model.
    (An 'eps' model has no finite x̂0 at α = 0, so the flow uses 'velocity' or 'x0'.)"""
    _, model, y, _ = setup(process, prediction, n=64)
    lo, hi = process.t_range
    inner = jax.random.uniform(jax.random.key(3), (62,), minval=lo, maxval=hi)
    t = jnp.concatenate([jnp.array([lo, hi]), inner])
    x = 3.0 * jax.random.normal(jax.random.key(4), (64, 2))
    cfg = cfg_model(model, y, 2.5, NULL)
    unit = apg(cfg, process, 1.0, np.inf, prediction)
    projected = apg(cfg, process, 0.0, 1.0, prediction)
    inside = guidance_interval(projected, process, 0.5, 2.0)
    rules = (cfg, unit, inside, bind_labels(model, y), projected)
    ref, out, got, cond, want = map(np.asarray, jax.jit(lambda x, t: [f(x, t) for f in rules])(x, t))
    assert np.all(np.isfinite(out))
    close(out, ref, tol=1e-4 * (1 + np.abs(ref).max()))
    c = process.coefficients(t)
    level = np.asarray(jnp.where(c.alpha > 0, c.sigma / jnp.where(c.alpha > 0, c.alpha, 1), jnp.inf))
    active = (level > 0.5) & (level <= 2.0)
    assert 0 < active.sum() < active.size
    np.testing.assert_array_equal(np.asarray(inside.active(t)), active)
    np.testing.assert_array_equal(got[~active], cond[~active])
    np.testing.assert_array_equal(got[active], want[active])


def test_cfgpp_at_zero_is_unconditional_ddim_and_any_lambda_is_ddim_cfg_with_grid_scales():
    """CFG++ (x' = α' x̂0_λ + σ' ε̂_∅) at λ = 0 is unconditional DDIM. At any λ it is DDIM-CFG with the
    per-step scales w_k = λ/(1 − e^{−h_k}) (h_k the step in half log-SNR) and x̂0 at w = λ at the end
    — so at λ = 1 it is NOT conditional sampling (w_k > 1 on every step): checked both ways."""
    _, model, y, x0 = setup()
    cfg = cfg_model(model, y, 1.0, NULL)
    uncond = draw(bind_labels(model, NULL), x_init=x0, solver="ddim")
    close(cfgpp_sample(cfg, VP, jax.random.key(1), None, STEPS, 0.0, prediction="eps", grid="logsnr",
                       x_init=x0), uncond)  # fmt: skip
    lam = 0.7
    ts = dj.make_grid(VP, STEPS, "logsnr")
    scales = cfgpp_equivalent_scales(VP, ts, lam)
    assert np.all(np.asarray(scales) > lam)

    @jax.jit
    def ddim_cfg(x):
        def step(x, inputs):
            t, t_next, w = inputs
            x0_hat, eps = ProbabilityFlow(cfg_model(model, y, w, NULL), VP, "eps").denoise(x, t)
            return VP.alpha(t_next) * x0_hat + VP.sigma(t_next) * eps, None

        x = jax.lax.scan(step, x, (ts[:-1], ts[1:], scales))[0]
        return ProbabilityFlow(cfg_model(model, y, lam, NULL), VP, "eps").denoise(x, ts[-1])[0]

    got = cfgpp_sample(cfg, VP, jax.random.key(1), None, STEPS, lam, prediction="eps", grid="logsnr",
                       x_init=x0)  # fmt: skip
    close(got, ddim_cfg(x0))
    unit = cfgpp_sample(cfg, VP, jax.random.key(1), None, STEPS, 1.0, prediction="eps", grid="logsnr",
                        x_init=x0)  # fmt: skip
    cond_ddim = draw(bind_labels(model, y), x_init=x0, solver="ddim")
    assert np.abs(np.asarray(unit - cond_ddim)).max() > 100 * TOL  # "λ = 1 is conditional" is false


def _apg_momentum_reference(mix, y, x_init, w, eta, r, beta, ts, interval=(0.0, np.inf)):
    """Sadat et al.'s Alg. 1 written out on DDIM (VP, float64 numpy): per step Δ = x̂0_c − x̂0_u,
    Δ̄ ← Δ + β·Δ̄ (inside the interval only), clip to r, project on x̂0_c, x̂0 = x̂0_c + (w − 1)(Δ⊥ + ηΔ∥),
    x ← α' x̂0 + σ' (x − α x̂0)/σ; then x̂0 at the last time with one more momentum update."""
    net = mix.conditional_model(VP, "x0")
    x = np.asarray(x_init, np.float64)
    avg = np.zeros_like(x)
    ts = np.asarray(ts, np.float64)

    def guided_x0(x, t, avg):
        tb = jnp.full((x.shape[0],), t, jnp.float32)
        xc = np.asarray(net(jnp.asarray(x, jnp.float32), tb, y), np.float64)
        xu = np.asarray(net(jnp.asarray(x, jnp.float32), tb, jnp.full_like(y, NULL)), np.float64)
        a, s = float(VP.alpha(t)), float(VP.sigma(t))
        if not interval[0] < s / a <= interval[1]:
            return xc, avg
        d = (xc - xu) + beta * avg
        avg = d
        d = d * np.minimum(1.0, r / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30))
        par = (np.sum(d * xc, 1, keepdims=True) / np.sum(xc * xc, 1, keepdims=True)) * xc
        return xc + (w - 1.0) * (d - par + eta * par), avg

    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x0, avg = guided_x0(x, t, avg)
        a, s, a2, s2 = (float(f(u)) for f, u in ((VP.alpha, t), (VP.sigma, t), (VP.alpha, t_next),
                                                (VP.sigma, t_next)))  # fmt: skip
        x = a2 * x0 + s2 * (x - a * x0) / s
    return guided_x0(x, ts[-1], avg)[0]


@pytest.mark.parametrize("interval", [(0.0, np.inf), (0.3, 3.0)])
def test_apg_momentum_matches_the_papers_algorithm_step_by_step(interval):
    """APG with momentum β = −0.5 (state carried by `dj.sample` from step to step, and into the final
    x̂0) equals a hand-written DDIM loop of Sadat et al.'s Alg. 1 — the momentum buffer frozen outside a
    guidance interval — and differs from APG without momentum by far more than the tolerance."""
    mix, model, y, x0 = setup()
    w, eta, r, beta, steps = 4.0, 0.0, 2.0, -0.5, 10
    cfg = cfg_model(mix.conditional_model(VP, "x0"), y, w, NULL)
    rule = apg(cfg, VP, eta, r, "x0", momentum=beta)
    if interval != (0.0, np.inf):
        rule = guidance_interval(rule, VP, *interval)
    got = dj.sample("ddim", rule, VP, jax.random.key(1), num_steps=steps, x_init=x0)
    ts = dj.make_grid(VP, steps, "uniform")
    ref = _apg_momentum_reference(mix, y, x0, w, eta, r, beta, ts, interval)
    close(got.samples, ref)
    assert got.nfe == steps + 1
    plain = apg(cfg, VP, eta, r, "x0")
    if interval != (0.0, np.inf):
        plain = guidance_interval(plain, VP, *interval)
    no_momentum = dj.sample("ddim", plain, VP, jax.random.key(1), num_steps=steps, x_init=x0).samples
    assert np.abs(np.asarray(no_momentum) - ref).max() > 100 * TOL


@pytest.mark.parametrize(
    "solver", ["dpm_solver_pp", "unipc", "deis", "ddim", "euler", "ancestral", "sa_solver"]
)
def test_a_stateful_model_leaves_every_one_evaluation_solver_unchanged(solver):
    """`dj.sample` threads a model's state through any solver of one evaluation per step: a model
    that only counts its calls in that state gives bit-identical samples to the stateless model on
    multistep solvers too (their history is kept), and counts exactly `nfe` calls."""
    mix, model, y, x0 = setup(n=16)
    plain = bind_labels(model, y)

    @jax.tree_util.register_pytree_node_class
    class Counting:
        stateful, prediction = True, "eps"

        def init_state(self, x):
            return jnp.zeros((), jnp.int32)

        def call_with_state(self, x, t, state):
            return plain(x, t), state + 1

        def tree_flatten(self):
            return (), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls()

    kw = dict(num_steps=6, x_init=x0, t_eps=1e-3)
    ref = dj.sample(solver, plain, VP, jax.random.key(2), prediction="eps", **kw)
    solver_obj = dj.make_solver(solver)
    term = dj.flow.ProbabilityFlow(Counting(), VP, "eps")
    ts = dj.make_grid(VP, 6, "uniform", 1e-3)
    calls = dj.solvers.integrate(dj.flow.ThreadModelState(solver_obj), term, x0, ts, jax.random.split(
        jax.random.key(2))[1]).carry[1]  # fmt: skip
    got = dj.sample(solver, Counting(), VP, jax.random.key(2), **kw)
    np.testing.assert_array_equal(np.asarray(got.samples), np.asarray(ref.samples))
    assert got.nfe == ref.nfe and int(calls) == ref.nfe - 1  # + the final denoising step


def test_stateful_guidance_is_refused_where_it_cannot_be_threaded():
    mix, model, y, x0 = setup(n=8)
    rule = apg(cfg_model(model, y, 3.0, NULL), VP, momentum=-0.5)
    with pytest.raises(ValueError, match="not a plain model"):
        rule(x0, jnp.full((8,), 0.5))
    for solver in ("heun", "edm", "tsit5"):
        with pytest.raises(ValueError, match="one model evaluation per step"):
            dj.sample(solver, rule, VP, jax.random.key(0), (8, 2), 4, t_eps=1e-3)
    with pytest.raises(ValueError, match="momentum"):
        apg(cfg_model(model, y, 3.0, NULL), VP, momentum=1.0)
    with pytest.raises(ValueError, match="not a plain model"):  # the likelihood ODE has no state
        dj.log_likelihood(rule, VP, x0, prediction="eps")


def test_guided_models_compile_once_across_scales_labels_and_bounds():
    """Stacked rules are pytrees whose scales, labels, η, r and interval bounds are leaves: sampling
    with new values reuses the compiled sampler (the network is traced once per rule structure; APG's
    momentum β is static, its running average rides in the sampler's carry)."""
    mix = ring_2d()
    traces, after_first = [], None

    def net(x, t, y):
        traces.append(1)
        return mix.conditional_model(VP)(x, t, y)

    for w, first, lo, eta in [(2.0, 0, 0.3, 0.0), (3.0, 1, 0.5, 0.5), (5.0, 2, 0.1, 1.0)]:
        y = (jnp.arange(16) + first) % 4
        cfg = cfg_model(net, y, w, NULL)
        rule = guidance_interval(apg(cfg, VP, eta, 2.0 * w, "eps"), VP, lo, 3.0)
        x = dj.sample("dpm_solver_pp", rule, VP, jax.random.key(first), (16, 2), 4, prediction="eps").samples
        auto = autoguidance(bind_labels(net, y), bind_labels(net, NULL), w)
        x2 = dj.sample("dpm_solver_pp", auto, VP, jax.random.key(0), (16, 2), 4, prediction="eps").samples
        x3 = cfgpp_sample(cfg, VP, jax.random.key(0), (16, 2), 4, lam=1 / w, prediction="eps")
        momentum = guidance_interval(apg(cfg, VP, eta, 2.0 * w, "eps", momentum=-0.5), VP, lo, 3.0)
        x4 = dj.sample("unipc", momentum, VP, jax.random.key(0), (16, 2), 4, prediction="eps").samples
        assert np.all(np.isfinite(np.asarray(jnp.stack([x, x2, x3, x4]))))
        after_first = after_first or len(traces)
    assert len(traces) == after_first  # the later scales, labels and bounds traced nothing


def test_cfg_raises_the_exact_class_accuracy_monotonically_in_w():
    """On overlapping classes E[p(y | x)] of CFG samples grows with w ∈ {1, 1.5, 2, 3}: paired z-test
    (same noise for every w) of each consecutive increase, z > 3."""
    mix, model, y, x0 = setup(n=512)
    post = []
    for w in (1.0, 1.5, 2.0, 3.0):
        x = draw(cfg_model(model, y, w, NULL), x_init=x0)
        post.append(np.asarray(jnp.take_along_axis(mix.class_posterior(x), y[:, None], 1)[:, 0]))
    for lo, hi in zip(post[:-1], post[1:], strict=False):
        d = hi - lo
        z = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))
        assert z > 3.0, (lo.mean(), hi.mean(), z)


def test_bad_arguments_raise_clear_errors():
    _, model, y, _ = setup(n=8)
    cfg = cfg_model(model, y, 2.0, NULL)
    with pytest.raises(ValueError, match="sigma_lo <= sigma_hi"):
        guidance_interval(cfg, VP, 2.0, 1.0)
    with pytest.raises(ValueError, match="norm_threshold"):
        apg(cfg, VP, 0.0, 0.0, "eps")
    with pytest.raises(ValueError, match="declare"):
        apg(cfg_model(lambda x, t, y: model(x, t, y), y, 2.0, NULL), VP)
    with pytest.raises(ValueError, match="outermost"):
        apg(guidance_interval(cfg, VP, 0.1, 1.0), VP, prediction="eps")
    with pytest.raises(ValueError, match="lam"):
        cfgpp_sample(cfg, VP, jax.random.key(0), (8, 2), 4, 1.5, prediction="eps")


def test_table_quick_mode_prints_a_table(capsys):
    assert guidance_table.main(["--quick", "--problems", "2D ring"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| 2D ring")]
    assert {r.split("|")[2].strip() for r in rows} == {"cond", "CFG", "CFG+interval", "autoguidance",
                                                         "APG", "APG+momentum", "CFG++"}  # fmt: skip
    assert "nan" not in out
