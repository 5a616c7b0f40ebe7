"""Deterministic solvers (`diffjax.solvers`) and the sampling driver (`dj.sample`, `dj.integrate`):
exact answers on Gaussian data, convergence orders, mixture sampling with the exact model, declared
vs counted model evaluations, pytree states, and compile-once / vmap / sharding behaviour."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import (
    CHUNKS,
    LOGP_TOL,
    N_SAMPLES,
    SW_THRESHOLD,
    EvalCounter,
    fitted_order,
    gaussian_flow_map,
    log_prob_gap,
    mixture_2d,
    mixture_16d,
    sw_ratio,
)

import diffjax as dj
from diffjax.flow import finite_at_data
from diffjax.oracle import GaussianMixture, gaussian
from diffjax.processes import VPSDE, CondOTPath, DDPMChain
from diffjax.solvers import ODE

PROCESSES = {
    "VPSDE": (VPSDE(), "eps"), "CondOT": (CondOTPath(), "velocity"), "CondOT-x0": (CondOTPath(), "x0"),
}  # fmt: skip


def test_sample_rejects_unknown_solvers_and_odes_on_the_ddpm_chain():
    chain = DDPMChain.linear(1000)
    model = gaussian(jnp.zeros(2), jnp.eye(2)).model(VPSDE(), "eps")
    with pytest.raises(ValueError, match="Unknown sampler"):
        dj.sample("rk45", model, VPSDE(), jax.random.PRNGKey(0), (4, 2), 5)
    with pytest.raises(ValueError, match="DDPMChain"):
        dj.sample("euler", model, chain, jax.random.PRNGKey(0), (4, 2), 5)
    with pytest.raises(ValueError, match="t_eps > 0"):
        dj.sample("tsit5", model, VPSDE(), jax.random.PRNGKey(0), (4, 2), t_eps=0.0)
    x0_model = gaussian(jnp.zeros(2), jnp.eye(2)).model(CondOTPath(), "x0")  # divides by σ = 0 at t_data
    with pytest.raises(ValueError, match="'x0' model divides by σ"):
        dj.sample("tsit5", x0_model, CondOTPath(), jax.random.PRNGKey(0), (4, 2))


# -- convergence orders on Gaussian data -------------------------------------------------------
ODE_SOLVERS = [
    dj.Euler(),
    dj.DDIM(),
    dj.Heun(),
    dj.Midpoint(),
    dj.EDM(),
    dj.DPMSolverPP(order=2),
    dj.DPMSolverPP(order=3),
    dj.RK4(),
]
# Only bounded below: on Gaussian data along CondOT the midpoint rule's leading error term cancels
# (measured order ≈ 3.0 on the log-SNR grid; 2.0 on VP); DPM-Solver++ 3M on both processes (see the
# test's docstring).
SUPERCONVERGENT = {("Midpoint()", "CondOTPath"), ("DPMSolverPP(order=3)", "VPSDE"),
                   ("DPMSolverPP(order=3)", "CondOTPath")}  # fmt: skip


@pytest.mark.parametrize(
    "process,prediction,t_eps",
    [(VPSDE(), "eps", 1e-3), (CondOTPath(), "velocity", 0.0)],
    ids=["VPSDE", "CondOT"],
)
def test_ode_solvers_converge_at_their_order_on_gaussian_data(process, prediction, t_eps):
    """Data N(μ, s²I): the probability-flow map from t_noise to t_end is affine and known
    (`gaussian_flow_map`). The RMS endpoint error over 256 prior draws, at 16–128 log-SNR-uniform
    steps (float64, so round-off is ~1e-12 below every error), falls with the declared `order` of
    each solver within ±0.3 — RK4 included (measured 3.93 on VP, 4.22 on CondOT, where its last step
    to t_data is its second-order midpoint stage). Third-order DPM-Solver++ 3M is only bounded below:
    on Gaussian data its error falls faster (≈ 4; the third derivative of x̂0 in log-SNR vanishes to
    leading order)."""
    with x64():
        d, s = 4, 0.5
        mu = jnp.linspace(-1.0, 1.5, d)
        model = gaussian(mu, s**2 * jnp.eye(d)).model(process, prediction)
        x_init = jax.random.normal(jax.random.PRNGKey(0), (256, d))
        t_end = process.data_end(t_eps)
        exact = gaussian_flow_map(process, mu, s, x_init, process.t_noise, t_end)
        steps = [16, 32, 64, 128]
        orders = {}
        for solver in ODE_SOLVERS:
            errors = []
            for n in steps:
                res = dj.sample(solver, model, process, jax.random.PRNGKey(1), x_init.shape, n,
                                grid="logsnr", t_eps=t_eps, denoise_final=False, x_init=x_init)  # fmt: skip
                errors.append(float(jnp.sqrt(jnp.mean((res.samples - exact) ** 2))))
            orders[repr(solver)] = fitted = fitted_order(steps, errors)
            if (repr(solver), type(process).__name__) not in SUPERCONVERGENT:
                assert abs(fitted - solver.order) < 0.3, (solver, fitted, errors)
            else:
                assert fitted > solver.order - 0.3, (solver, fitted, errors)
        print(orders)


@pytest.mark.parametrize("proc_name,t_eps",
                         [("VPSDE", 1e-3), ("VPSDE", 0.0), ("CondOT", 0.0), ("CondOT-x0", 0.0)])
def test_rk4_takes_four_evaluations_per_step_and_three_on_a_last_step_to_the_data(proc_name, t_eps):
    """RK4 evaluates the model 4 times per step, and 3 times on a last step that reaches t_data where
    σ = 0 and the model is not a velocity (its c = 1 stage would divide by σ): declared
    (`num_evaluations`) = reported = counted at run time, with and without the final denoising
    evaluation. A velocity model on a flow path is finite at t_data: 4 evaluations on every step."""
    mix, (process, pred) = mixture_2d(), PROCESSES[proc_name]
    reaches_data = process.data_end(t_eps) == process.t_data
    skips = reaches_data and pred != "velocity"
    n = 7
    declared = dj.RK4().num_evaluations(n, ends_at_data=reaches_data, finite_at_data=not skips)
    assert declared == 4 * n - int(skips)
    for denoise_final in (True, False):
        model = EvalCounter(mix.model(process, pred))
        res = dj.sample(dj.RK4(), model, process, jax.random.PRNGKey(0), (16, 2), n, t_eps=t_eps,
                        denoise_final=denoise_final)  # fmt: skip
        jax.block_until_ready(res.samples)
        expected = 4 * n - int(skips) + int(denoise_final and not reaches_data)
        assert res.nfe == model.count == expected, (proc_name, t_eps, denoise_final, res.nfe, model.count)
        assert bool(jnp.all(jnp.isfinite(res.samples)))


def test_runge_kutta_keeps_its_order_to_the_data_with_a_velocity_model():
    """On CondOT to t_data = 1 with Gaussian data (closed-form flow map, float64, 16/32/64 steps): a
    velocity model is finite at t_data, so RK4 and Heun take every stage on the last step — RK4
    converges at order 4 (measured 4.3); the same model declared as x0 (σ = 0 divides) takes RK4's
    midpoint fallback on the last step, whose local error O(h³) caps the order at 3 (measured 2.8).
    Heun's Euler fallback keeps order 2 but has a larger constant (measured 3.3× the error)."""
    process, steps = CondOTPath(), [16, 32, 64]
    with x64():
        mean, std = jnp.array([1.0, -2.0]), 0.3
        gauss = gaussian(mean, std**2 * jnp.eye(2))
        x = jax.random.normal(jax.random.key(0), (256, 2), jnp.float64)
        exact = gaussian_flow_map(process, mean, std, x, 0.0, 1.0)

        def errors(solver, pred):
            model = gauss.model(process, pred)
            return [float(jnp.max(jnp.abs(dj.sample(solver, model, process, jax.random.key(1), num_steps=n,
                                                    x_init=x).samples - exact)))
                    for n in steps]  # fmt: skip

        rk4 = {pred: fitted_order(steps, errors(dj.RK4(), pred)) for pred in ("velocity", "x0")}
        heun = {pred: errors(dj.Heun(), pred)[-1] for pred in ("velocity", "x0")}
    assert 3.7 < rk4["velocity"] < 4.7 and rk4["x0"] < 3.2, rk4
    assert heun["velocity"] < 0.5 * heun["x0"], heun


