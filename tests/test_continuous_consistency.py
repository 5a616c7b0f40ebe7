"""Continuous-time consistency models (sCM; `diffjax.consistency.continuous_consistency_loss`),
checked against exact objects: the tangent of the oracle's exact consistency function vanishes at the
order of the oracle's own solve, the loss is sCM's formula written in TrigFlow's coordinates, its
gradient is the Δτ → 0 limit of consistency distillation, and training (no teacher) has the
distillation gradient on average."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order, mixture_2d
from test_consistency import _mlp as _network
from test_consistency import _mlp_params

import diffjax as dj
from diffjax.consistency import ConsistencyModel, continuous_consistency_loss, trig_time
from diffjax.losses import constant_time
from diffjax.preconditioning import edm_scalings

PROCESSES = {"condot": dj.CondOTPath, "vp": dj.VPSDE, "cosine": dj.CosinePath}


@pytest.mark.parametrize("name", ["condot", "vp"])
def test_tangent_of_the_exact_consistency_function_vanishes_at_the_oracles_order(name):
    """The exact f* = Φ_{t→t_data} is constant along every probability-flow trajectory, so its
    tangent df*/dt along the exact velocity is 0 and so is sCD's loss (r = 1, no normalisation:
    the loss value is mean_dims g²). The oracle's f* is an RK4 solve with n steps, whose tangent is
    its O(n⁻⁴) error: √loss falls at order 4 (fitted over n = 16…64, measured 3.77 / 3.85; ≥ 3.4
    allows the pre-asymptotic curvature). A model that is not consistent (f* + 0.01·sin(t)·x) keeps
    an O(10⁻²) tangent. Float64."""
    with x64():
        process, mix = PROCESSES[name](), mixture_2d()
        x0 = mix.sample(jax.random.key(0), 256)[0].astype(jnp.float64)
        teacher = mix.model(process, "velocity")

        def root_loss(f):
            return float(jnp.sqrt(continuous_consistency_loss(f, x0, jax.random.key(1), process=process,
                                                              teacher=teacher, tangent_c=None)))  # fmt: skip

        steps = [16, 32, 64]
        roots = [root_loss(mix.consistency_function(process, num_steps=n)) for n in steps]
        exact = mix.consistency_function(process, num_steps=64)
        inconsistent = root_loss(lambda x, t: exact(x, t) + 0.01 * jnp.sin(t)[:, None] * x)
    assert fitted_order(steps, roots) > 3.4, roots
    assert roots[-1] < 1e-4 * inconsistent, (roots, inconsistent)


def _scm_reference(params, process, x0, key, sd, r, teacher=None, noise_input="log_sigma"):
    """sCM's loss as the paper writes it, in TrigFlow's coordinates x_τ = x_t·σ_d/√(σ² + α²σ_d²):
    F_θ(x_τ, τ) = −network(x_τ/σ_d, c_noise(τ)) (so f = cos τ·x_τ − σ_d sin τ·F_θ), dF/dτ by jvp in
    (x_τ, τ) with tangents (dx_τ/dτ, 1), g = −c²(σ_d F⁻ − dx_τ/dτ) − r·c·s·(x_τ + σ_d dF⁻/dτ),
    ĝ = g/(rms(g) + 0.1), L = mean ‖F_θ − F⁻ − ĝ‖². Independent of the library's process-time form."""
    k_t, k_z = jax.random.split(key)
    n = x0.shape[0]
    t = jnp.full((n,), 0.37)  # the constant sampler of the library call
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    tau = trig_time(process, t, sd)
    c, s = jnp.cos(tau)[:, None], jnp.sin(tau)[:, None]
    x_tau = c * x0 + sd * s * z
    if teacher is None:
        v_tau = -s * x0 + sd * c * z
    else:  # the teacher's x̂0 at the same point in the process's coordinates
        co = process.coefficients(t)
        x_t = x_tau * (jnp.sqrt(co.sigma**2 + (sd * co.alpha) ** 2) / sd)[:, None]
        v_tau = (c * x_tau - teacher(x_t, t)) / s

    def F(p, x, tt):
        noise = tt if noise_input == "trig" else edm_scalings(jnp.cos(tt), sd * jnp.sin(tt), sd).noise
        return -_network(p, x / sd, noise)

    F_minus, dF = jax.jvp(lambda x, tt: F(params, x, tt), (x_tau, tau), (v_tau, jnp.ones_like(tau)))
    g = -(c**2) * (sd * F_minus - v_tau) - r * c * s * (x_tau + sd * dF)
    g = g / (jnp.sqrt(jnp.mean(g**2, axis=-1, keepdims=True)) + 0.1)

    def loss(p):
        return jnp.mean((F(p, x_tau, tau) - F_minus - g) ** 2)

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("r, distil, noise_input", [(0.3, False, "log_sigma"), (1.0, True, "log_sigma"),
                                                    (0.3, True, "trig"), (1.0, False, "trig")])  # fmt: skip
