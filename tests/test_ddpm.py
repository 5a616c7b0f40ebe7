"""Tests of the discrete DDPM chain against independent float64 computations and Monte Carlo.

Statistical checks use fixed seeds and z-scores built from the stated standard errors; a bound of
|z| < 4 has a per-check false-alarm probability of 6e-5 under a correct implementation.
Deterministic float32 checks use tolerances from float32 rounding (ε₃₂ ≈ 6e-8) with the margin
stated at each assertion.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from diffjax.flow import ProbabilityFlow
from diffjax.likelihood import variational_bound
from diffjax.losses import dsm_loss
from diffjax.oracle import gaussian
from diffjax.parameterization import convert
from diffjax.processes import VPSDE, DDPMChain
from diffjax.processes.ddpm import discretized_gaussian_log_likelihood, normal_kl
from diffjax.solvers import Ancestral

EPS32 = float(np.finfo(np.float32).eps)
LN2 = np.log(2.0)
CHAINS = {
    "linear": lambda: DDPMChain.linear(1000),
    "cosine": lambda: DDPMChain.cosine(1000),
    "short": lambda: DDPMChain.linear(8, 0.05, 0.4),
}


def _np_schedule(chain):
    """float64 (β_t, α_t) for t = 1..T and ᾱ_t for t = 0..T, by sequential products."""
    b = np.asarray(chain.betas, np.float64)
    return b, 1.0 - b, np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _bayes_posterior(chain, t, x0, xt, s=None):
    """Condition the joint Gaussian of (x_s, x_t) | x0 on x_t (s = t − 1 by default), built step by
    step: x_s ~ N(√ᾱ_s x0, 1 − ᾱ_s) and x_t = √(Π α_k) x_s + √(1 − Π α_k) z, k = s+1..t (for
    s = t − 1: x_t = √α_t x_{t−1} + √β_t z)."""
    b, a, ab = _np_schedule(chain)
    s = t - 1 if s is None else s
    alpha, ab_prev = np.prod(a[s:t]), ab[s]
    beta = 1.0 - alpha if t - s > 1 else b[t - 1]
    mu1, mu2 = np.sqrt(ab_prev) * x0, np.sqrt(alpha * ab_prev) * x0
    cov = np.array(
        [
            [1 - ab_prev, np.sqrt(alpha) * (1 - ab_prev)],
            [np.sqrt(alpha) * (1 - ab_prev), alpha * (1 - ab_prev) + beta],
        ]
    )
    mean = mu1 + cov[0, 1] / cov[1, 1] * (xt - mu2)
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    return mean, var


def _ho_posterior(chain, t, x0, xt):
    """Ho et al. eqs. 6–7 in float64: μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
    β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)."""
    b, a, ab = _np_schedule(chain)
    mean = (np.sqrt(ab[t - 1]) * b[t - 1] / (1 - ab[t]) * x0
            + np.sqrt(a[t - 1]) * (1 - ab[t - 1]) / (1 - ab[t]) * xt)  # fmt: skip
    return mean, b[t - 1] * (1 - ab[t - 1]) / (1 - ab[t])


# -- posterior q(x_{t-1} | x_t, x0) -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_posterior_matches_bayes_on_joint_gaussian(name):
    chain = CHAINS[name]()
    T = chain.num_steps
    ts = np.array(sorted({1, 2, 3, T // 2, T - 1, T}))
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(ts.size, 3))
    xt = rng.normal(size=(ts.size, 3))
    mean, var, logvar = chain.posterior_mean_variance(
        jnp.asarray(xt, jnp.float32), jnp.asarray(x0, jnp.float32), jnp.asarray(ts)
    )
    for i, t in enumerate(ts):
        ref_mean, ref_var = _bayes_posterior(chain, t, x0[i], xt[i])
        # float32 inputs/coefficients: relative error ~1e-7 each, values O(1) -> 2e-6 has 10x margin
        np.testing.assert_allclose(mean[i], ref_mean, rtol=2e-6, atol=2e-6)
        if t == 1:
            assert float(var[i].squeeze()) == 0.0  # β̃_1 = 0: x_0 is known
            _, ref_var2 = _bayes_posterior(chain, 2, x0[i], xt[i])
            np.testing.assert_allclose(float(logvar[i].squeeze()), np.log(ref_var2), rtol=1e-5)
        else:
            # β̃_t = β_t (1-ᾱ_{t-1})/(1-ᾱ_t): three factors each with rel. error <~ 5e-7
            np.testing.assert_allclose(float(var[i].squeeze()), ref_var, rtol=1e-5)
            np.testing.assert_allclose(float(logvar[i].squeeze()), np.log(ref_var), atol=1e-5)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_generic_posterior_at_the_previous_step_is_ho_posterior(name):
    """`posterior(x_t, x0, t, t − 1)` is Ho et al.'s (μ̃_t, β̃_t) (eqs. 6–7), the same as
    `posterior_mean_variance`."""
    chain = CHAINS[name]()
    T = chain.num_steps
    ts = np.array(sorted({2, 3, 4, T // 2, T - 1, T}))
    rng = np.random.default_rng(1)
    x0, xt = rng.normal(size=(ts.size, 3)), rng.normal(size=(ts.size, 3))
    x0j, xtj, tj = jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(ts)
    mean, var = chain.posterior(xtj, x0j, tj, tj - 1)
    pmv_mean, pmv_var, _ = chain.posterior_mean_variance(xtj, x0j, tj)
    np.testing.assert_array_equal(mean, pmv_mean)
    np.testing.assert_array_equal(var, pmv_var)
    assert var.shape == (ts.size, 1)
    for i, t in enumerate(ts):
        ref_mean, ref_var = _ho_posterior(chain, t, x0[i], xt[i])
        # float32 tolerances of test_posterior_matches_bayes_on_joint_gaussian
        np.testing.assert_allclose(mean[i], ref_mean, rtol=2e-6, atol=2e-6, err_msg=f"t={t}")
        np.testing.assert_allclose(float(var[i, 0]), ref_var, rtol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_generic_posterior_at_an_earlier_step_is_bayes(name):
    """At non-adjacent s < t (respaced sampling; s = 0: x_s is the data) `posterior(x_t, x0, t, s)` is
    the Bayes conditional of (x_s, x_t) | x0 under the chain."""
    chain = CHAINS[name]()
    T = chain.num_steps
    ts = np.array(sorted({2, 3, 4, T // 2, T - 1, T}))
    rng = np.random.default_rng(2)
    x0, xt = rng.normal(size=(ts.size, 3)), rng.normal(size=(ts.size, 3))
    x0j, xtj, tj = jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(ts)
    for s in (np.zeros_like(ts), ts // 2 - (ts // 2 == ts - 1)):  # s = 0 and s = t//2 (never t − 1)
        mean, var = chain.posterior(xtj, x0j, tj, jnp.asarray(s))
        for i, (t, s_i) in enumerate(zip(ts, s, strict=True)):
            ref_mean, ref_var = _bayes_posterior(chain, t, x0[i], xt[i], s=s_i)
            np.testing.assert_allclose(mean[i], ref_mean, rtol=2e-6, atol=2e-6, err_msg=f"t={t}, s={s_i}")
            if s_i == 0:
                assert float(var[i, 0]) == 0.0  # x_0 is given
            else:
                np.testing.assert_allclose(float(var[i, 0]), ref_var, rtol=1e-5, err_msg=f"t={t}, s={s_i}")


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_transition_over_one_step_is_the_forward_step(name):
    """`transition(t, t − 1)` = (√α_t, β_t): q(x_t | x_{t−1}) of Ho et al. eq. 2, at every step."""
    chain = CHAINS[name]()
    b, a, _ = _np_schedule(chain)
    t = np.arange(1, chain.num_steps + 1)
    alpha, var = chain.transition(jnp.asarray(t), jnp.asarray(t - 1))
    np.testing.assert_allclose(alpha, np.sqrt(a), rtol=2e-6)
    np.testing.assert_allclose(var, b, rtol=1e-5)  # the float32 tolerance of β̃_t (three factors)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_transition_over_several_steps_composes(name):
    """For r < s < t: α_{t|r}² = ᾱ_t/ᾱ_r, σ²_{t|s} = 1 − ᾱ_t/ᾱ_s, α_{t|s} α_{s|r} = α_{t|r} and
    σ²_{t|r} = α_{t|s}² σ²_{s|r} + σ²_{t|s}."""
    chain = CHAINS[name]()
    _, _, ab = _np_schedule(chain)
    T = chain.num_steps
    r, s, t = ([0, 1, 2, T // 4], [T // 2, 2, 3, T // 2], [T, 3, T, T - 1])
    a_ts, v_ts = chain.transition(jnp.asarray(t), jnp.asarray(s))
    a_sr, v_sr = chain.transition(jnp.asarray(s), jnp.asarray(r))
    a_tr, v_tr = chain.transition(jnp.asarray(t), jnp.asarray(r))
    # float32 schedule: ᾱ within 1e-5 (test_alpha_sigma_are_indexed_alpha_bars); products of
    # float32 numbers within a few ε₃₂
    np.testing.assert_allclose(a_tr**2, ab[t] / ab[r], rtol=1e-5)
    np.testing.assert_allclose(v_ts, 1 - ab[t] / ab[s], rtol=1e-5)
    np.testing.assert_allclose(a_ts * a_sr, a_tr, rtol=2e-6)
    np.testing.assert_allclose(a_ts**2 * v_sr + v_ts, v_tr, rtol=2e-6)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_seed_typo_variance_without_beta_is_wrong(name):
    """(1 − ᾱ_{t−1})/(1 − ᾱ_t) (β_t dropped) is not the Bayes posterior variance."""
    chain = CHAINS[name]()
    _, _, ab = _np_schedule(chain)
    for t in (2, chain.num_steps // 2, chain.num_steps):
        _, ref_var = _bayes_posterior(chain, t, 0.0, 0.0)
        typo = (1 - ab[t - 1]) / (1 - ab[t])
        correct = float(chain.posterior_variances[t - 1])
        np.testing.assert_allclose(correct, ref_var, rtol=1e-5)
        assert abs(typo - ref_var) / ref_var > 1e-3, (t, typo, ref_var)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_mean_from_true_eps_is_posterior_mean_from_true_x0(name):
    """μ_θ(x_t, ε) = posterior mean at x̂0(ε) (Ho et al. eq. 11) with the true ε is μ̃_t(x_t, x0)."""
    chain = CHAINS[name]()
    T = chain.num_steps
    ts = jnp.asarray(sorted({1, 2, T // 4, T // 2, T - 1, T}))
    key0, key1 = jax.random.split(jax.random.key(1))
    x0 = jax.random.normal(key0, (ts.size, 4))
    noised = chain.sample_marginal(key1, x0, ts)
    xt, eps = noised.x_t, noised.eps
    mu_eps = chain.posterior(xt, convert(eps, xt, ts, chain, "eps", "x0"), ts, ts - 1)[0]
    mu_post, _, _ = chain.posterior_mean_variance(xt, x0, ts)
    b, a, ab = _np_schedule(chain)
    ref = np.stack([_bayes_posterior(chain, int(t), x0[i], xt[i])[0] for i, t in enumerate(ts)])
    np.testing.assert_allclose(mu_eps, mu_post, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mu_eps, ref, rtol=1e-5, atol=1e-5)
    # the seed-notes variant 1/√ᾱ_t instead of 1/√α_t coincides only at t = 1 (ᾱ_1 = α_1)
    tt = np.asarray(ts)
    typo = (np.asarray(xt) - (b[tt - 1] / np.sqrt(1 - ab[tt]))[:, None] * np.asarray(eps)) / (
        np.sqrt(ab[tt])[:, None]
    )
    # (typo = ref/√ᾱ_{t−1}, so the difference is large once ᾱ_{t−1} is away from 1)
    err = np.abs(typo - ref).max(axis=1)
    assert err[0] < 1e-5
    assert np.all(err[tt >= max(2, T // 4)] > 1e-2), err


def test_x0_from_eps_inverts_sample_marginal():
    chain = DDPMChain.linear(1000)
    ts = jnp.asarray([1, 10, 100, 500, 900])
    x0 = jax.random.normal(jax.random.key(2), (5, 6))
    noised = chain.sample_marginal(jax.random.key(3), x0, ts)
    xt, eps = noised.x_t, noised.eps
    x0_hat = convert(eps, xt, ts, chain, "eps", "x0")
    # error of x_t (~1e-7) is amplified by 1/√ᾱ_t
    tol = 20 * EPS32 / np.sqrt(np.asarray(chain.alpha_bar(ts)))[:, None]
    assert np.all(np.abs(np.asarray(x0_hat - x0)) <= tol * (1 + np.abs(np.asarray(xt))))


# -- forward marginals ---------------------------------------------------------------------------
def test_sample_marginal_matches_sequential_chain():
    """20000 1-D paths through q(x_t|x_{t-1}) vs direct draws from q(x_t|x_0), all t at once."""
    chain = DDPMChain.linear(10, 0.05, 0.3)
    T, n, x0_val = chain.num_steps, 20000, 1.5
    _, _, ab = _np_schedule(chain)
    x0 = jnp.full((n, 1), x0_val)

    @jax.jit
    def sequential(key):
        def step(x, kt):
            k, t = kt
            mean, var = chain.q_step_mean_var(x, t)
            x = mean + jnp.sqrt(var) * jax.random.normal(k, x.shape)
            return x, x

        _, xs = jax.lax.scan(step, x0, (jax.random.split(key, T), jnp.arange(1, T + 1)))
        return xs[..., 0]  # (T, n)

    seq = np.asarray(sequential(jax.random.key(4)), np.float64)
    t_all = jnp.repeat(jnp.arange(1, T + 1), n)  # one call with a per-example t
    direct = chain.sample_marginal(jax.random.key(5), jnp.full((T * n, 1), x0_val), t_all).x_t
    direct = np.asarray(direct, np.float64).reshape(T, n)

    zs = []
    for t in range(1, T + 1):
        mu, var = np.sqrt(ab[t]) * x0_val, 1 - ab[t]
        for sample in (seq[t - 1], direct[t - 1]):
            zs.append((sample.mean() - mu) / np.sqrt(var / n))  # SE of a mean
            zs.append((sample.var(ddof=1) - var) / (var * np.sqrt(2 / (n - 1))))  # SE of a var
        zs.append((seq[t - 1].mean() - direct[t - 1].mean()) / np.sqrt(2 * var / n))
    zs = np.abs(np.array(zs))
    assert zs.max() < 4, zs.max()
    # the chain must also carry the step correlation Cov(x_{t-1}, x_t) = √α_t Var(x_{t-1})
    b, a, _ = _np_schedule(chain)
    t = 5
    cov = np.cov(seq[t - 2], seq[t - 1])[0, 1]
    ref = np.sqrt(a[t - 1]) * (1 - ab[t - 1])
    se = np.sqrt(((seq[t - 2] - seq[t - 2].mean()) * (seq[t - 1] - seq[t - 1].mean())).var() / n)
    assert abs(cov - ref) / se < 4


def test_alpha_sigma_are_indexed_alpha_bars():
    chain = DDPMChain.linear(1000)
    _, _, ab = _np_schedule(chain)
    t = jnp.asarray([0, 1, 2, 500, 1000])
    np.testing.assert_allclose(chain.alpha(t) ** 2, ab[np.asarray(t)], rtol=1e-5)
    np.testing.assert_allclose(chain.sigma(t) ** 2, 1 - ab[np.asarray(t)], rtol=1e-5, atol=0)
    np.testing.assert_allclose(chain.alpha(t.astype(jnp.float32)), chain.alpha(t))
    np.testing.assert_allclose(chain.alpha_bars, ab, rtol=1e-5)
    assert chain.alpha_bars.shape == (1001,) and float(chain.alpha_bars[0]) == 1.0
    # α_t = 1 − β_t is the ratio of consecutive ᾱ (no `alphas` array: `1 - chain.betas`)
    # (each ᾱ within the 1e-5 asserted above: 2e-5 for the ratio)
    np.testing.assert_allclose(chain.alpha_bars[1:] / chain.alpha_bars[:-1], 1 - np.asarray(chain.betas),
                               rtol=2e-5)
    assert chain.t_range == (0.0, 1000.0)
    assert (chain.t_data, chain.t_noise) == (0.0, 1000.0)  # data at step 0, noise at step T
    assert chain.discrete and not chain.has_rates
    # a pytree: chains stacked along a leading axis can be vmapped over
    stacked = jax.tree_util.tree_map(lambda b: jnp.stack([b, 2 * b]), chain)
    per_chain = jax.vmap(lambda c: c.alpha_bar(3))(stacked)
    np.testing.assert_allclose(per_chain[0], ab[3], rtol=1e-6)
    assert float(per_chain[1]) < float(per_chain[0])


# -- continuous limit ----------------------------------------------------------------------------
def test_linear_chain_converges_to_vpsde_like_one_over_T():
    """β_i = β̄(i/T)/T with β̄(s) = 0.1 + 19.9 s: ᾱ_i → exp(−∫₀^{i/T} β̄) = VPSDE().alpha(i/T)²."""
    sde = VPSDE()
    errs = []
    for T in (100, 1000, 10000):
        chain = DDPMChain.linear(T, 0.1 / T + 19.9 / T**2, 20.0 / T)
        i = np.arange(1, T + 1)
        np.testing.assert_allclose(chain.betas, (0.1 + 19.9 * i / T) / T, rtol=1e-5)
        ab = np.asarray(chain.alpha_bars[1:], np.float64)
        vp = np.asarray(sde.alpha(jnp.asarray(i / T, jnp.float32)), np.float64) ** 2
        errs.append(np.abs(ab - vp).max())
    errs = np.array(errs)
    ratios = errs[:-1] / errs[1:]
    # leading error ≈ c/T with c ≈ 1.9 (Riemann sum + second-order log term), far above the
    # float32 rounding (~1e-7) even at T = 1e4 (error ~2e-4)
    assert np.all((ratios > 8) & (ratios < 12.5)), (errs, ratios)
    assert errs[-1] < 1e-3


# -- Gaussian helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "m1,lv1,m2,lv2", [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.2, 0.5), (1.0, 0.7, 0.0, -0.3)]
)
def test_normal_kl_matches_monte_carlo(m1, lv1, m2, lv2):
    kl = float(normal_kl(m1, lv1, m2, lv2))
    n = 400_000
    x = np.random.default_rng(6).normal(m1, np.exp(0.5 * lv1), size=n)
    log_ratio = stats.norm.logpdf(x, m1, np.exp(0.5 * lv1)) - stats.norm.logpdf(
        x, m2, np.exp(0.5 * lv2)
    )
    se = log_ratio.std() / np.sqrt(n)
    if se == 0.0:
        assert kl == 0.0
    else:
        assert abs(log_ratio.mean() - kl) / se < 4, (kl, log_ratio.mean(), se)
    assert kl >= 0.0


GRID = 2.0 * np.arange(256) / 255.0 - 1.0


@pytest.mark.parametrize(
    "mean,scale",
    [(0.0, 0.5), (0.9, 0.01), (-1.2, 0.3), (0.3, 3.0), (0.5, 1e-3), (3.0, 0.1), (0.0, 30.0)],
)
def test_discretized_likelihood_is_a_distribution_over_256_bins(mean, scale):
    logp = discretized_gaussian_log_likelihood(jnp.asarray(GRID, jnp.float32), mean, jnp.log(scale))
    logp = np.asarray(logp, np.float64)
    # float64 reference: log(Φ(hi) − Φ(lo)), edges to ±∞, computed on the short tail side
    lo = np.where(GRID < -0.999, -np.inf, (GRID - 1 / 255 - mean) / scale)
    hi = np.where(GRID > 0.999, np.inf, (GRID + 1 / 255 - mean) / scale)
    right = lo > 0
    log_b = special.log_ndtr(np.where(right, -lo, hi))
    d = log_b - special.log_ndtr(np.where(right, -hi, lo))  # log Φ(b) − log Φ(a) > 0
    ref = log_b + np.log1p(-np.exp(-d))
    # float32 error model: each log Φ carries ~ε(1 + |log Φ|), amplified by 1/d when the bin is
    # narrow in standard deviations (cancellation in 1 − e^{−d}); z = (x − m)/s carries
    # ~ε(1 + |m|)/s, and |d log P/dz| <~ 10 on bins that matter. 4x margin on each.
    tol = 4 * EPS32 * (1 + np.abs(log_b)) / np.minimum(d, 1) + 40 * EPS32 * (1 + abs(mean)) / scale
    keep = ref > np.log(1e-30)
    assert np.all(np.abs(logp - ref)[keep] <= tol[keep])
    # the 256 probabilities sum to 1 within the propagated per-bin error
    assert abs(np.exp(logp).sum() - 1.0) <= np.sum(np.exp(ref) * tol) + 1e-7


def test_discretized_likelihood_far_tails_are_finite_and_differentiable():
    x = jnp.asarray([-1.0, 1.0, GRID[3]], jnp.float32)
    means = jnp.asarray([1.0, -1.0, 0.9])
    logp = discretized_gaussian_log_likelihood(x, means, jnp.log(0.01))
    ref = special.log_ndtr(np.array([(-1 + 1 / 255 - 1.0) / 0.01, -(1 - 1 / 255 + 1.0) / 0.01]))
    np.testing.assert_allclose(logp[:2], ref, rtol=1e-4)
    assert np.all(np.isfinite(logp))
    g = jax.grad(lambda m: discretized_gaussian_log_likelihood(x, m, jnp.log(0.01)).sum())(means)
    assert np.all(np.isfinite(g))


# -- schedules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("max_beta", [0.999, 0.02])
def test_cosine_schedule_matches_cos2_formula_and_clips(max_beta):
    T, s = 1000, 0.008
    chain = DDPMChain.cosine(T, s=s, max_beta=max_beta)
    t = np.arange(T + 1)
    f = np.cos(np.pi / 2 * (t / T + s) / (1 + s)) ** 2
    raw = 1 - f[1:] / f[:-1]
    betas = np.asarray(chain.betas, np.float64)
    clipped = raw >= max_beta
    assert clipped[-1]  # f(T) = cos²(π/2) = 0 forces the clip at t = T
    np.testing.assert_allclose(betas[clipped], max_beta, rtol=1e-7)
    np.testing.assert_allclose(betas[~clipped], raw[~clipped], rtol=1e-6)
    assert betas.max() <= np.float32(max_beta)
    # ᾱ_t follows f(t)/f(0) up to the first clipped step; float32 accumulation of log ᾱ over t
    # terms is bounded by t·ε₃₂·(1 + |log ᾱ_t|)
    upto = np.argmax(clipped) if clipped.any() else T
    log_ab = np.log(np.asarray(chain.alpha_bars, np.float64))[: upto + 1]
    ref = np.log(f[: upto + 1] / f[0])
    tol = t[: upto + 1] * EPS32 * (1 + np.abs(ref)) + 1e-7
    assert np.all(np.abs(log_ab - ref) <= tol), np.abs(log_ab - ref).max()


def test_invalid_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        DDPMChain.linear(0)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        DDPMChain.cosine(2.5)
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        DDPMChain.linear(10, 0.02, 1e-4)
    with pytest.raises(ValueError, match="beta_start must be > 0"):
        DDPMChain.linear(10, -1e-3, 0.02)
    with pytest.raises(ValueError, match="beta_end < 1"):
        DDPMChain.linear(10, 0.1, 1.5)
    with pytest.raises(ValueError, match="max_beta < 1"):
        DDPMChain.cosine(10, max_beta=1.0)
    with pytest.raises(ValueError, match="s must be >= 0"):
        DDPMChain.cosine(10, s=-0.1)
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        DDPMChain(jnp.asarray([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        DDPMChain(jnp.asarray(0.1))
    chain = DDPMChain.linear(10, 0.01, 0.2)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0.0, 10.0\]"):
        chain.alpha(11)
    with pytest.raises(ValueError, match=r"transition step.*\[1, 10\]"):
        chain.posterior_mean_variance(x, x, 0)
    with pytest.raises(ValueError, match="integer step"):
        chain.sigma(2.5)
    with pytest.raises(ValueError, match="shape"):
        chain.sample_marginal(jax.random.key(0), x, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="Unknown reverse variance"):
        chain.model_log_variance(2, variance="large")
    with pytest.raises(ValueError, match="ancestral: variance must be one of"):
        Ancestral(variance="large")
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        discretized_gaussian_log_likelihood(jnp.asarray([2.0]), 0.0, 0.0)
    with pytest.raises(ValueError, match="no time derivatives"):
        chain.drift_coeff(3)
    with pytest.raises(ValueError, match="no time derivatives"):
        chain.diffusion_squared(3)


def test_data_end_and_time_interval_are_integer_steps():
    """The chain's data end is step 0 (no offset by default); t_eps is a whole number of steps."""
    chain = DDPMChain.linear(10, 0.01, 0.2)
    assert chain.default_t_eps == 0.0
    assert chain.data_end() == 0.0 and chain.data_end(3) == 3.0 and chain.data_end(2.0) == 2.0
    assert isinstance(chain.data_end(3), float)
    assert chain.time_interval() == (0.0, 10.0) and chain.time_interval(1) == (1.0, 10.0)
    with pytest.raises(ValueError, match="integer number of steps"):
        chain.data_end(2.5)
    for bad in (-1, 10, 11):
        with pytest.raises(ValueError, match="t_eps"):
            chain.data_end(bad)


