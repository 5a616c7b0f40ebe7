"""Multistep exponential integrators (`diffjax.solvers`: DPM-Solver++ with `lower_order_final` and
`reference_d2`, UniPC, DEIS, SDE-DPM-Solver++ 2M): convergence orders on Gaussian data, stability at
5–10 evaluations on the ring mixture, the DDPM chain, sampling the mixture with the SDE solver, and
pytree states integrated towards the noise (a likelihood's log-density leaf)."""

import dataclasses

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
    fitted_order,
    gaussian_flow_map,
    log_prob_gap,
    mixture_2d,
    sw_ratio,
)

import diffjax as dj
from diffjax.flow import as_flow
from diffjax.grids import logsnr_grid
from diffjax.likelihood import LogDensityFlow
from diffjax.oracle import GaussianMixture, gaussian
from diffjax.processes import VPSDE, CondOTPath, DDPMChain
from diffjax.solvers import DEIS, DPMSolverPP, DPMSolverPPSDE, SASolver, UniPC

KEY = jax.random.PRNGKey(0)


def _run_steps(solver, term, y0, ts):
    """The solver's steps over the grid ts with one jitted `step` (compiled once per solver and term for
    all grids: the order fits need several step counts) — the same arithmetic as `integrate`'s scan."""
    key = (solver, id(term))
    if key not in _STEPS:  # the term is kept alive with its compiled step
        _STEPS[key] = term, jax.jit(lambda y, carry, t, t_next: solver.step(term, y, carry, t, t_next, KEY))
    step = _STEPS[key][1]
    y, carry = y0, solver.init(term, y0, ts)
    for i in range(ts.shape[0] - 1):
        y, carry = step(y, carry, ts[i], ts[i + 1])
    return y


_STEPS = {}


# -- convergence orders on Gaussian data ----------------------------------------------------------
# (solver, expected order, exact?): exact → |fitted − order| < 0.3; otherwise only bounded below
# by order − 0.3: on Gaussian data the third derivative of x̂0 in l vanishes to leading order, so the
# third-order methods fall faster (measured ≈ 3.9; tests/test_solvers_ode.py says the same of 3M).
# the schemes' asymptotic orders: without `lower_order_final` (order 1 on the last step)
FULL = dict(lower_order_final=False)
ORDER_CASES = [
    (UniPC(order=1, **FULL), 2, True),  # UniP-1 + UniC: order p + 1
    (UniPC(order=2, variant="bh1", **FULL), 3, True),
    (UniPC(order=2, variant="bh2", **FULL), 3, True),
    (UniPC(order=2, corrector=False, **FULL), 2, True),  # UniP-2 alone (= DPM-Solver++ 2M)
    (UniPC(order=3, **FULL), 3, False),
    (DEIS(order=2, **FULL), 2, True),
    (DEIS(order=3, **FULL), 3, False),
    (DPMSolverPP(order=3, **FULL), 3, False),
    (SASolver(predictor_order=1, corrector_order=2, tau=0.0, **FULL), 2, True),  # SA-Corrector: order q
    (SASolver(predictor_order=2, corrector_order=3, tau=0.0, **FULL), 3, True),
]
# on CondOT (runtime budget) the two B(h) variants, DEIS and 3M; not UniPC-3 (see the docstring)
CONDOT_CASES = (UniPC(order=2, variant="bh1", **FULL), UniPC(order=2, variant="bh2", **FULL),
                DEIS(order=2, **FULL), DEIS(order=3, **FULL), DPMSolverPP(order=3, **FULL),
                SASolver(predictor_order=2, corrector_order=3, tau=0.0, **FULL))  # fmt: skip