def test_loss_is_scms_formula_in_trigflow_coordinates(name, r, distil, noise_input):
    """A `ConsistencyModel` with σ̃(t_min) = 0 is TrigFlow's f = cos τ·x_τ − σ_d sin τ·F with
    F = −network; the library computes sCM's tangent in the process's own time (one jvp of f(x, t),
    dτ/dt, x̂0 for the warm-up term). Loss value and parameter gradient equal the paper's formula
    written independently in x_τ, τ (`_scm_reference`) to float64 rounding, with and without a
    teacher (the oracle's x̂0), at warm-up r = 0.3 and 1, with EDM's or TrigFlow's noise input, for
    CondOT, VP and the cosine path."""
    with x64():
        process, mix = PROCESSES[name](), mixture_2d()
        sd = 2.0
        x0 = mix.sample(jax.random.key(0), 64)[0].astype(jnp.float64)
        params = _mlp_params(jax.random.key(2), dtype=jnp.float64)
        teacher = mix.model(process, "x0") if distil else None
        key = jax.random.key(5)

        def library(p):
            model = ConsistencyModel(jax.tree_util.Partial(_network, p), process, sigma_data=sd, t_eps=0.0,
                                     noise_input=noise_input)  # fmt: skip
            return continuous_consistency_loss(model, x0, key, process=process, teacher=teacher, warmup=r,
                                               time_sampler=constant_time(0.37))  # fmt: skip

        value, grad = jax.value_and_grad(library)(params)
        ref_value, ref_grad = _scm_reference(params, process, x0, key, sd, r, teacher, noise_input)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-10)
    for k in params:
        np.testing.assert_allclose(np.asarray(grad[k]), np.asarray(ref_grad[k]), rtol=1e-8, atol=1e-12)


def _perturbed(exact, theta):
    """f_θ = f* + θ·φ: the exact consistency function moved along φ(x, t) = sin(3t)·tanh(x)."""
    return lambda x, t: exact(x, t) + theta * jnp.sin(3.0 * t)[:, None] * jnp.tanh(x)