def test_the_data_end_rule_is_decided_where_the_flow_is_built():
    """A process whose parameters are traced inside the compiled sampler (VDM's learned schedule,
    σ(t_data) > 0: an ε-model is finite there) gets the same decision inside as the NFE count outside:
    Heun and RK4 take every stage (declared = counted = 2n / 4n)."""
    from diffjax.processes.learned import LearnedSchedule

    process = LearnedSchedule.create(key=jax.random.key(0))
    assert not process.sigma_is_zero_at_data() and finite_at_data(process, "eps")
    for name, per_step in (("heun", 2), ("rk4", 4)):
        model = EvalCounter(mixture_2d().model(process, "eps"))
        res = dj.sample(name, model, process, jax.random.key(0), (8, 2), 5, t_eps=0.0)
        jax.block_until_ready(res.samples)
        assert res.nfe == model.count == per_step * 5, (name, res.nfe, model.count)


def test_adaptive_solver_error_falls_with_tolerance_and_reports_its_evaluations():
    """Tsit5 and Dopri5 on the Gaussian problem: the endpoint error at rtol = atol = 1e-7 is below
    1e-5 and far below that at 1e-3; the reported NFE equals the evaluations counted at runtime, is
    small (< 100) for the loose tolerance and grows for the tight one."""
    with x64():
        process, d, s = VPSDE(), 4, 0.5
        mu = jnp.linspace(-1.0, 1.5, d)
        x_init = jax.random.normal(jax.random.PRNGKey(0), (256, d))
        exact = gaussian_flow_map(process, mu, s, x_init, 1.0, 1e-3)
        for solver in ("tsit5", "dopri5"):
            errors, nfes = [], []
            for tol in (1e-3, 1e-7):
                model = EvalCounter(gaussian(mu, s**2 * jnp.eye(d)).model(process, "eps"))
                res = dj.sample(solver, model, process, jax.random.PRNGKey(1), x_init.shape,
                                rtol=tol, atol=tol, denoise_final=False, x_init=x_init)  # fmt: skip
                assert int(res.nfe) == model.count
                errors.append(float(jnp.sqrt(jnp.mean((res.samples - exact) ** 2))))
                nfes.append(int(res.nfe))
            assert errors[1] < 1e-5 and errors[1] < 1e-2 * errors[0], (solver, errors)
            assert 0 < nfes[0] < 100 and nfes[1] > nfes[0], (solver, nfes)