@pytest.mark.parametrize(
    "process,prediction,t_eps",
    [(VPSDE(), "eps", 1e-3), (CondOTPath(), "velocity", 0.0)],
    ids=["VP", "CondOT"],
)
def test_multistep_solvers_converge_at_their_order_on_gaussian_data(process, prediction, t_eps):
    """Data N(μ, s²I), exact flow map `gaussian_flow_map`; float64; 32/64/128 log-SNR-uniform steps,
    `lower_order_final=False` (the asymptotic order of each scheme). UniPC-p with its
    corrector converges at order p + 1, the predictor alone at p, DEIS-tAB-p at p; our DPM-Solver++ 3M
    at ≥ 3 while the reference D₂ (Lu et al.'s code, diffusers; `reference_d2=True`) is second order:
    its fitted order is within ±0.4 of 2 and at least 1 below ours (all on VP; on CondOT the subset
    `CONDOT_CASES`, for the runtime budget). Measured (VP / CondOT, 32–128 steps): UniPC-1 1.99,
    UniPC-2 bh1 3.06/3.09, bh2 2.97/2.93, UniP-2 alone 1.98, DEIS-2 2.02/2.03, DEIS-3 4.00/4.08,
    DPM-Solver++ 3M 4.00/4.08 vs reference 2.14/2.28, SA-Solver (τ = 0) predictor 1 + corrector 2
    2.01/2.00, 2 + 3 3.01/3.00 (2 + 2 is second order with a ~50× smaller constant, so 32–256 steps are
    pre-asymptotic: 2.4/2.8). Gaussian data cannot tell order 3 from 4: UniP-3 alone, 3M and DEIS-3
    already fall at ≈ 4, and UniPC-3 with its corrector measures 3.31 at 32–128 steps on VP (local
    orders 2.94, 3.68, 3.87, 3.94 up to 512 steps), so it is only bounded below here; on CondOT the
    log-SNR grid's ±15 truncation (`max_abs_logsnr`) leaves an error floor ≈ e^{−15} from the first
    step out of α = 0 and the final x̂0 at σ → 0, where the third-order methods stall (≈ 3e-7 at 512
    steps). The orders p + 1 of UniPC-p and SA-Solver's corrector are measured on a mixture in
    `test_correctors_raise_the_order_by_one_on_a_mixture`."""
    with x64():
        d, s = 4, 0.5
        mu = jnp.linspace(-1.0, 1.5, d)
        term = as_flow(gaussian(mu, s**2 * jnp.eye(d)).model(process, prediction), process, prediction)
        x_init = jax.random.normal(KEY, (64, d))
        t_end = process.data_end(t_eps)
        exact = gaussian_flow_map(process, mu, s, x_init, process.t_noise, t_end)
        steps = [32, 64, 128]
        grids = {n: dj.make_grid(process, n, "logsnr", t_eps) for n in steps}

        def order_of(solver):
            errors = [float(jnp.sqrt(jnp.mean((_run_steps(solver, term, x_init, grids[n]) - exact) ** 2)))
                      for n in steps]  # fmt: skip
            return fitted_order(steps, errors), errors

        measured = {}
        for solver, order, exact_order in ORDER_CASES:
            if isinstance(process, CondOTPath) and solver not in CONDOT_CASES:
                continue
            fitted, errors = order_of(solver)
            measured[repr(solver)] = fitted
            if exact_order:
                assert abs(fitted - order) < 0.3, (solver, fitted, errors)
            else:
                assert fitted > order - 0.3, (solver, fitted, errors)
        ours = measured[repr(DPMSolverPP(order=3, **FULL))]
        reference, errors = order_of(DPMSolverPP(order=3, reference_d2=True, **FULL))
        assert abs(reference - 2.0) < 0.4 and ours - reference > 1.0, (ours, reference, errors)
        print(measured, reference)


# a smooth non-Gaussian target (two overlapping anisotropic components): its x̂0 along a trajectory has
# a non-vanishing third derivative in l, so order 3 and order 4 separate (unlike on Gaussian data)
TWO_BLOBS = GaussianMixture.create(jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
                                   jnp.array([[0.6, 0.8], [0.9, 0.5]]) ** 2, weights=[0.4, 0.6])  # fmt: skip
CORRECTOR_CASES = [  # (solver, expected order): UniC-p / SA-Corrector-q over the predictor's order
    (UniPC(order=1, **FULL), 2),
    (UniPC(order=2, **FULL), 3),
    (UniPC(order=3, **FULL), 4),
    (UniPC(order=3, corrector=False, **FULL), 3),  # UniP-3 alone (here = our DPM-Solver++ 3M and DEIS-3)
    (SASolver(predictor_order=3, corrector_order=4, tau=0.0, **FULL), 4),
]