def test_gradient_is_the_limit_of_consistency_distillation():
    """Consistency distillation between τ and τ − Δ (the exact map Φ as the teacher step, target
    h_θ⁻ = sg) has the per-example gradient d/dθ mean_dims‖h_θ(x_τ) − h_θ⁻(Φ(x_τ))‖² =
    2·mean_dims(∂_θh·(Δ·dh/dτ − ½Δ²·d²h/dτ² + …)); the continuous loss's gradient is
    2/(σ_d sin τ)·mean_dims(∂_θh·cos τ·dh/dτ). So G(Δ) = (discrete gradient)/Δ·cos τ/(σ_d sin τ)
    → the continuous one at order 1 in Δ, and the Richardson combination 2G(Δ/2) − G(Δ) at order 2:
    at θ = 0.2 on f_θ = f* + θ·φ, CondOT, per example at three times, the relative errors fall at
    fitted orders 1 ± 0.15 and 2 ± 0.3 over Δ = 0.04…0.005 (a wrong factor or sign in the tangent
    leaves an O(1) error that does not fall). Float64."""
    with x64():
        process, mix = dj.CondOTPath(), mixture_2d()
        sd, theta0 = 1.5, 0.2
        x0 = mix.sample(jax.random.key(0), 32)[0].astype(jnp.float64)
        exact, teacher = mix.consistency_function(process, num_steps=64), mix.model(process, "velocity")
        flow_map = mix.flow_map(process, num_steps=64)
        key, deltas = jax.random.key(7), (0.04, 0.02, 0.01, 0.005)
        for t0 in (0.3, 0.55, 0.8):
            def continuous(theta, t0=t0):
                return continuous_consistency_loss(_perturbed(exact, theta), x0, key, process=process,
                                                   sigma_data=sd, teacher=teacher, tangent_c=None,
                                                   time_sampler=constant_time(t0), reduce=False)  # fmt: skip

            g_cont = jax.jacfwd(continuous)(theta0)
            t = jnp.full((32,), t0)
            x_t = process.sample_marginal(jax.random.split(key)[1], x0, t).x_t  # the loss's own draw
            tau = trig_time(process, t, sd)
            g_disc = []
            for delta in deltas:
                t_prev = process.time_at_log_snr(-2.0 * jnp.log(sd * jnp.tan(tau - delta)))
                target = _perturbed(exact, theta0)(flow_map(x_t, t, t_prev), t_prev)

                def discrete(theta, t=t, x_t=x_t, target=target):
                    return jnp.mean((_perturbed(exact, theta)(x_t, t) - target) ** 2, axis=-1)

                g_disc.append(jax.jacfwd(discrete)(theta0) / delta * jnp.cos(tau) / (sd * jnp.sin(tau)))

            def rel(g, g_cont=g_cont):
                return float(jnp.linalg.norm(g - g_cont) / jnp.linalg.norm(g_cont))

            first = [rel(g) for g in g_disc]
            richardson = [rel(2 * b - a) for a, b in zip(g_disc, g_disc[1:], strict=False)]
            inverse = [1 / d for d in deltas]
            assert abs(fitted_order(inverse, first) - 1.0) < 0.15, (t0, first)
            assert abs(fitted_order(inverse[1:], richardson) - 2.0) < 0.3, (t0, richardson)


def test_training_has_the_distillation_gradient_on_average():
    """Without a teacher the tangent uses the conditional velocity α̇x0 + σ̇z and x̂0 = x0; g is
    affine in both, and E[(α̇x0 + σ̇z, x0) | x_t] = (v, E[x0 | x_t]), so per example the training
    gradient minus the distillation gradient (exact teacher, the same draws of t, x0, z) has mean 0:
    within 4 standard errors over 4096 examples, at warm-up r = 1 and 0.5 (no normalisation, which is
    nonlinear). The difference is not small per example (its spread is ≥ 10× the bound): the test
    would see a biased tangent."""
    with x64():
        process, mix = dj.CondOTPath(), mixture_2d()
        x0 = mix.sample(jax.random.key(0), 4096)[0].astype(jnp.float64)
        exact, teacher = mix.consistency_function(process, num_steps=32), mix.model(process, "velocity")
        for r in (1.0, 0.5):
            def per_example(theta, teach, r=r):
                return continuous_consistency_loss(_perturbed(exact, theta), x0, jax.random.key(3),
                                                   process=process, teacher=teach, warmup=r, tangent_c=None,
                                                   reduce=False)  # fmt: skip

            diff = np.asarray(jax.jacfwd(per_example)(0.2, None) - jax.jacfwd(per_example)(0.2, teacher))
            se = diff.std(ddof=1) / np.sqrt(diff.size)
            assert abs(diff.mean()) < 4 * se, (r, diff.mean(), se)
            assert diff.std() > 10 * 4 * se, (r, diff.std(), se)


def test_a_label_bound_model_keeps_its_sigma_data_and_boundary():
    """The training step hands the loss `BoundLabels(ConsistencyModel(...))`: σ_d (TrigFlow's scale and
    the default time law) and t_min are read through the binding, so the loss equals the one of the
    bare model (σ_d = 2, VP with t_eps = 0.01: neither is the default)."""
    from diffjax.losses import BoundLabels

    process, mix = dj.VPSDE(), mixture_2d()
    x0 = mix.sample(jax.random.key(0), 64)[0]
    params = _mlp_params(jax.random.key(2))
    net = jax.tree_util.Partial(lambda p, x, c, labels=None: _network(p, x, c), params)
    model = ConsistencyModel(net, process, sigma_data=2.0, t_eps=0.01)
    bare = continuous_consistency_loss(model, x0, jax.random.key(4), process=process)
    bound = continuous_consistency_loss(BoundLabels(model, None), x0, jax.random.key(4), process=process)
    default = continuous_consistency_loss(model, x0, jax.random.key(4), process=process, sigma_data=0.5)
    np.testing.assert_allclose(float(bound), float(bare), rtol=1e-6)
    assert abs(float(default) - float(bare)) > 1e-3 * float(bare)  # σ_d matters: the test can fail