# -- the exact mixture -------------------------------------------------------------------------
ODE_CASES = [
    ("VPSDE", "euler", {}, 100),
    ("VPSDE", "heun", {}, 25),
    ("VPSDE", "ddim", {}, 50),
    ("VPSDE", "dpm_solver_pp", {"order": 2}, 25),
    ("VPSDE", "dpm_solver_pp", {"order": 3}, 25),
    ("VPSDE", "edm", {}, 25),
    ("VPSDE", "tsit5", {}, None),
    ("CondOT", "euler", {}, 100),
    ("CondOT", "heun", {}, 25),
    ("CondOT", "midpoint", {}, 25),
    ("CondOT", "dpm_solver_pp", {"order": 2}, 25),
    ("CondOT", "tsit5", {}, None),
]


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("proc_name,name,opts,steps", ODE_CASES, ids=lambda v: str(v))
def test_ode_samplers_reach_the_mixture(dim, proc_name, name, opts, steps):
    """With the exact model (ε for VP, velocity for CondOT), 4000 samples at the stated step count
    (log-SNR grid; adaptive Tsit5 at its default tolerances) are within SW_THRESHOLD of the
    sliced-W2 noise floor (see `sw_ratio`) and LOGP_TOL of the data's mean log-density; the reported
    NFE is the runtime count."""
    mix = mixture_2d() if dim == 2 else mixture_16d()
    process, pred = PROCESSES[proc_name]
    key = jax.random.PRNGKey(dim)
    model = EvalCounter(mix.model(process, pred))
    if steps is None:
        res = dj.sample(name, model, process, key, (N_SAMPLES, dim))
    else:
        res = dj.sample(name, model, process, key, (N_SAMPLES, dim), steps, grid="logsnr", **opts)
    ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(100 + dim), CHUNKS)
    gap = log_prob_gap(res.samples, f"{dim}d")
    assert ratio < SW_THRESHOLD and abs(gap) < LOGP_TOL, (ratio, gap, int(res.nfe))
    assert int(res.nfe) == model.count