@pytest.mark.parametrize(
    "process,prediction,t_eps",
    [(VPSDE(), "eps", 1e-3), (CondOTPath(), "velocity", 0.0)],
    ids=["VP", "CondOT"],
)
def test_correctors_raise_the_order_by_one_on_a_mixture(process, prediction, t_eps):
    """UniPC-p with its corrector converges at order p + 1 (Zhao et al. 2023, Thm 3.2) and the predictor
    alone at p, on a non-Gaussian target (`TWO_BLOBS`), float64: RMS endpoint error of 64 noises against
    DPM-Solver++ 3M on 16384 steps of the same grid (its own error < 1e-10 on VP, ≈ 1e-9 on CondOT, below
    the smallest error fitted), 256/512/1024 steps uniform in log-SNR truncated at ±30 (CondOT's α = 0
    and σ = 0 ends: the default ±15 leaves an ≈ e^{−15} floor, see the Gaussian test). Fewer steps are
    pre-asymptotic: at 64–256 steps a UniC-3 that drops its third order condition (order 3) still fits
    3.8–3.9. |fitted − order| < 0.3. Measured (VP / CondOT): UniPC-1 2.00/2.00, UniPC-2 3.00/2.99,
    UniPC-3 4.01/3.95, UniP-3 alone 2.95/2.98, SA-Solver 3 + 4 4.01/4.07. Mutation-checked: a UniC-3
    without its third order condition fits 2.85 / 3.63 and fails it."""
    with x64():
        term = as_flow(TWO_BLOBS.model(process, prediction), process, prediction)
        x_init = jax.random.normal(KEY, (64, 2))

        def grid(n):
            return logsnr_grid(process, n, t_eps, max_abs_logsnr=30.0)

        reference = _run_steps(DPMSolverPP(order=3, **FULL), term, x_init, grid(16384))
        steps = [256, 512, 1024]
        measured = {}
        for solver, order in CORRECTOR_CASES:
            errors = [float(jnp.sqrt(jnp.mean((_run_steps(solver, term, x_init, grid(n)) - reference) ** 2)))
                      for n in steps]  # fmt: skip
            measured[repr(solver)] = fitted = fitted_order(steps, errors)
            assert abs(fitted - order) < 0.3, (solver, fitted, errors)
        print(measured)


# -- few evaluations on the ring mixture ------------------------------------------------------------
RING_SOLVERS = (DPMSolverPP(order=2), DPMSolverPP(order=3), UniPC(order=2), UniPC(order=3), DEIS(order=3))


def test_few_step_multistep_solvers_stay_on_the_ring_with_default_options():
    """Ring of 8 modes (radius 4, std 0.5: neighbouring modes 3.06 apart), VP (ε-model), 500 prior
    draws, default uniform grid (t_eps = 1e-3), 5 and 10 evaluations (nfe − 1 steps and the final
    x̂0): DPM-Solver++ 2M/3M, UniPC-2/3 (bh2, corrector) and DEIS-3 with their default
    `lower_order_final` keep the median endpoint error vs an accurate solve from the same noise
    (3M on 200 log-SNR steps) below 0.5 — the component std, a sixth of the distance to a wrong mode
    (a sample that changes mode is ≈ 3 off). Without `lower_order_final`, 3M at 10 evaluations
    extrapolates across the last step (4.7× longer in l than the one before) and sends most samples
    to a wrong mode: median > 1.5 (measured 3.40; with it 0.14). Measured at 5 / 10 evaluations:
    2M 0.38/0.11, 3M 0.38/0.14, UniPC-2 0.33/0.13, UniPC-3 0.33/0.14, DEIS-3 0.35/0.15. At 21
    evaluations the rule still pays: 3M 0.023, UniPC-3 0.019 (asserted < 0.05, and > 4× that
    without it)."""
    mix, process = mixture_2d(), VPSDE()
    term = as_flow(mix.model(process, "eps"), process, "eps")
    x_init = process.prior_sample(jax.random.PRNGKey(7), (500, 2))

    def endpoint(solver, ts):
        return term.denoise(_run_steps(solver, term, x_init, ts), ts[-1])[0]

    ref = endpoint(DPMSolverPP(order=3), dj.make_grid(process, 200, "logsnr"))
    grids = {nfe: dj.make_grid(process, nfe - 1, "uniform") for nfe in (5, 10, 21)}

    def median_error(solver, nfe):
        return float(jnp.median(jnp.linalg.norm(endpoint(solver, grids[nfe]) - ref, axis=-1)))

    errors = {}
    for solver in RING_SOLVERS:
        for nfe in (5, 10):
            errors[repr(solver), nfe] = err = median_error(solver, nfe)
            assert err < 0.5, (solver, nfe, err)
    broken = median_error(DPMSolverPP(order=3, lower_order_final=False), 10)
    assert broken > 1.5, broken
    # 20 steps: the rule still pays (diffjax applied it below 15 steps only until 2026-12-03)
    for solver in (DPMSolverPP(order=3), UniPC(order=3)):
        full = dataclasses.replace(solver, lower_order_final=False)
        with_rule, without = median_error(solver, 21), median_error(full, 21)
        errors[repr(solver), 21] = with_rule
        assert with_rule < 0.05 and without > 4 * with_rule, (solver, with_rule, without)
    print(errors, broken)


