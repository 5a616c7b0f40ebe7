"""EDM preconditioning, noise-level distributions and weightings, checked against exact answers.

- the Bayes-optimal raw network F* (built from the mixture oracle's E[x0 | x_t]) wrapped by
  `precondition` reproduces E[x0 | x_t] on every process, the DDPM chain included;
- c_in gives the network unit-variance inputs and c_out unit-variance targets when Var x0 = σ_d²
  (Monte Carlo, tolerance from the standard error of a variance);
- with F* the loss equals its analytic irreducible value under every weighting and noise distribution
  (|z| from the per-example standard error), and a perturbed F* raises it;
- weightings agree with their papers' forms in their own spaces; the effective weightings integrate to
  the expected totals; the learned-uncertainty loss has its optimum at u = log L.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.losses import EDMWeighting, MinSNRWeighting, loss_weight, make_weighting
from diffjax.preconditioning import edm_scalings

SIGMA_DATA = 0.5
PROCESSES = {
    "vp": dj.VPSDE(),
    "subvp": dj.SubVPSDE(),
    "ve": dj.VESDE(sigma_min=0.01, sigma_max=50.0),
    "condot": dj.CondOTPath(),
    "cosine_path": dj.CosinePath(),
    "chain": dj.DDPMChain.linear(1000),
}


class OracleNetwork:
    """F*(u, c_noise) of the oracle: recover t from c_noise = −λ/8 (by the process's log-SNR), x from
    u = c_in·x̃, and return (E[x0|x] − c_skip·x̃)/c_out — the raw network whose preconditioned output is
    exactly the posterior mean."""

    def __init__(self, mixture, process, sigma_data=SIGMA_DATA, offset=0.0):
        self.mixture, self.process, self.sigma_data, self.offset = mixture, process, sigma_data, offset

    def time(self, c_noise):
        lam = -8.0 * c_noise
        if self.process.discrete:
            steps = jnp.arange(1, int(self.process.t_noise) + 1)
            table = self.process.log_snr(steps)
            return steps[jnp.argmin(jnp.abs(table[None, :] - lam[:, None]), axis=1)].astype(lam.dtype)
        return self.process.time_at_log_snr(lam)

    def __call__(self, u, c_noise):
        t = self.time(c_noise)
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        x = u * jnp.sqrt(s**2 + (a * self.sigma_data) ** 2)
        sc = edm_scalings(a[:, 0], s[:, 0], self.sigma_data)
        x0 = self.mixture.predict(x, self.process, t, "x0")
        return (x0 - sc.skip[:, None] * x) / sc.out[:, None] + self.offset


def times(process, n, key):
    lo, hi = process.time_interval(1e-2 if not process.discrete else None)
    if process.discrete:
        return jax.random.randint(key, (n,), 1, int(process.t_noise) + 1).astype(jnp.float32)
    return jax.random.uniform(key, (n,), minval=lo + 1e-3, maxval=hi - 1e-3)


@pytest.mark.parametrize("name", PROCESSES)
def test_preconditioned_oracle_network_is_the_exact_denoiser(name):
    process, mixture = PROCESSES[name], dj.ring_mixture(4, radius=1.0, std=0.3)
    k_t, k_x = jax.random.split(jax.random.key(0))
    t = times(process, 256, k_t)
    x = process.sample_marginal(k_x, mixture.sample(k_x, 256)[0], t).x_t
    model = dj.precondition(OracleNetwork(mixture, process), process, SIGMA_DATA)
    assert model.prediction == "x0"
    exact = mixture.predict(x, process, t, "x0")
    np.testing.assert_allclose(model(x, t), exact, rtol=2e-4, atol=2e-4 * float(jnp.abs(exact).max()))


@pytest.mark.parametrize("name", ["vp", "ve", "condot", "chain"])
def test_network_input_and_target_have_unit_variance_on_data_of_variance_sigma_data(name):
    """Var(c_in·x̃) = 1 and Var(F*) = 1 when x0 ~ N(0, σ_d²I): at fixed t each coordinate is an
    independent sample, so the sample variance of n values has standard error √(2/n)."""
    process, n = PROCESSES[name], 200_000
    model = dj.precondition(lambda u, c: u, process, SIGMA_DATA)
    for t in ([10.0, 300.0, 990.0] if process.discrete else [0.05, 0.5, 0.95]):
        k0, k1 = jax.random.split(jax.random.key(int(t * 1000)))
        x0 = SIGMA_DATA * jax.random.normal(k0, (n, 1))
        noised = process.sample_marginal(k1, x0, jnp.full((n,), t))
        s = model.scalings(jnp.full((n,), t), x0)
        for values in (s.in_[:, None] * noised.x_t, model.network_target(x0, noised.x_t, noised.t)):
            assert abs(float(jnp.var(values)) - 1.0) < 5 * np.sqrt(2.0 / n), (t, float(jnp.var(values)))


@pytest.mark.parametrize("name", ["vp", "ve", "condot"])
@pytest.mark.parametrize("weighting, time", [
    ("edm", "lognormal"), ("edm", "uniform"), ("min_snr", "uniform"), ("eps", "lognormal"),
    ("likelihood", "uniform"), ("uniform", "logit_normal"), ("none", "lognormal"),
])  # fmt: skip
def test_loss_of_the_bayes_optimal_network_is_the_irreducible_loss(name, weighting, time):
    """Gaussian data N(0, s²I): with F* the x0-regression leaves exactly tr Cov(x0|x_t)/D = s²σ²/C
    per example, so the weighted loss is E_t[w(t)·s²σ²/(α²s² + σ²)] (the expectation over t computed
    from 100k draws of the same time sampler); a perturbed F* must raise it significantly."""
    process, s, dim, n = PROCESSES[name], 0.5, 4, 4096
    mixture = dj.gaussian(jnp.zeros(dim), s**2 * jnp.eye(dim))
    sampler = dj.losses.TIME_SAMPLERS[time](process, t_eps=1e-2)
    w = make_weighting(weighting)

    def loss(offset, key):
        model = dj.precondition(OracleNetwork(mixture, process, offset=offset), process, SIGMA_DATA)
        x0 = mixture.sample(jax.random.fold_in(key, 1), n)[0]
        return dj.denoising_loss(model, x0, key, process=process, target="x0", weighting=w,
                                 time_sampler=sampler, reduce=False)  # fmt: skip

    per = loss(0.0, jax.random.key(1))
    t = sampler(jax.random.key(2), 100_000)
    c = process.coefficients(t)
    weight = loss_weight(w, process, t, c, "x0")
    analytic = (1.0 if weight is None else weight) * dj.losses.irreducible_loss_gaussian(process, t, s, "x0")
    se = np.sqrt(float(jnp.var(per)) / n + float(jnp.var(analytic)) / t.size)
    z = (float(jnp.mean(per)) - float(jnp.mean(analytic))) / se
    assert abs(z) < 4.0, (z, float(jnp.mean(per)), float(jnp.mean(analytic)))
    worse = loss(2.0, jax.random.key(1))  # same draws, F* + 2 (the square dominates the cross term)
    assert float(jnp.mean(worse - per)) > 5 * float(jnp.std(worse - per)) / np.sqrt(n)


def test_weightings_match_their_papers_in_their_own_spaces():
    process = dj.VPSDE()
    t = jnp.linspace(0.01, 0.99, 50)
    c = process.coefficients(t)
    sigma_tilde, snr = c.sigma / c.alpha, (c.alpha / c.sigma) ** 2
    edm = EDMWeighting(0.5)
    np.testing.assert_allclose(loss_weight(edm, process, t, c, "x0"),
                               (sigma_tilde**2 + 0.25) / (sigma_tilde * 0.5) ** 2, rtol=1e-5)  # fmt: skip
    # EDM's weight on ‖D − x0‖² is 1/c_out²: the preconditioned network's own regression is unweighted
    np.testing.assert_allclose(loss_weight(edm, process, t, c, "x0"),
                               edm_scalings(c.alpha, c.sigma, 0.5).out ** -2, rtol=1e-5)  # fmt: skip
    m = MinSNRWeighting(5.0)
    np.testing.assert_allclose(loss_weight(m, process, t, c, "eps"), jnp.minimum(snr, 5.0) / snr, rtol=1e-5)
    np.testing.assert_allclose(loss_weight(m, process, t, c, "x0"), jnp.minimum(snr, 5.0), rtol=1e-5)
    np.testing.assert_allclose(loss_weight(m, process, t, c, "v"), jnp.minimum(snr, 5.0) / (snr + 1),
                               rtol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match=r"'min_snr': invalid options"):
        make_weighting("min_snr", gama=5)


def test_effective_weighting_is_the_density_times_the_eps_weight():
    """ε-matching with uniform t on VP: ∫ p(λ)·1 dλ = 1 over the covered λ range; x0-regression with
    w = 1 puts weight e^{−λ} on ε-MSE, so its effective weighting is e^{−λ}·p(λ)."""
    process, key = dj.VPSDE(), jax.random.key(0)
    edges = jnp.linspace(-12.0, 14.0, 105)
    sampler = dj.uniform_time(process)
    eps = dj.effective_weighting(process, sampler, "eps", "eps", edges, key)
    np.testing.assert_allclose(float(jnp.sum(eps * jnp.diff(edges))), 1.0, atol=1e-3)
    x0 = dj.effective_weighting(process, sampler, "none", "x0", edges, key)
    centers = 0.5 * (edges[1:] + edges[:-1])
    inside = eps > 0.02
    ratio = x0[inside] / (eps[inside] * jnp.exp(-centers[inside]))
    np.testing.assert_allclose(ratio, 1.0, rtol=0.15)  # bin width 0.25 in λ: e^{±0.125}


def test_lognormal_time_has_the_requested_noise_level_distribution():
    process, n = dj.VPSDE(), 100_000
    t = dj.lognormal_time(process, -1.2, 1.2)(jax.random.key(0), n)
    log_sigma = -0.5 * process.log_snr(t)
    from scipy.stats import norm

    # inside VP's range (t_eps = 1e-3 .. T) the levels keep their normal law: the mass of each band
    # matches N(−1.2, 1.2²) within 4 standard errors of a proportion
    for lo, hi in ((-3.0, -1.2), (-1.2, 0.0), (0.0, 2.0)):
        mass = norm.cdf(hi, -1.2, 1.2) - norm.cdf(lo, -1.2, 1.2)
        frac = float(jnp.mean((log_sigma > lo) & (log_sigma < hi)))
        assert abs(frac - mass) < 4 * np.sqrt(mass * (1 - mass) / n), (lo, hi, frac, mass)


def test_learned_uncertainty_loss_is_minimised_at_the_log_of_the_loss():
    """e^{−u}·L + u is minimal at u = log L (EDM2 eq. 21): the gradient in a constant u vanishes there."""
    process, mixture = dj.VPSDE(), dj.ring_mixture(4)
    model = mixture.model(process, "eps")
    x0 = mixture.sample(jax.random.key(0), 4096)[0]
    key = jax.random.key(1)

    def loss(u):
        return dj.dsm_loss(lambda x, t: model(x, t) + 0.2, x0, key, process=process,
                           log_uncertainty=lambda lam: jnp.full(lam.shape, u))  # fmt: skip

    base = float(dj.dsm_loss(lambda x, t: model(x, t) + 0.2, x0, key, process=process))
    assert abs(float(jax.grad(loss)(np.log(base)))) < 1e-5
    assert float(jax.grad(loss)(np.log(base) + 0.5)) > 0 > float(jax.grad(loss)(np.log(base) - 0.5))


def test_samplers_likelihood_and_guidance_take_the_preconditioned_model_unchanged():
    """The preconditioned oracle network is the exact x0-model, so a sampler and the likelihood give
    what they give with the oracle's own x0-model; classifier-free guidance of a preconditioned
    class-conditional network is the preconditioning of the guided raw output (D is affine in F)."""
    process, mixture = dj.VPSDE(), dj.ring_mixture(4, radius=1.0, std=0.3)
    model = dj.precondition(OracleNetwork(mixture, process), process, SIGMA_DATA)
    exact = mixture.model(process, "x0")
    key = jax.random.key(0)
    a = dj.sample("dpm_solver_pp", model, process, key, (64, 2), 8).samples
    b = dj.sample("dpm_solver_pp", exact, process, key, (64, 2), 8).samples
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    x = mixture.sample(key, 8)[0]
    la = dj.log_likelihood(model, process, x, solver="heun", num_steps=16, t_eps=1e-3).log_prob
    lb = dj.log_likelihood(exact, process, x, solver="heun", num_steps=16, t_eps=1e-3).log_prob
    np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-3)

    def labelled(u, c_noise, y):
        return u * (1.0 + y[:, None]) + c_noise[:, None]

    net = dj.precondition(labelled, process, SIGMA_DATA)
    y, t, w = jnp.array([0, 1, 2, 1]), jnp.full((4,), 0.4), 3.0
    guided = dj.cfg_model(net, y, w, 3)(x[:4], t)
    s = net.scalings(t, x[:4])
    u, c = s.in_[:, None] * x[:4], s.noise
    raw = (1 - w) * labelled(u, c, jnp.full((4,), 3)) + w * labelled(u, c, y)
    np.testing.assert_allclose(guided, s.skip[:, None] * x[:4] + s.out[:, None] * raw, rtol=1e-5, atol=1e-5)