# -- interop with the generic process tools -----------------------------------------------------
def test_coefficients_and_oracle_interop():
    """α, σ exact, no derivatives (None: the chain has no time derivatives); the mixture oracle's exact
    ε-model works on the chain."""
    chain = DDPMChain.linear(100, 1e-3, 0.05)
    c = chain.coefficients(jnp.asarray([5, 50]))
    np.testing.assert_allclose(c.alpha, chain.alpha(jnp.asarray([5, 50])))
    assert c.d_alpha is None and c.d_sigma is None
    m, s2 = 0.4, 0.25
    oracle = gaussian(jnp.asarray([m]), jnp.asarray([[s2]]))
    t = jnp.asarray([1, 30, 100])
    xt = jnp.asarray([[0.3], [-0.5], [1.2]])
    eps_hat = oracle.model(chain, "eps")(xt, t)
    x0_hat = np.asarray(convert(eps_hat, xt, t, chain, "eps", "x0"))[:, 0]
    _, _, ab = _np_schedule(chain)
    a = ab[np.asarray(t)]
    ref = m + s2 * np.sqrt(a) / (a * s2 + 1 - a) * (np.asarray(xt)[:, 0] - np.sqrt(a) * m)
    np.testing.assert_allclose(x0_hat, ref, rtol=1e-4, atol=1e-5)