def test_sample_defaults_to_the_safe_dpm_solver_pp():
    """`dj.sample('dpm_solver_pp', …)` without options is 2M with `lower_order_final` and our D₂."""
    solver = dj.make_solver("dpm_solver_pp")
    assert solver == DPMSolverPP(order=2, lower_order_final=True, reference_d2=False)
    assert dj.make_solver("unipc") == UniPC(order=2, variant="bh2", corrector=True, lower_order_final=True)


# -- the DDPM chain -----------------------------------------------------------------------------------
def test_unipc_and_deis_run_on_the_ddpm_chain_and_match_a_fine_solve():
    """On Ho et al.'s chain (T = 1000; only α and σ of its integer steps are used) UniPC-2 and DEIS-2
    with 25 uniform steps from the same noise agree with 250 UniPC-2 steps of the chain (its own
    probability flow, converged) to a median endpoint error < 0.1, a fifth of the component std
    (measured 0.014 and 0.018); the
    last step reaches t = 0 (σ = 0, h = ∞) and returns x̂0, so the samples are finite."""
    mix, chain = mixture_2d(), DDPMChain.linear(1000)
    term = as_flow(mix.model(chain, "eps"), chain, "eps")
    x_init = jax.random.normal(jax.random.PRNGKey(3), (500, 2))
    fine = _run_steps(UniPC(order=2), term, x_init, dj.make_grid(chain, 250))
    errors = {}
    for solver in (UniPC(order=2), DEIS(order=2)):
        out = _run_steps(solver, term, x_init, dj.make_grid(chain, 25))
        errors[repr(solver)] = err = float(jnp.median(jnp.linalg.norm(out - fine, axis=-1)))
        assert bool(jnp.all(jnp.isfinite(out))) and err < 0.1, (solver, err)
    print(errors)


# -- SDE-DPM-Solver++ 2M ------------------------------------------------------------------------------
def test_sde_dpm_solver_pp_samples_the_mixture():
    """4000 samples of the 2D ring mixture on VP (exact ε-model, 30 log-SNR steps) pass both mixture
    criteria of tests/test_solvers_sde.py (sliced W2 within SW_THRESHOLD of the noise floor, mean
    log-density within LOGP_TOL)."""
    mix, process = mixture_2d(), VPSDE()
    solver = DPMSolverPPSDE()
    res = dj.sample(solver, mix.model(process, "eps"), process, jax.random.PRNGKey(2), (N_SAMPLES, 2), 30,
                    grid="logsnr")  # fmt: skip
    ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(102), CHUNKS)
    gap = log_prob_gap(res.samples, "2d")
    assert ratio < SW_THRESHOLD and abs(gap) < LOGP_TOL, (ratio, gap)


def test_sde_dpm_solver_pp_refuses_a_grid_towards_the_noise():
    process = VPSDE()
    term = as_flow(mixture_2d().model(process, "eps"), process, "eps")
    with pytest.raises(ValueError, match="towards the data"):
        dj.integrate(DPMSolverPPSDE(), term, jnp.zeros((4, 2)), jnp.linspace(1e-3, 1.0, 5))


# -- pytree states, towards the noise -----------------------------------------------------------------
@pytest.mark.parametrize("solver", [UniPC(order=2), DEIS(order=3)], ids=repr)
def test_multistep_solvers_integrate_the_log_density_towards_the_noise(solver):
    """The likelihood's state (x, Δ log p) is a pytree whose Δ leaf has s = 1: integrated from t_eps to
    t_noise (the reverse direction) on 64 log-SNR steps on Gaussian data (float64), the prior log-density
    (exact terminal marginal) plus Δ = ∫∇·v dt is log p_{t_eps}(x) in closed form to < 1.5e-3 nats: half
    the error of DPM-Solver++ 2M on the same grid (2.8e-3), which these third-order methods beat
    (measured UniPC-2 6.9e-4, DEIS-3 4.7e-4; UniP-2 alone equals 2M)."""
    with x64():
        process, mean, cov = VPSDE(), jnp.array([0.5, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]])
        data, t_eps = gaussian(mean, cov), 1e-3
        x, _ = data.sample(jax.random.key(3), 8)
        term = LogDensityFlow(as_flow(data.model(process, "eps"), process, "eps"))
        t0 = process.data_end(t_eps)

        def logp(y, t):
            a, s = process.alpha(t), process.sigma(t)
            c = a**2 * cov + s**2 * jnp.eye(2)
            return jax.scipy.stats.multivariate_normal.logpdf(y, a * mean, c)

        ts = dj.make_grid(process, 64, "logsnr", t_eps)[::-1]
        ref = logp(x, t0)
        x_t, delta = dj.integrate(solver, term, (x, jnp.zeros(8)), ts).y
        err = float(jnp.max(jnp.abs(logp(x_t, process.t_noise) + delta - ref)))
        assert err < 1.5e-3, (solver, err)


