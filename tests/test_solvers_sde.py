"""Stochastic solvers (`diffjax.solvers`): exact one-step identities (Ho et al.'s update, DDIM η = 1 =
ancestral) and sampling of 2D and 16D Gaussian mixtures with the exact model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_util import (
    CHUNKS,
    LOGP_TOL,
    N_SAMPLES,
    SW_THRESHOLD,
    EvalCounter,
    log_prob_gap,
    mixture_2d,
    mixture_16d,
    sw_ratio,
)

import diffjax as dj
from diffjax.processes import VESDE, VPSDE, CondOTPath, DDPMChain


def _one_step(solver, process, model, x, t, t_next, key) -> jax.Array:
    """One `solver.step` of the model's probability flow from t to t_next (the model declares its
    prediction), from the solver's initial carry."""
    term = dj.ProbabilityFlow(model, process, model.prediction)
    t, t_next = jnp.asarray(t, x.dtype), jnp.asarray(t_next, x.dtype)
    carry = solver.init(term, x, jnp.stack([t, t_next]))
    return solver.step(term, x, carry, t, t_next, key)[0]


@pytest.mark.parametrize("variance", ["posterior", "transition"])
def test_ancestral_step_on_the_ddpm_chain_is_ho_et_al_update(variance):
    """On the T = 1000 chain the ancestral step from t to t − 1 equals Ho et al.'s Alg. 2 update
    (eq. 11), x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√(1 − β_t) + σ_t z, written here from the chain's
    β_t and ᾱ_t, with σ_t² = β̃_t ('posterior') or β_t ('transition'), the same noise z, and z = 0 at
    t = 1; at t = 1 (no noise), 2, 500 and 1000; float32 round-off of the two formulas is ~1e-6
    relative."""
    chain = DDPMChain.linear(1000)
    mix = mixture_2d()
    model = mix.model(chain, "eps")
    solver = dj.Ancestral(variance=variance)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) * 3.0
    for t in (1, 2, 500, 1000):
        key = jax.random.PRNGKey(t)
        ours = _one_step(solver, chain, model, x, t, t - 1, key)
        beta, alpha_bar = chain.betas[t - 1], chain.alpha_bars[t]
        var = chain.posterior_variances[t - 1] if variance == "posterior" else beta
        std = jnp.sqrt(var) if t > 1 else 0.0
        eps = model(x, jnp.full((64,), t))
        z = jax.random.normal(key, x.shape, x.dtype)
        ho = (x - beta / jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(1.0 - beta) + std * z
        np.testing.assert_allclose(ours, ho, rtol=1e-5, atol=1e-5 * float(jnp.abs(ho).max()))


@pytest.mark.parametrize("process", [VPSDE(), CondOTPath(), VESDE()], ids=str)
def test_ddim_eta_one_is_ancestral_and_eta_zero_is_dpm_solver_first_order(process):
    """Two independent formulas agree with the same noise: DDIM η = 1 (Song et al. eq. 16 in log-SNR
    form) equals the Gaussian-posterior step; DDIM η = 0 equals DPM-Solver++ of order 1."""
    mix = mixture_2d()
    is_flow = process.t_data > process.t_noise
    model = mix.model(process, "velocity" if is_flow else "eps")
    t, t_next = (0.3, 0.45) if is_flow else (0.6, 0.4)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) * 2.0
    key = jax.random.PRNGKey(1)
    np.testing.assert_allclose(
        _one_step(dj.DDIM(eta=1.0), process, model, x, t, t_next, key),
        _one_step(dj.Ancestral(), process, model, x, t, t_next, key), rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    np.testing.assert_allclose(
        _one_step(dj.DDIM(), process, model, x, t, t_next, key),
        _one_step(dj.DPMSolverPP(order=1), process, model, x, t, t_next, key),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


SDE_CASES = [
    ("VPSDE", "euler_maruyama", {}, 200),
    ("VPSDE", "ancestral", {}, 200),
    ("VPSDE", "ddim", {"eta": 0.5}, 100),
    ("VPSDE", "pc", {"snr": 0.16, "n_corrector": 1}, 100),
    ("VESDE", "pc", {"snr": 0.16, "n_corrector": 1}, 100),
    ("VPSDE", "edm", {"s_churn": 10.0}, 50),
    ("CondOT", "euler_maruyama", {}, 200),
    ("CondOT", "ancestral", {}, 200),
    ("DDPM", "ancestral", {}, 1000),
]
PROCESSES = {
    "VPSDE": (VPSDE(), "eps", "logsnr"),
    "VESDE": (VESDE(sigma_max=20.0), "eps", "logsnr"),
    "CondOT": (CondOTPath(), "velocity", "logsnr"),
    "DDPM": (DDPMChain.linear(1000), "eps", "uniform"),  # Ho et al.'s chain, all T = 1000 steps
}


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("proc_name,name,opts,steps", SDE_CASES, ids=lambda v: str(v))
def test_sde_samplers_reach_the_mixture(dim, proc_name, name, opts, steps):
    """With the exact model, 4000 samples are within SW_THRESHOLD of the sliced-W2 noise floor and
    LOGP_TOL of the data's mean log-density (thresholds and their null distributions in
    samplers_util); the reported NFE is the runtime count."""
    mix = mixture_2d() if dim == 2 else mixture_16d()
    process, pred, grid = PROCESSES[proc_name]
    model = EvalCounter(mix.model(process, pred))
    res = dj.sample(name, model, process, jax.random.PRNGKey(dim), (N_SAMPLES, dim), steps, grid=grid,
                    **opts)  # fmt: skip
    ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(200 + dim), CHUNKS)
    gap = log_prob_gap(res.samples, f"{dim}d")
    assert ratio < SW_THRESHOLD and abs(gap) < LOGP_TOL, (ratio, gap)
    assert res.nfe == model.count


def test_ddim_and_dpm_solver_on_the_ddpm_chain_reach_the_mixture():
    """The classic respaced use of the T = 1000 chain: DDIM with 50 and DPM-Solver++ 2M with 20
    integer steps (only α and σ of the chain are needed) pass both mixture criteria in 2D."""
    chain, mix = DDPMChain.linear(1000), mixture_2d()
    for name, steps in (("ddim", 50), ("dpm_solver_pp", 20)):
        res = dj.sample(name, mix.model(chain), chain, jax.random.PRNGKey(0), (N_SAMPLES, 2), steps)
        ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(1), CHUNKS)
        gap = log_prob_gap(res.samples, "2d")
        assert ratio < SW_THRESHOLD and abs(gap) < LOGP_TOL, (name, ratio, gap)


def test_sde_criteria_reject_too_few_steps():
    """Euler–Maruyama with 5 steps fails (its samples are visibly too diffuse in 2D)."""
    mix, process = mixture_2d(), VPSDE()
    res = dj.sample("euler_maruyama", mix.model(process), process, jax.random.PRNGKey(0),
                    (N_SAMPLES, 2), 5, grid="logsnr")  # fmt: skip
    ratio = sw_ratio(res.samples, mix, jax.random.PRNGKey(202), CHUNKS)
    assert ratio > SW_THRESHOLD or abs(log_prob_gap(res.samples, "2d")) > 2 * LOGP_TOL


def test_stochastic_samplers_reject_bad_options():
    mix, process = mixture_2d(), VPSDE()
    model = mix.model(process)
    for name, opts in [("ddim", {"eta": 1.5}), ("pc", {"predictor": "langevin"}),
                       ("pc", {"snr": -1.0}), ("edm", {"s_churn": -1.0})]:  # fmt: skip
        with pytest.raises(ValueError):
            dj.sample(name, model, process, jax.random.PRNGKey(0), (4, 2), 5, **opts)