# -- training loss -------------------------------------------------------------------------------
def test_simple_eps_loss_jit_grad_vmap_without_retracing():
    """Ho et al.'s L_simple is `dsm_loss` on the chain: t ~ U{1..T} (integer), ε-matching."""
    chain = DDPMChain.linear(50, 1e-3, 0.2)
    _, _, ab = _np_schedule(chain)
    n, d = 512, 8

    def model_fn_for(w):
        def model_fn(x, t):
            assert t.shape == (x.shape[0],) and jnp.issubdtype(t.dtype, jnp.integer)
            return w * x

        return model_fn

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_and_grad(w, x0, key):
        return jax.value_and_grad(lambda w: dsm_loss(model_fn_for(w), x0, key, process=chain))(w)

    x0 = jax.random.normal(jax.random.key(7), (n, d))
    w = jnp.asarray(0.7)
    val, g = loss_and_grad(w, x0, jax.random.key(8))
    val2, _ = loss_and_grad(w + 0.1, x0 + 1.0, jax.random.key(9))  # same shapes: no retrace
    assert np.isfinite(val) and np.isfinite(val2)
    # the loss is quadratic in w for a fixed key: central difference is exact up to rounding
    h = 1e-2
    fd = (
        dsm_loss(model_fn_for(w + h), x0, jax.random.key(8), process=chain)
        - dsm_loss(model_fn_for(w - h), x0, jax.random.key(8), process=chain)
    ) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-3)

    # expectation with unit-Gaussian data (x_t ~ N(0, 1), Cov(x_t, ε) = √(1 − ᾱ_t)):
    # E = w² − 2w·mean_t √(1 − ᾱ_t) + 1; estimate it from 64 independent keys via vmap
    keys = jax.random.split(jax.random.key(10), 64)

    def one(key):
        k0, k1 = jax.random.split(key)
        return dsm_loss(model_fn_for(w), jax.random.normal(k0, (n, d)), k1, process=chain)

    losses = np.asarray(jax.vmap(one)(keys), np.float64)
    expect = 0.7**2 - 2 * 0.7 * np.mean(np.sqrt(1 - ab[1:])) + 1
    z = (losses.mean() - expect) / (losses.std(ddof=1) / np.sqrt(losses.size))
    assert abs(z) < 4, (losses.mean(), expect, z)