def test_mixture_criterion_rejects_a_coarse_or_wrong_sampler():
    """The criteria have power in 16D: 3 Euler steps land far above the SW threshold (and the null
    maximum 1.46); the exact model of a mixture whose components are 1.2× too wide passes the SW
    criterion but fails the log-density one."""
    mix, process, shape = mixture_16d(), VPSDE(), (N_SAMPLES, 16)
    coarse = dj.sample("euler", mix.model(process), process, jax.random.PRNGKey(0), shape, 3)
    assert sw_ratio(coarse.samples, mix, jax.random.PRNGKey(116), CHUNKS) > SW_THRESHOLD + 0.5
    wide = GaussianMixture.create(mix.means, 1.2**2 * mix.covs, mix.weights)
    wrong = dj.sample("heun", wide.model(process), process, jax.random.PRNGKey(0), shape, 25)
    assert log_prob_gap(wrong.samples, "16d") < -1.5 * LOGP_TOL


# -- the driver --------------------------------------------------------------------------------
def test_sample_compiles_once_and_vmap_over_keys_equals_a_loop():
    """A second call with the same shapes and a new key does not retrace the model; vmap over
    keys equals single calls (float64: the only difference is re-association under batching)."""
    with x64():
        mix, process = mixture_2d(), VPSDE()
        base = mix.model(process, "eps")
        traces = []

        def model(x, t):
            traces.append(1)
            return base(x, t)

        for name in ("dpm_solver_pp", "pc"):
            traces.clear()
            keys = jax.random.split(jax.random.PRNGKey(0), 3)
            first = dj.sample(name, model, process, keys[0], (32, 2), 10, prediction="eps")
            n_traces = len(traces)
            assert n_traces > 0
            looped = jnp.stack([dj.sample(name, model, process, k, (32, 2), 10, prediction="eps").samples
                                for k in keys])  # fmt: skip
            assert len(traces) == n_traces, name  # no retracing
            np.testing.assert_array_equal(looped[0], first.samples)
            batched = jax.vmap(
                lambda k, name=name: dj.sample(name, model, process, k, (32, 2), 10, prediction="eps").samples
            )(keys)
            np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-10)


def test_pytree_model_parameters_are_traced_not_baked_in():
    """A `jax.tree_util.Partial` model with new parameter values reuses the compiled sampler."""
    process = VPSDE()

    @chex.assert_max_traces(n=1)
    def apply(shift, x, t):
        return x * 0.0 + shift

    for shift in (0.0, 1.0):
        model = jax.tree_util.Partial(apply, jnp.asarray(shift))
        res = dj.sample("ddim", model, process, jax.random.PRNGKey(0), (8, 2), 5, prediction="eps",
                        denoise_final=False)  # fmt: skip
        assert res.samples.shape == (8, 2)