def test_reverse_mode_gradients_through_the_multistep_solvers_match_finite_differences():
    """jax.grad of a sampled endpoint with respect to the initial noise, through DPM-Solver++ 3M,
    UniPC-3, DEIS-3 (flow time and log-SNR) and SA-Solver 2+3 on CondOT (its start at α = 0 gives an
    infinite h and a stored point at l = −∞; 3rd order reaches back two points): finite, and equal to
    central differences (float64, step 1e-5: truncation ~1e-10, rounding ~1e-11/1e-5), relative 1e-6.
    Unused higher-order branches used to give 0·∞ = NaN (DPM-Solver++ 3M did on CondOT)."""
    mix = mixture_2d()
    solvers = [DPMSolverPP(order=3), UniPC(order=3), DEIS(order=3), DEIS(order=3, interpolate_in="log_snr"),
               SASolver(predictor_order=2, corrector_order=3, tau=0.0)]  # 'auto': the flow time on CondOT
    with x64():
        for process, pred in ((CondOTPath(), "velocity"),):
            flow = as_flow(mix.model(process, pred), process)
            ts = dj.make_grid(process, 6, "uniform")
            x = process.prior_sample(jax.random.key(1), (4, 2), jnp.float64)
            v = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
            for solver in solvers:
                f = jax.jit(lambda x, s=solver, fl=flow, g=ts: jnp.sum(jnp.sin(dj.integrate(s, fl, x, g).y)))
                g = jax.grad(f)(x)
                assert bool(jnp.all(jnp.isfinite(g))), (process, solver)
                fd = (f(x + 1e-5 * v) - f(x - 1e-5 * v)) / 2e-5
                assert abs(float(jnp.vdot(g, v)) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (
                    process, solver, float(jnp.vdot(g, v)), float(fd))


@pytest.mark.parametrize("variant", ["bh2", "bh1"])
def test_unipc_corrects_a_first_step_from_alpha_zero_by_its_limit(variant):
    """A flow path starts at α = 0 (l = −∞), so UniPC's first step has h = +∞. Its UniC-1 correction
    (applied at the start of the second step; the corrected state is the carry's first entry) has the
    coefficient −B(h)·½ = (1 − e^{−h})/2 → ½ for bh2: the corrected point must be the limit of the
    corrected points of grids starting at δ > 0, |Δ| = O(δ) (float64; measured 1e-6 at δ = 1e-6 on
    values ≈ 1, against ≈ 0.1 when the correction was dropped, as it still is — and must be — for
    bh1, whose −B(h) = h diverges). Effect at 10 uniform steps on the 2D ring of bench_endpoint
    (median endpoint error against a Dopri8 solve): UniPC-2 0.0552 → 0.0149, 16D 0.437 → 0.184."""
    mix, process = mixture_2d(), CondOTPath()
    solver = UniPC(order=2, variant=variant)
    with x64():
        term = as_flow(mix.model(process, "velocity"), process)
        x = process.prior_sample(jax.random.key(3), (64, 2), jnp.float64)

        def corrected_first_point(t0):
            ts = jnp.asarray([t0, 0.1, 0.2], jnp.float64)
            y1, carry = solver.step(term, x, solver.init(term, x, ts), ts[0], ts[1], KEY)
            return solver.step(term, y1, carry, ts[1], ts[2], KEY)[1][0], y1

        at_zero, uncorrected = corrected_first_point(0.0)
        gaps = [float(jnp.max(jnp.abs(corrected_first_point(d)[0] - at_zero))) for d in (1e-4, 1e-6)]
        moved = float(jnp.max(jnp.abs(at_zero - uncorrected)))
        if variant == "bh2":
            assert gaps[1] < 1e-4 and gaps[1] < gaps[0] / 10, gaps  # O(δ): continuous at δ = 0
            assert moved > 1e-2, moved  # and the correction is not vacuous
        else:
            assert moved == 0.0


@pytest.mark.parametrize(
    "process,prediction", [(VPSDE(), "eps"), (CondOTPath(), "velocity")], ids=["VP", "CondOT"]
)
def test_sa_solver_reduces_to_deis_and_to_sde_dpm_solver_pp(process, prediction):
    """Without its corrector SA-Solver's predictor is the exponential Adams–Bashforth step of the SDE
    family: at τ = 0 it is DEIS-tAB-p (p = 1, 2, 3), at τ = 1 and p = 2 SDE-DPM-Solver++ 2M with the
    exact ('heun') coefficient (in the log-SNR), at p = 1 SDE-DPM-Solver++ 1 — same noise (the step
    keys are drawn alike), float64, measured ≤ 1e-14 on samples of size ≈ 4."""
    mix = mixture_2d()
    with x64():
        model = mix.model(process, prediction)
        x = process.prior_sample(jax.random.key(0), (128, 2), jnp.float64)

        def draw(solver):
            return dj.sample(solver, model, process, jax.random.key(1), num_steps=12, x_init=x).samples

        for p in (1, 2, 3):
            a, b = draw(SASolver(predictor_order=p, corrector_order=0, tau=0.0)), draw(DEIS(order=p))
            assert float(jnp.max(jnp.abs(a - b))) < 1e-10, p
        for p in (1, 2):  # SDE-DPM-Solver++ lives in the log-SNR ('auto' is the flow time on CondOT)
            a = draw(SASolver(predictor_order=p, corrector_order=0, tau=1.0, tau_interval=(0.0, np.inf),
                              interpolate_in="log_snr"))  # fmt: skip
            b = draw(DPMSolverPPSDE(order=p, second_order="heun"))
            assert float(jnp.max(jnp.abs(a - b))) < 1e-10, p
        corrected = draw(SASolver(tau=1.0, tau_interval=(0.0, np.inf)))
        assert float(jnp.max(jnp.abs(corrected - b))) > 1e-3  # the corrector is not vacuous


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_sa_solver_is_exact_in_distribution_for_a_point_mass(tau):
    """Data = a point mass at m: x̂0 ≡ m, every Adams correction vanishes and each stochastic step is
    the exact transition of the SDE family, for any step size: from the exact marginal at t_noise, 6
    steps (predictor 2, corrector 2) on VP must give x ~ N(α m, σ² I) at t_end. z-tests on the mean
    (per coordinate) and the variance (pooled; its s.e. √(2/(n − 1))·σ²), |z| < 4.5 over n = 20000;
    a wrong noise scale √(1 − e^{−2τ²h}) or decay e^{−τ²h} shifts the variance by ≫ 4.5 s.e."""
    process, n = VPSDE(), 20000
    m = jnp.asarray([1.5, -0.5])
    model = lambda x, t: jnp.broadcast_to(m, x.shape)  # noqa: E731  (an 'x0' prediction)
    t_end = process.data_end(1e-2)
    c0, c1 = process.coefficients(jnp.asarray(process.t_noise)), process.coefficients(jnp.asarray(t_end))
    x = c0.alpha * m + c0.sigma * jax.random.normal(jax.random.key(5), (n, 2))
    solver = SASolver(tau=tau, tau_interval=(0.0, np.inf))
    out = dj.sample(solver, model, process, jax.random.key(6), num_steps=6, x_init=x, prediction="x0",
                    t_eps=1e-2, denoise_final=False).samples  # fmt: skip
    out = np.asarray(out, np.float64)
    z_mean = (out.mean(0) - np.asarray(c1.alpha * m)) / (float(c1.sigma) / np.sqrt(n))
    var = out.var(0, ddof=1).mean()
    z_var = (var - float(c1.sigma) ** 2) / (float(c1.sigma) ** 2 * np.sqrt(2.0 / (2 * n - 2)))
    assert np.all(np.abs(z_mean) < 4.5) and abs(z_var) < 4.5, (z_mean, z_var)


def test_sa_solver_samples_the_mixture():
    """SA-Solver with its defaults (predictor 2, corrector 2, τ = 1 on σ/α ∈ (0.72, 25]) samples the 2D ring
    like SDE-DPM-Solver++ (same criteria and settings as `test_sde_dpm_solver_pp_samples_the_mixture`)."""
    mix, process = mixture_2d(), VPSDE()
    res = dj.sample("sa_solver", mix.model(process, "eps"), process, jax.random.PRNGKey(2), (N_SAMPLES, 2),
                    30, grid="logsnr")  # fmt: skip
    ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(102), CHUNKS)
    gap = log_prob_gap(res.samples, "2d")
    assert ratio < SW_THRESHOLD and abs(gap) < LOGP_TOL and res.nfe == 31, (ratio, gap, res.nfe)