# -- reverse step --------------------------------------------------------------------------------
def _constant_eps(eps, x, t):
    return jnp.broadcast_to(eps, x.shape).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="variance")
def _ancestral_step(key, x_t, t, eps_pred, chain, variance):
    """One DDPM reverse step t → t − 1 of the ancestral solver with a model that predicts eps_pred."""
    flow = ProbabilityFlow(jax.tree_util.Partial(_constant_eps, eps_pred), chain, "eps")
    x_prev, _ = Ancestral(variance=variance).step(flow, x_t, None, t, t - 1, key)
    return x_prev


@pytest.mark.parametrize("variance", ["posterior", "transition"])
def test_ancestral_step_with_true_eps_samples_the_right_gaussian(variance):
    """Ho et al. Alg. 2: x_{t−1} ~ N(μ̃_t, σ_t²) with σ_t² = β̃_t ('posterior') or β_t ('transition')."""
    chain = DDPMChain.linear(20, 0.01, 0.2)
    b, _, ab = _np_schedule(chain)
    n, x0_val, xt_val = 20000, 0.6, -0.4
    step = _ancestral_step
    for t in (2, 10, 20):
        eps = (xt_val - np.sqrt(ab[t]) * x0_val) / np.sqrt(1 - ab[t])
        xt = jnp.full((n, 1), xt_val)
        # per-example t: the step keeps x's shape (checked abstractly before the large run)
        out = jax.eval_shape(functools.partial(step, variance=variance), jax.random.key(t), xt,
                             jnp.full((n,), t), jnp.full((n, 1), eps), chain)  # fmt: skip
        assert out.shape == xt.shape, out.shape
        x_prev = np.asarray(
            step(jax.random.key(t), xt, jnp.full((n,), t), jnp.full((n, 1), eps), chain, variance),
            np.float64,
        )[:, 0]
        mean, post_var = _bayes_posterior(chain, t, x0_val, xt_val)
        var = post_var if variance == "posterior" else b[t - 1]
        assert abs(x_prev.mean() - mean) / np.sqrt(var / n) < 4
        assert abs(x_prev.var(ddof=1) - var) / (var * np.sqrt(2 / (n - 1))) < 4
    # t = 1: no noise, the step returns x̂_0 exactly (for mixed per-example t as well)
    eps1 = (xt_val - np.sqrt(ab[1]) * x0_val) / np.sqrt(1 - ab[1])
    xt = jnp.asarray([[xt_val], [xt_val]])
    out = step(jax.random.key(0), xt, jnp.asarray([1, 1]), jnp.full((2, 1), eps1), chain, variance)
    np.testing.assert_allclose(out, x0_val, atol=1e-5)
    mixed = step(jax.random.key(1), xt, jnp.asarray([1, 5]), jnp.zeros((2, 1)), chain, variance)
    assert mixed.shape == xt.shape
    np.testing.assert_allclose(mixed[0], xt_val / np.sqrt(1 - b[0]), rtol=1e-6)
    assert abs(float(mixed[1, 0]) - xt_val / np.sqrt(1 - b[4])) > 1e-6  # noise added at t = 5