def test_solvers_are_frozen_hashable_pytrees_that_key_the_compiled_sampler():
    """Every solver in `dj.SOLVERS` is a frozen dataclass whose options are static pytree metadata
    (no array leaves), equal and equally hashed when rebuilt with the same options. `dj.sample`
    compiles once for a solver: the same object again, or an equal new one, does not retrace the
    model, while a solver with other options compiles exactly once more. The option-less solvers
    (Euler, Heun, Midpoint, RK4, Euler–Maruyama; their pytree structures compare equal in JAX when
    the class is ignored) never share a compiled program: each compiles anew and their samples
    differ pairwise."""
    for name, build in dj.SOLVERS.items():
        solver = build()
        assert dataclasses.is_dataclass(solver) and jax.tree.leaves(solver) == [], name
        with pytest.raises(dataclasses.FrozenInstanceError):
            solver.order = 7
        assert build() == solver and hash(build()) == hash(solver), name
        assert jax.tree.unflatten(jax.tree.structure(solver), []) == solver, name

    mix, process = mixture_2d(), VPSDE()
    base = mix.model(process, "eps")
    traces = []

    def model(x, t):
        traces.append(1)
        return base(x, t)

    def run(solver, seed=0):
        return dj.sample(solver, model, process, jax.random.PRNGKey(seed), (32, 2), 10, prediction="eps")

    solver = dj.DPMSolverPP(order=3)
    run(solver)
    per_compile = len(traces)
    assert per_compile > 0
    run(solver, 1)
    run(dj.DPMSolverPP(order=3), 2)
    assert len(traces) == per_compile  # same or equal solver: no retracing
    run(dj.DPMSolverPP(order=2))
    assert len(traces) == 2 * per_compile  # other options: exactly one more compilation

    samples = {}
    for solver in (dj.Euler(), dj.Heun(), dj.Midpoint(), dj.RK4(), dj.EulerMaruyama()):
        before = len(traces)
        samples[repr(solver)] = np.asarray(run(solver).samples)
        assert len(traces) > before, solver  # compiled for this solver
    names = list(samples)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(samples[a], samples[b]), (a, b)


def test_nfe_and_trajectory_at_the_ends_of_the_grid():
    """Reported NFE = runtime count with 7 steps: on VP (t_eps > 0) every sampler adds the final
    denoising evaluation; on CondOT ending at the data (t_eps = 0) there is none, EDM saves an
    evaluation on its first step from α = 0 and on its last (Euler to σ = 0, as Karras et al.'s
    Alg. 1), and with an x0-model Heun and RK4 save their c = 1 stage on the last step (a velocity
    model is finite at t_data and gets every stage). The trajectory holds every state."""
    mix = mixture_2d()
    expected = {
        ("VPSDE", "euler"): 8, ("VPSDE", "heun"): 15, ("VPSDE", "pc"): 15, ("VPSDE", "edm"): 15,
        ("CondOT", "euler"): 7, ("CondOT", "heun"): 14, ("CondOT", "pc"): 14,
        ("CondOT", "edm"): 12, ("VPSDE", "midpoint"): 15, ("CondOT", "midpoint"): 14,
        ("VPSDE", "rk4"): 29, ("CondOT", "rk4"): 28,
        ("CondOT-x0", "heun"): 13, ("CondOT-x0", "edm"): 12, ("CondOT-x0", "rk4"): 27,
    }  # fmt: skip
    for (proc_name, name), nfe in expected.items():
        process, pred = PROCESSES[proc_name]
        model = EvalCounter(mix.model(process, pred))
        opts = {"predictor": "euler_maruyama"} if name == "pc" else {}
        res = dj.sample(name, model, process, jax.random.PRNGKey(0), (16, 2), 7, save_trajectory=True,
                        **opts)  # fmt: skip
        jax.block_until_ready(res.samples)
        assert res.nfe == model.count == nfe, (proc_name, name, res.nfe, model.count)
        assert res.trajectory.shape == (8, 16, 2)
        assert bool(jnp.all(jnp.isfinite(res.trajectory)))
        if proc_name.startswith("CondOT"):  # no final denoising: the last state is the sample
            np.testing.assert_array_equal(res.trajectory[-1], res.samples)


