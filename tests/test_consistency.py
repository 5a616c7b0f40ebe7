"""Consistency models (diffjax.consistency): the boundary condition and the α, σ form of the
parameterisation, the distillation and training losses of the EXACT consistency function (their
convergence orders), the stop-gradient of the target branch, the curriculum, and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order, mixture_2d

import diffjax as dj
from diffjax.consistency import (
    ConsistencyModel,
    consistency_distillation_loss,
    consistency_training_loss,
    ict_noise_levels,
    ict_num_levels,
)

PROCESSES = {"vp": dj.VPSDE, "ve": dj.VESDE, "condot": dj.CondOTPath}


def _mlp_params(key, dim=2, width=32, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (dim, width), dtype) / np.sqrt(dim),
        "wt": jax.random.normal(k2, (width,), dtype),
        "b1": jnp.zeros((width,), dtype),
        "w2": jax.random.normal(k3, (width, dim), dtype) / np.sqrt(width),
    }


def _mlp(params, x, c_noise):
    """A raw network F(x_in, c_noise) (plain JAX)."""
    h = jnp.tanh(x @ params["w1"] + c_noise[:, None] * params["wt"] + params["b1"])
    return h @ params["w2"]


def _model(process, seed=0, dtype=jnp.float32, **kw):
    return ConsistencyModel(jax.tree_util.Partial(_mlp, _mlp_params(jax.random.key(seed), dtype=dtype)),
                            process, **kw)  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_boundary_condition_exact_and_song_scalings(name):
    """f(x, t_min) = x bit for bit (VE's t_min = 1e-3 has σ̃_min > 0: the shifted c_skip, c_out); in
    the interior f equals Song et al.'s formulas written naively in x̃ = x/α, σ̃ = σ/α (float64); at
    the noise end (α = 0 for CondOT) f and its parameter gradient are finite."""
    process = PROCESSES[name]()
    model = _model(process)
    call = jax.jit(lambda m, x, t: m(x, t))
    x = 3.0 * jax.random.normal(jax.random.key(1), (64, 2))
    assert np.array_equal(np.asarray(call(model, x, jnp.full((64,), model.t_min))), np.asarray(x))
    with x64():
        m64 = _model(process, dtype=jnp.float64)
        x64_ = np.asarray(x, np.float64)
        t = np.linspace(*process.t_range, 66)[1:-1]  # interior times, per example
        coef = jax.jit(lambda t: jnp.stack([process.alpha(t), process.sigma(t)]))
        (a, s), (a_min, s_min) = np.asarray(coef(t))[:, :, None], np.asarray(coef(m64.t_min))
        sd, st, st_min = 0.5, s / a, s_min / a_min  # naively, in x̃ = x/α and σ̃ = σ/α (numpy)
        c_skip = sd**2 / ((st - st_min) ** 2 + sd**2)
        c_out = sd * (st - st_min) / np.sqrt(st**2 + sd**2)
        c_in = 1.0 / np.sqrt(st**2 + sd**2)
        c_noise = np.log(st) / 4.0  # EDM's ¼ ln σ̃
        w = {k: np.asarray(v) for k, v in m64.network.args[0].items()}
        raw = np.tanh((c_in * x64_ / a) @ w["w1"] + c_noise * w["wt"] + w["b1"]) @ w["w2"]
        naive = a_min * (c_skip * x64_ / a + c_out * raw)
        np.testing.assert_allclose(np.asarray(call(m64, x64_, t)), naive, rtol=1e-10, atol=1e-12)
    t_noise = jnp.full((64,), process.t_noise)
    assert np.all(np.isfinite(np.asarray(call(model, x, t_noise))))
    grads = jax.jit(jax.grad(lambda m: jnp.sum(m(x, t_noise) ** 2)))(model)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def _exact_setup(n_examples):
    process, mix = dj.CondOTPath(), mixture_2d()
    x0 = mix.sample(jax.random.key(3), n_examples)[0]
    return process, mix, x0


@pytest.mark.parametrize("solver, order", [(dj.Euler(), 1), (dj.Midpoint(), 2)])
def test_distillation_loss_of_exact_function_has_solver_order(solver, order):
    """With the exact consistency function f* as the model, f*(x_{t_{n+1}}, t_{n+1}) =
    f*(Φ_{t_{n+1}→t_n}(x), t_n), so the CD loss is ‖∇f*·(one-step error)‖²: a step of order p has
    local error O(h^{p+1}), the l2 loss O(h^{2p+2}) = O(N^{−(2p+2)}) on N uniform steps of CondOT
    (Euler 4, midpoint 6). The times ⌊uN⌋ and the noise are common to every N, so the fitted slope
    has little Monte Carlo error; ±0.3 covers the pre-asymptotic curvature of N = 32…128 (measured
    3.97 and 5.88; N = 16…128 gives 3.96 and 5.78). Eager calls: the exact map's RK4 scan compiles
    once for all grids (a jitted loss would compile anew per grid length)."""
    with x64():
        process, mix, x0 = _exact_setup(1024)
        f_exact, teacher = mix.consistency_function(process), mix.model(process, "velocity")
        steps = [32, 64, 128]
        losses = [float(consistency_distillation_loss(
            f_exact, x0, jax.random.key(4), teacher=teacher, solver=solver, process=process,
            ts=jnp.linspace(1.0, 0.0, n + 1))) for n in steps]  # fmt: skip
    measured = fitted_order(steps, losses)
    assert abs(measured - (2 * order + 2)) < 0.3, (losses, measured)


def test_training_loss_of_exact_function_matches_closed_form_and_vanishes_as_one_over_levels():
    """iCT's two points share z but lie on different trajectories, so even the exact f* has a loss.
    For Gaussian data N(m, s²I), f*(x̃, σ̃) = m + s(x̃ − m)/r(σ̃), r = √(s² + σ̃²), in x̃ = x0 + σ̃z: with
    the l2 distance E‖e_i‖² = D s²[s²(1/r_{i+1} − 1/r_i)² + (σ_{i+1}/r_{i+1} − σ_i/r_i)²], and the loss
    is Σ_i p_i E‖e_i‖²/(σ_{i+1} − σ_i) = O(Δσ) = O(1/(N − 1)) (e = ∂_σ̃[f*(x0 + σ̃z, σ̃)]·Δσ: order 1
    in N). The Monte Carlo loss of the oracle's f* (RK4) matches the closed form within 4 standard
    errors at every N, and both fall at order 1 ± 0.1 (measured: closed form 1.0x, Monte Carlo 1.0x).
    (For the multimodal ring the mean falls slower — trajectories that switch basins between σ_i and
    σ_{i+1} contribute ~(mode gap)²/Δσ with probability ∝ Δσ, an O(1) floor until Δσ is below the
    basin boundary's width; see the report.)"""
    mean, s = jnp.array([1.0, -2.0]), 0.5
    levels = [21, 41, 81, 161]
    with x64():
        process, gauss = dj.CondOTPath(), dj.gaussian(mean, s**2 * jnp.eye(2))
        x0 = gauss.sample(jax.random.key(3), 1024)[0]
        f_exact = gauss.consistency_function(process)
        run = jax.jit(lambda n: (  # one compile: N traced, bounded by max_levels
            consistency_training_loss(f_exact, x0, jax.random.key(5), process=process, num_levels=n,
                                      max_levels=161, distance="l2", reduce=False),
            ict_noise_levels(process, n, 1.0, max_levels=161)))  # fmt: skip
        mc, se, exact = [], [], []
        for n in levels:
            per, lv = run(n)
            per = np.asarray(per)
            mc.append(per.mean())
            se.append(per.std() / np.sqrt(per.size))
            sig, probs = np.asarray(lv.sigmas)[:n], np.asarray(lv.probs)[: n - 1]
            r = np.sqrt(s**2 + sig**2)
            e2 = 2 * s**2 * (s**2 * np.diff(1 / r) ** 2 + np.diff(sig / r) ** 2)
            exact.append(float(np.sum(probs * e2 / np.diff(sig))))
    z = (np.array(mc) - np.array(exact)) / np.array(se)
    assert np.all(np.abs(z) < 4), (mc, exact, z)
    steps = [n - 1 for n in levels]
    assert abs(fitted_order(steps, exact) - 1.0) < 0.1, exact
    assert abs(fitted_order(steps, mc) - 1.0) < 0.1, mc


def _grad_setup():
    process, mix = dj.CondOTPath(), mixture_2d()
    x0 = mix.sample(jax.random.key(0), 64)[0]
    cd = dict(teacher=mix.model(process, "velocity"), solver=dj.Heun(), process=process,
              ts=jnp.linspace(1.0, 0.0, 9))  # fmt: skip
    losses = {
        "cd": lambda m, key, **kw: consistency_distillation_loss(m, x0, key, **cd, **kw),
        "ict": lambda m, key, **kw: consistency_training_loss(m, x0, key, process=process, num_levels=11,
                                                              **kw),
    }
    return process, losses


@pytest.mark.parametrize("kind", ["cd", "ict"])
def test_gradient_flows_only_through_the_online_branch(kind):
    """jax.grad of the loss in an explicit target model is exactly zero; with the default target
    (the model itself, θ⁻ = sg(θ)) the gradient equals that of the same loss with a separate, equal
    copy as target (so no gradient enters through the target branch), and it is not zero."""
    process, losses = _grad_setup()
    loss, key = losses[kind], jax.random.key(7)
    model, other = _model(process, seed=0), _model(process, seed=1)

    @jax.jit
    def grads(model, other, copy):
        return (jax.grad(lambda tm: loss(model, key, target_model=tm))(other),
                jax.grad(lambda m: loss(m, key))(model),
                jax.grad(lambda m: loss(m, key, target_model=copy))(model))  # fmt: skip

    g_target, g_default, g_copy = grads(model, other, jax.tree.map(jnp.copy, model))
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_target))
    for a, b in zip(jax.tree.leaves(g_default), jax.tree.leaves(g_copy), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(g_default))  # grid reaches α = 0
    assert sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(g_default)) > 0