# -- variational bound ---------------------------------------------------------------------------
def test_elbo_terms_zero_for_exact_posterior_and_match_numpy():
    chain = DDPMChain.linear(10, 0.02, 0.3)
    x0 = jnp.asarray(GRID[[0, 100, 255]][:, None] * np.ones((1, 2)), jnp.float32)
    t = jnp.asarray([2, 5, 10])
    xt = chain.sample_marginal(jax.random.key(11), x0, t).x_t
    mean, _, logvar = chain.posterior_mean_variance(xt, x0, t)
    np.testing.assert_allclose(chain.elbo_terms(x0, xt, t, mean, logvar), 0.0, atol=1e-6)
    # a wrong model: KL in bits/dim vs a float64 formula log(s2/s1) + (s1² + Δ²)/(2 s2²) − ½
    model_mean, model_logvar = mean + 0.1, logvar + 0.5
    got = chain.elbo_terms(x0, xt, t, model_mean, model_logvar)
    s1, s2 = np.exp(0.5 * np.asarray(logvar)), np.exp(0.5 * np.asarray(model_logvar))
    kl = np.log(s2 / s1) + (s1**2 + 0.1**2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(got, np.broadcast_to(kl, (3, 2)).mean(1) / LN2, rtol=1e-5)
    # t = 1: decoder NLL in bits/dim
    t1 = jnp.ones(3, jnp.int32)
    nll = chain.elbo_terms(x0, xt, t1, jnp.zeros_like(x0), jnp.full((3, 1), np.log(0.09)))
    g = np.asarray(x0, np.float64)
    lo = np.where(g < -0.999, -np.inf, (g - 1 / 255) / 0.3)
    hi = np.where(g > 0.999, np.inf, (g + 1 / 255) / 0.3)
    ref = -np.log(special.ndtr(hi) - special.ndtr(lo)).mean(1) / LN2
    np.testing.assert_allclose(nll, ref, rtol=1e-5)
    # prior: KL(N(√ᾱ_T x0, 1 − ᾱ_T) ‖ N(0, 1)) = ½[ᾱ_T x0² − ᾱ_T − log(1 − ᾱ_T)] nats per dim
    _, _, ab = _np_schedule(chain)
    abT, g = ab[-1], np.asarray(x0, np.float64)
    ref_prior = 0.5 * (abT * g**2 - abT - np.log1p(-abT)).mean(1) / LN2
    np.testing.assert_allclose(chain.prior_kl(x0), ref_prior, rtol=1e-5)


@pytest.mark.parametrize("variance", ["posterior", "transition"])
def test_variational_bound_equals_direct_monte_carlo_of_log_ratio(variance):
    """Ho et al. eq. 5 (analytic KLs) vs an independent float64 Monte Carlo estimate of
    E_q[log q(x_{1:T}|x_0) − log p_θ(x_{0:T})] over forward paths, for an arbitrary ε-model."""
    chain = DDPMChain.linear(4, 0.1, 0.6)
    b, a, ab = _np_schedule(chain)
    T, n = chain.num_steps, 20000
    x0_row = np.asarray(GRID[[0, 160]])  # an edge bin and an interior bin
    D = x0_row.size

    def eps_model(x, t):
        return 0.5 * x + 0.05 * t[:, None]

    x0 = jnp.asarray(np.tile(x0_row, (n, 1)), jnp.float32)
    vb = jax.jit(
        lambda x0, key: variational_bound(eps_model, chain, x0, key, prediction="eps", variance=variance)
    )(x0, jax.random.key(12))
    analytic = np.asarray(vb.total, np.float64)
    np.testing.assert_allclose(vb.total, vb.prior + vb.terms.sum(1), rtol=1e-6)

    # direct estimate with numpy float64
    rng = np.random.default_rng(13)
    post_var = b * np.concatenate([[1.0], 1 - ab[1:-1]]) / (1 - ab[1:])  # β̃_1..β̃_T
    rev_var = (post_var if variance == "posterior" else b).copy()
    rev_var[0] = post_var[1]  # decoder variance β̃_2 (Ho et al.'s code)
    xs = [np.tile(x0_row, (n, 1))]
    log_q = 0.0
    for t in range(1, T + 1):
        mean = np.sqrt(a[t - 1]) * xs[-1]
        xs.append(mean + np.sqrt(b[t - 1]) * rng.normal(size=(n, D)))
        log_q = log_q + stats.norm.logpdf(xs[-1], mean, np.sqrt(b[t - 1])).sum(1)
    log_p = stats.norm.logpdf(xs[T]).sum(1)
    for t in range(T, 0, -1):
        eps_hat = 0.5 * xs[t] + 0.05 * t
        mu = (xs[t] - b[t - 1] / np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(a[t - 1])
        sd = np.sqrt(rev_var[t - 1])
        if t > 1:
            log_p = log_p + stats.norm.logpdf(xs[t - 1], mu, sd).sum(1)
        else:
            g = xs[0]
            lo = np.where(g < -0.999, -np.inf, (g - 1 / 255 - mu) / sd)
            hi = np.where(g > 0.999, np.inf, (g + 1 / 255 - mu) / sd)
            log_p = log_p + np.log(special.ndtr(hi) - special.ndtr(lo)).sum(1)
    direct = (log_q - log_p) / (D * LN2)
    se = np.sqrt(analytic.var() / n + direct.var() / n)
    z = (analytic.mean() - direct.mean()) / se
    assert abs(z) < 4, (analytic.mean(), direct.mean(), se)