NFE_CASES = [("VPSDE", 0.0), ("VPSDE", None), ("CondOT", None), ("CondOT", 1e-3)]


@pytest.mark.parametrize("proc_name,t_eps", NFE_CASES, ids=lambda v: str(v))
def test_every_solver_declares_the_model_evaluations_it_makes(proc_name, t_eps):
    """For every name in `dj.SOLVERS` (default options, 7 uniform steps), on VP and CondOT with
    t_eps = 0 and the default (1e-3 on VP, 0 on CondOT; and 1e-3 on CondOT, so each process both
    reaches and stops short of the data): the declared count `solver.num_evaluations(...)` plus the
    final denoising evaluation equals the reported NFE and the runtime count, and the samples are
    finite (no solver evaluates an ε-model at σ = 0). Adaptive solvers report their count at run
    time; on VP at t_eps = 0 (a singular velocity at t_data) they refuse. The fixed-grid solvers run
    eagerly (`jax.disable_jit`: the count is the algorithm's; each counter would compile its own
    program — 149 s of the suite against 43 s eagerly); compiled counts are checked by the NFE-budget
    test below."""
    mix, (process, pred) = mixture_2d(), PROCESSES[proc_name]
    reaches_data = process.data_end(t_eps) == process.t_data
    n = 7
    for name in dj.SOLVERS:
        solver = dj.make_solver(name)
        model = EvalCounter(mix.model(process, pred))
        if isinstance(solver, dj.Adaptive):
            if reaches_data and not finite_at_data(process, pred):
                with pytest.raises(ValueError, match="t_eps > 0"):
                    dj.sample(solver, model, process, jax.random.PRNGKey(0), (16, 2), t_eps=t_eps)
                continue
            res = dj.sample(solver, model, process, jax.random.PRNGKey(0), (16, 2), t_eps=t_eps)
            jax.block_until_ready(res.samples)
            assert int(res.nfe) == model.count > 0, (name, res.nfe, model.count)
            continue
        declared = solver.num_evaluations(n, ends_at_data=reaches_data,
                                          finite_at_data=finite_at_data(process, pred),
                                          starts_at_zero_alpha=process.alpha_is_zero_at_noise())  # fmt: skip
        with jax.disable_jit():  # eager: one compiled program per counter would cost 3× the run
            res = dj.sample(solver, model, process, jax.random.PRNGKey(0), (16, 2), n, t_eps=t_eps)
        expected = declared + int(not reaches_data)
        assert res.nfe == model.count == expected, (name, res.nfe, model.count, expected)
        assert bool(jnp.all(jnp.isfinite(res.samples))), name  # no evaluation where σ = 0


def test_an_nfe_budget_takes_the_most_steps_that_fit_it():
    """`sample(..., nfe=B)`: the runtime count of model evaluations is ≤ B and one more step would
    exceed B, for every fixed-grid solver on VP (final denoising included) and CondOT (ends at the
    data); too small a budget and num_steps together with nfe are refused."""
    mix = mixture_2d()
    for proc_name in ("VPSDE", "CondOT", "CondOT-x0"):
        process, pred = PROCESSES[proc_name]
        for name in ("euler", "heun", "rk4", "dpm_solver_pp", "edm"):
            for budget in (7,):
                model = EvalCounter(mix.model(process, pred))
                res = dj.sample(name, model, process, jax.random.PRNGKey(0), (8, 2), nfe=budget)
                jax.block_until_ready(res.samples)
                n = dj.steps_for_budget(name, process, budget, prediction=pred)
                solver = dj.make_solver(name)
                reaches = process.data_end(None) == process.t_data
                more = solver.num_evaluations(
                    n + 1, ends_at_data=reaches, finite_at_data=finite_at_data(process, pred),
                    starts_at_zero_alpha=process.alpha_is_zero_at_noise(),
                ) + int(not reaches)
                assert res.nfe == model.count <= budget < more, (proc_name, name, budget, res.nfe)
    process, pred = PROCESSES["VPSDE"]
    with pytest.raises(ValueError, match="below one step of RK4"):
        dj.sample("rk4", mix.model(process, pred), process, jax.random.PRNGKey(0), (8, 2), nfe=4)
    with pytest.raises(ValueError, match="not both"):
        dj.sample("heun", mix.model(process, pred), process, jax.random.PRNGKey(0), (8, 2), 4, nfe=8)