def test_ict_curriculum_and_levels():
    """N(k) = min(10·2^⌊k/K'⌋, 1280) + 1 with K' = ⌊K/8⌋; the levels start at the model's boundary
    (σ̃ = 0 at CondOT's data end, then the ρ-grid from 0.002 to 80) and their probabilities sum to 1."""
    total = 8000
    assert [ict_num_levels(k, total) for k in (0, 999, 1000, 2000, 6999, 7000, 7999, 10**6)] == \
        [11, 11, 21, 41, 641, 1281, 1281, 1281]  # fmt: skip
    assert len({ict_num_levels(k, total) for k in range(total)}) == 8
    # traced (the train step's counter inside jit): the same values, int32, no overflow far past the end
    steps = np.array([0, 999, 1000, 2000, 6999, 7000, 7999, 10**6, 2**31 - 1], np.int32)
    traced = jax.jit(jax.vmap(lambda k: ict_num_levels(k, total)))(steps)
    assert traced.dtype == jnp.int32
    assert traced.tolist() == [ict_num_levels(int(k), total) for k in steps]
    with pytest.raises(ValueError, match="integer scalar"):
        ict_num_levels(jnp.float32(3.0), total)
    process = dj.CondOTPath()
    lv = ict_noise_levels(process, 11, 1.0)
    sig, times = np.asarray(lv.sigmas), np.asarray(lv.times)
    ramp = (0.002 ** (1 / 7) + np.arange(11) / 10 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert sig[0] == 0.0  # the first ρ-level (0.002) moves to the boundary σ̃(t_min) = 0
    np.testing.assert_allclose(sig[1:], ramp[1:], rtol=1e-5)
    np.testing.assert_allclose(((1 - times) / times)[1:], sig[1:], rtol=1e-4)  # CondOT: σ̃ = (1 − t)/t
    assert float(lv.times[0]) == 1.0 and abs(float(lv.probs.sum()) - 1.0) < 1e-6


def test_bad_inputs_raise_before_any_evaluation():
    """Grids that do not run strictly from the boundary to the noise end, unknown distances, too few
    levels, a sigma_max beyond the process's noise end and adaptive teachers are ValueErrors raised
    before the model or the teacher is called."""
    process, mix = dj.CondOTPath(), mixture_2d()
    x0 = mix.sample(jax.random.key(0), 8)[0]
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    model.t_min = 1.0
    teacher = mix.model(process, "velocity")
    key = jax.random.key(0)
    kw = dict(teacher=teacher, solver=dj.Euler(), process=process)
    bad = {
        "increasing t on CondOT (noise → data)": dict(ts=jnp.linspace(0.0, 1.0, 5)),
        "not monotone": dict(ts=jnp.array([1.0, 0.5, 0.7, 0.0])),
        "ts[0] is not t_min": dict(ts=jnp.linspace(0.9, 0.0, 5)),
        "unknown distance": dict(ts=jnp.linspace(1.0, 0.0, 5), distance="l1"),
        "adaptive solver": dict(ts=jnp.linspace(1.0, 0.0, 5), solver=dj.Adaptive()),
    }
    for what, extra in bad.items():
        with pytest.raises(ValueError):
            consistency_distillation_loss(model, x0, key, **{**kw, **extra})
        assert not calls, what
    for extra in (dict(num_levels=1), dict(num_levels=11, distance="huber"),
                  dict(num_levels=11, huber_c=-1.0), dict(num_levels=12, max_levels=11)):
        with pytest.raises(ValueError):
            consistency_training_loss(model, x0, key, process=process, **extra)
    ve = dj.VESDE(sigma_max=50.0)
    with pytest.raises(ValueError, match="sigma_max"):
        consistency_training_loss(_model(ve), x0, key, process=ve, num_levels=11, sigma_max=80.0)
    assert not calls
    with pytest.raises(ValueError, match="sigma_data"):
        ConsistencyModel(model, process, sigma_data=0.0)