def test_bad_inputs_raise_before_any_evaluation():
    """Each bad argument is refused with a message naming it, before the model is called."""
    process, mix = dj.CondOTPath(), mixture_2d()
    x0 = mix.sample(jax.random.key(0), 8)[0]
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    bad = [
        (dict(warmup=1.5), "warmup"),
        (dict(tangent_c=0.0), "tangent_c"),
        (dict(sigma_data=0.0), "sigma_data"),
    ]
    for kwargs, word in bad:
        with pytest.raises(ValueError, match=word):
            continuous_consistency_loss(model, x0, jax.random.key(0), process=process, **kwargs)
    with pytest.raises(ValueError, match="discrete"):
        continuous_consistency_loss(model, x0, jax.random.key(0), process=dj.DDPMChain.linear(100))
    with pytest.raises(ValueError, match="floating"):
        continuous_consistency_loss(model, jnp.ones((8, 2), jnp.int32), jax.random.key(0), process=process)
    assert not calls


def _velocity_network(params):
    """An ordinary (untrained) velocity network v(x, t) in plain JAX."""
    return jax.tree_util.Partial(lambda p, x, t: _network(p, x, t), params)


@pytest.mark.parametrize("name", ["condot", "vp", "cosine"])
def test_ddim_consistency_model_is_trigflows_parameterisation_of_a_velocity_network(name):
    """`DDIMConsistencyModel` of a velocity network v is sCM's f = cos τ·x_τ − σ_d sin τ·F with F the
    TrigFlow velocity (dx_τ/dτ)/σ_d of the same network, computed here independently: along the flow
    x_τ = k(t)·x_t with k = σ_d/√(σ² + α²σ_d²), so dx_τ/dt = k'·x_t + k·v (k' by autodiff) and
    dx_τ/dτ = (dx_τ/dt)/(dτ/dt). The identity holds for any network (random weights; σ_d = 0.7, t_eps =
    0 so σ(t_min) = 0, float64); f(x, t_min) = x bit for bit; a network of another prediction type
    (the same function converted to ε) gives the same f."""
    with x64():
        process, sd = PROCESSES[name](), 0.7
        net = _velocity_network(_mlp_params(jax.random.key(3), dtype=jnp.float64))
        model = dj.DDIMConsistencyModel(net, process, "velocity", sigma_data=sd, t_eps=0.0)
        x = jax.random.normal(jax.random.key(4), (64, 2), jnp.float64)
        u = jax.random.uniform(jax.random.key(5), (64,), jnp.float64, 0.05, 0.95)
        t = process.t_data + u * (process.t_noise - process.t_data)

        def k(tt):
            c = process.coefficients(tt)
            return sd / jnp.sqrt(c.sigma**2 + (sd * c.alpha) ** 2)

        kt, dk = jax.vmap(jax.value_and_grad(k))(t)
        dtau_dt = jax.vmap(jax.grad(lambda tt: trig_time(process, tt, sd)))(t)
        x_tau, tau = kt[:, None] * x, trig_time(process, t, sd)
        big_f = (dk[:, None] * x + kt[:, None] * net(x, t)) / dtau_dt[:, None] / sd
        trigflow = jnp.cos(tau)[:, None] * x_tau - sd * jnp.sin(tau)[:, None] * big_f
        np.testing.assert_allclose(np.asarray(model(x, t)), np.asarray(trigflow), rtol=1e-10, atol=1e-10)
        eps_net = dj.as_prediction(net, process, "velocity", "eps")
        as_eps = dj.DDIMConsistencyModel(eps_net, process, "eps", sigma_data=sd, t_eps=0.0)
        np.testing.assert_allclose(np.asarray(as_eps(x, t)), np.asarray(trigflow), rtol=1e-9, atol=1e-9)
        assert np.array_equal(np.asarray(model(x, model.t_min)), np.asarray(x))