@pytest.mark.parametrize("solver", [dj.Heun(), dj.RK4()], ids=repr)
def test_integrate_runs_a_pytree_state_and_saves_every_kth_state(solver):
    """`dj.integrate` on the harmonic oscillator dx/dt = v, dv/dt = −x with the state a tuple of two
    arrays (an `ODE` term): save_every = 4 over 24 steps gives each leaf's states at ts[::4] (shape
    (7, 3, 2)), equal (float64, to 1e-13) to a loop of single `solver.step` calls; the final state is
    the last saved one and lies within the solver's error of the exact rotation (x cos t + v sin t,
    v cos t − x sin t). A save_every that does not divide the steps raises."""
    with x64():
        term = ODE(lambda y, t: (y[1], -y[0]))
        y0 = tuple(jax.random.normal(jax.random.PRNGKey(i), (3, 2)) for i in range(2))
        ts = jnp.linspace(0.0, 2.0, 25)
        sol = dj.integrate(solver, term, y0, ts, jax.random.PRNGKey(2), save_every=4)
        assert sol.nfe is None and jax.tree.structure(sol.trajectory) == jax.tree.structure(y0)
        y, carry, looped = y0, solver.init(term, y0, ts), [y0]
        keys = jax.random.split(jax.random.PRNGKey(2), 24)
        for i in range(24):
            y, carry = solver.step(term, y, carry, ts[i], ts[i + 1], keys[i])
            if (i + 1) % 4 == 0:
                looped.append(y)
        for leaf in range(2):
            assert sol.trajectory[leaf].shape == (7, 3, 2)
            want = jnp.stack([state[leaf] for state in looped])
            np.testing.assert_allclose(sol.trajectory[leaf], want, rtol=0, atol=1e-13)
            np.testing.assert_array_equal(sol.y[leaf], sol.trajectory[leaf][-1])
        c, s = jnp.cos(2.0), jnp.sin(2.0)
        exact = (y0[0] * c + y0[1] * s, y0[1] * c - y0[0] * s)
        bound = {2: 1e-2, 4: 1e-5}[solver.order]
        errors = [float(jnp.max(jnp.abs(sol.y[i] - exact[i]))) for i in range(2)]
        assert max(errors) < bound, (solver, errors)
        with pytest.raises(ValueError, match="save_every"):
            dj.integrate(solver, term, y0, ts, save_every=5)


def test_sampling_runs_unchanged_on_a_sharded_batch():
    """With two (host) devices and the initial noise sharded along the batch, `sample` returns the
    same samples as unsharded, still sharded over both devices (run in a subprocess, since the
    device count is fixed when JAX starts)."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import diffjax as dj
        assert jax.device_count() == 2
        mix, process = dj.ring_mixture(8, dim=2), dj.VPSDE()
        model = mix.model(process, "eps")
        x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), P("batch"))
        for name in ("dpm_solver_pp", "pc"):
            ref = dj.sample(name, model, process, jax.random.PRNGKey(1), None, 10, x_init=x).samples
            out = dj.sample(name, model, process, jax.random.PRNGKey(1), None, 10,
                            x_init=jax.device_put(x, sharding)).samples
            assert len(out.sharding.device_set) == 2, out.sharding
            np.testing.assert_allclose(out, ref, atol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