def test_sa_solver_refuses_bad_options_and_a_stochastic_grid_towards_the_noise():
    for bad in (dict(predictor_order=4), dict(corrector_order=5), dict(tau=-1.0), dict(tau=float("nan")),
                dict(tau_interval=(2.0, 1.0)), dict(tau_interval=(1.0,))):  # fmt: skip
        with pytest.raises(ValueError, match="sa_solver"):
            SASolver(**bad)
    mix, process = mixture_2d(), VPSDE()
    term = as_flow(mix.model(process, "eps"), process)
    with pytest.raises(ValueError, match="towards the data"):
        dj.integrate(SASolver(), term, jnp.zeros((4, 2)), jnp.linspace(1e-3, 1.0, 5))
    dj.integrate(SASolver(tau=0.0), term, jnp.zeros((4, 2)), jnp.linspace(1e-3, 1.0, 5))  # τ = 0: an ODE


# -- the flow time as the interpolation variable ----------------------------------------------------
def _flow_time_integrand(tau, l_t, h, nodes, j):
    """e^{−(h−τ)} L_j(v(l_t + τ)), L_j Lagrange's basis on the nodes (in v = sigmoid(l))."""
    v = 1.0 / (1.0 + np.exp(-(l_t + tau)))
    basis = np.prod([(v - nodes[i]) / (nodes[j] - nodes[i]) for i in range(len(nodes)) if i != j])
    return np.exp(-(h - tau)) * basis