def test_ddim_consistency_model_boundary_with_sigma_min_above_zero():
    """On VP with t_eps = 1e-3 (σ(t_min) > 0) f = α_min x̂0 + σ_min ε̂ keeps both terms: f(x, t_min) = x
    bit for bit, and next to it f moves off x at the rate of the DDIM jump (|f − x| = O(t − t_min))."""
    process = dj.VPSDE()
    net = _velocity_network(_mlp_params(jax.random.key(3)))
    model = dj.DDIMConsistencyModel(net, process, "velocity", t_eps=1e-3)
    x = jax.random.normal(jax.random.key(4), (32, 2))
    assert np.array_equal(np.asarray(model(x, model.t_min)), np.asarray(x))
    gaps = [float(jnp.max(jnp.abs(model(x, model.t_min + d) - x))) for d in (1e-2, 1e-3)]
    assert 5.0 < gaps[0] / gaps[1] < 20.0, gaps  # first order in t − t_min


def test_ddim_consistency_start_is_stationary_for_the_warm_up_and_moves_with_the_tangent():
    """sCM starts the student at the teacher's weights: read through `DDIMConsistencyModel` the
    teacher's network is its own one-step jump, h = x̂0, so sCD's warm-up end (r = 0: g ∝ h − x̂0) has
    zero gradient there, while the consistency tangent (r = 1) moves it (the test can fail)."""
    process, mix = dj.CondOTPath(), mixture_2d()
    x0 = mix.sample(jax.random.key(0), 256)[0]
    params = _mlp_params(jax.random.key(2))
    teacher = _velocity_network(params)

    def grad_norm(r):
        def loss(p):
            student = dj.DDIMConsistencyModel(_velocity_network(p), process, "velocity", sigma_data=0.5)
            return continuous_consistency_loss(student, x0, jax.random.key(1), process=process,
                                               teacher=teacher, prediction="velocity", warmup=r)  # fmt: skip

        g = jax.grad(loss)(params)
        return float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(g))))

    at_start, tangent = grad_norm(0.0), grad_norm(1.0)
    assert tangent > 1e-3, tangent
    assert at_start <= 1e-6 * tangent, (at_start, tangent)


def test_ddim_consistency_model_of_an_x0_network_has_finite_gradients_at_the_boundary_under_jit():
    """On a flow (σ(t_min) = 0) an x0-network's ε̂ = (x − αx̂0)/σ is not finite at t_min; f = x̂0 there
    never forms it — also under jit, where σ(t_min) must still be known to be 0 — so the gradient of a
    batch that holds t_min is finite, compiled as eagerly."""
    process = dj.CondOTPath()
    params = _mlp_params(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (8, 2))
    t = jnp.full((8,), process.data_end(0.0)).at[4:].set(0.5)

    def loss(p):
        model = dj.DDIMConsistencyModel(jax.tree_util.Partial(lambda q, x, t: _network(q, x, t), p), process,
                                        "x0", t_eps=0.0)  # fmt: skip
        return jnp.sum(model(x, t) ** 2)

    for grad in (jax.grad(loss), jax.jit(jax.grad(loss))):
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad(params)))


def test_ddim_consistency_model_refuses_bad_arguments():
    net = _velocity_network(_mlp_params(jax.random.key(3)))
    with pytest.raises(ValueError, match="prediction"):
        dj.DDIMConsistencyModel(net, dj.CondOTPath(), "noise")
    with pytest.raises(ValueError, match="sigma_data"):
        dj.DDIMConsistencyModel(net, dj.CondOTPath(), "velocity", sigma_data=0.0)
    with pytest.raises(ValueError, match="t_eps"):
        dj.DDIMConsistencyModel(net, dj.CondOTPath(), "velocity", t_eps=2.0)
    model = dj.DDIMConsistencyModel(jax.tree_util.Partial(lambda x, t: x[:, :1]), dj.CondOTPath())
    with pytest.raises(ValueError, match="shape"):
        model(jnp.ones((4, 2)), 0.5)