def test_flow_time_coefficients_integrate_the_lagrange_polynomial_in_v():
    """With `interpolate_in='flow_time'` DEIS/SA-Solver integrate the Lagrange polynomial in
    v = sigmoid(l): c_j = ∫_0^h e^{−(h−τ)} L_j(v(l_t + τ)) dτ with nodes v(l_t), v(l_j). Checked against
    scipy's adaptive quadrature (float64, 1e-9) on steps on both sides of l = 0 (the two branches of
    `flow_time_offsets`), with a stored node at l = −∞ (a flow's α = 0 start, v = 0); and the first
    step's corrector weight `first_step_from_alpha_zero` against e^{−l_n}∫_{−∞}^{l_n} e^l v(l)/v(l_n) dl
    on both sides of its series switch (U = e^{l_n} = 0.1), → ½ as U → 0."""
    from scipy.integrate import quad

    from diffjax.solvers.deis import deis_coefficients
    from diffjax.solvers.multistep import flow_time_offsets
    from diffjax.solvers.sa_solver import first_step_from_alpha_zero

    v = lambda l: 1.0 / (1.0 + np.exp(-l))  # noqa: E731
    with x64():
        for l_t, h, stored in ((-2.0, 0.7, [-2.9, -np.inf]), (1.5, 1.2, [0.4, -0.8]), (-0.3, 2.5, [-np.inf])):
            got = deis_coefficients(jnp.float64(h), [s_ - l_t for s_ in stored],
                                    coordinate=flow_time_offsets(jnp.float64(l_t)))  # fmt: skip
            nodes = [v(l_t)] + [v(s_) for s_ in stored]
            for j, c in enumerate(got, start=1):
                want = quad(_flow_time_integrand, 0.0, h, args=(l_t, h, tuple(nodes), j), epsabs=1e-13)[0]
                assert abs(float(c) - want) < 1e-9, (l_t, h, stored, j, float(c), want)
        for l_n in (-12.0, -4.0, np.log(0.09), np.log(0.11), 0.0, 2.0, 6.0):
            want = quad(lambda l, ln=l_n: np.exp(l - ln) * v(l) / v(ln), -60.0, l_n, epsabs=1e-14)[0]
            got = float(first_step_from_alpha_zero(jnp.float64(l_n)))
            assert abs(got - want) < 1e-9 * max(1.0, want), (l_n, got, want)
        assert abs(float(first_step_from_alpha_zero(jnp.float64(-30.0))) - 0.5) < 1e-12


def test_flow_time_multistep_keeps_its_order_from_a_flows_alpha_zero_start():
    """On CondOT and the cosine path (Gaussian data, exact flow map, float64), from the α = 0 start on
    uniform grids of 32/64/128 steps to t = 0.9, `lower_order_final=False`: in the flow time DEIS-2 and
    SA-Solver 1+2 converge at order 2 and SA-Solver 2+3 at order 3 (|fitted − p| < 0.3; measured
    1.97/1.97/2.91 on CondOT, 1.92/1.94/2.82 on the cosine path), with a smaller error at 64 steps than
    the same scheme in the log-SNR, whose second step cannot use the start (a node at l = −∞):
    measured DEIS-2 2.0e-4 vs 3.9e-4, SA 2+3 5.4e-5 vs 1.2e-4 (CondOT), 1.5e-4 vs 2.7e-4 and
    6.2e-5 vs 1.5e-4 (cosine)."""
    from diffjax.processes.paths import CosinePath

    steps, t_stop = [32, 64, 128], 0.9
    cases = [(DEIS, dict(order=2), 2), (SASolver, dict(predictor_order=1, corrector_order=2, tau=0.0), 2),
             (SASolver, dict(predictor_order=2, corrector_order=3, tau=0.0), 3)]  # fmt: skip
    with x64():
        for process in (CondOTPath(), CosinePath()):
            mu, s = jnp.linspace(-1.0, 1.5, 4), 0.5
            term = as_flow(gaussian(mu, s**2 * jnp.eye(4)).model(process, "velocity"), process, "velocity")
            x = jax.random.normal(KEY, (64, 4))
            exact = gaussian_flow_map(process, mu, s, x, process.t_noise, t_stop)

            def errors(solver, term=term, x=x, exact=exact):
                ys = [dj.integrate(solver, term, x, jnp.linspace(0.0, t_stop, n + 1)).y for n in steps]
                return [float(jnp.sqrt(jnp.mean((y - exact) ** 2))) for y in ys]

            for cls, opts, order in cases:
                in_v = errors(cls(interpolate_in="flow_time", **opts, **FULL))
                assert abs(fitted_order(steps, in_v) - order) < 0.3, (process, cls, opts, in_v)
                if order == 2 and cls is SASolver:
                    continue  # SA 1+2 has no history node to place: the two variables agree closely
                in_l = errors(cls(interpolate_in="log_snr", **opts, **FULL))
                assert in_v[1] < in_l[1], (process, cls, opts, in_v, in_l)


def test_flow_time_second_step_uses_the_alpha_zero_start_as_a_node():
    """An x0-model linear in the flow time, x̂0 = a + b·v (CondOT: v = t), integrated over the grid
    (0, 0.3, 0.6): DEIS-2 and SA-Solver 2+2's predictor in the flow time take the start (α = 0,
    l = −∞) as the second node, so their second step is exact — it equals the exact semi-linear
    transition y₂ = (σ₂/σ₁) y₁ + σ₂ ∫_{l₁}^{l₂} e^l (a + b v(l)) dl of their own y₁ (scipy quadrature,
    float64, 1e-10) — where in the log-SNR the node lies at infinity and the step is first order
    (off by > 1e-3)."""
    from scipy.integrate import quad

    process = CondOTPath()
    with x64():
        a, b = jnp.asarray([0.3, -1.2]), jnp.asarray([2.0, 0.5])
        ts = jnp.asarray([0.0, 0.3, 0.6])
        term = as_flow(lambda x, t: a + b * jnp.expand_dims(t, -1) + 0.0 * x, process, "x0")
        x = jax.random.normal(KEY, (3, 2), jnp.float64)
        l1, l2 = (float(0.5 * process.log_snr(t)) for t in ts[1:])
        s1, s2 = (float(process.sigma(t)) for t in ts[1:])
        v = lambda l: 1.0 / (1.0 + np.exp(-l))  # noqa: E731
        integral = [quad(lambda l, k=k: np.exp(l) * float(a[k] + b[k] * v(l)), l1, l2, epsabs=1e-14)[0]
                    for k in range(2)]  # fmt: skip
        predictor = SASolver(predictor_order=2, corrector_order=0, tau=0.0, **FULL)
        for solver in (DEIS(order=2, **FULL), predictor):
            gaps = {}
            for variable in ("flow_time", "log_snr"):
                s_ = dataclasses.replace(solver, interpolate_in=variable)
                y1, carry = s_.step(term, x, s_.init(term, x, ts), ts[0], ts[1], KEY)
                y2, _ = s_.step(term, y1, carry, ts[1], ts[2], KEY)
                exact = (s2 / s1) * y1 + s2 * jnp.asarray(integral)
                gaps[variable] = float(jnp.max(jnp.abs(y2 - exact)))
            assert gaps["flow_time"] < 1e-10 and gaps["log_snr"] > 1e-3, (solver, gaps)
