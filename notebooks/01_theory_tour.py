# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · A tour of the theory with an exact oracle
#
# Every object of score-based diffusion is available in closed form when the data are a Gaussian
# mixture $p_0 = \sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)$. Under a process
# $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ the marginal stays a mixture,
#
# $$p_t(x) = \sum_k w_k\,
# \mathcal N\!\big(x;\ \alpha_t\mu_k,\ \alpha_t^2\Sigma_k + \sigma_t^2 I\big),$$
#
# so densities, scores, denoisers, likelihoods and class posteriors are all exact
# (`diffjax.oracle.GaussianMixture`). This notebook uses them to check, numerically, the statements
# the rest of the library relies on: the marginals, the score, the probability-flow ODE and the
# reverse SDE, the likelihood by the instantaneous change of variables, and guidance.
#
# Set `DIFFJAX_NB_QUICK=1` for smaller sample sizes (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import diffjax as dj
from diffjax.metrics import sliced_wasserstein

QUICK = os.environ.get("DIFFJAX_NB_QUICK", "0") == "1"
N = 1000 if QUICK else 4000  # samples per distribution
key = jax.random.key(0)

# %% [markdown]
# ## The data and the process
#
# Three correlated Gaussians in 2D with class labels (the two lower components are class 0, the
# upper one class 1), noised by the variance-preserving SDE of Song et al. (2021),
#
# $$dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dW,\qquad
# \alpha_t = e^{-\frac12\int_0^t\beta},\quad \sigma_t^2 = 1-\alpha_t^2,$$
#
# with $\beta(t) = 0.1 + 19.9\,t$ on $t\in[0, 1]$.

# %%
mixture = dj.GaussianMixture.create(
    means=[[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]],
    covs=[[[0.30, 0.15], [0.15, 0.30]], [[0.30, -0.15], [-0.15, 0.30]], [[0.6, 0.0], [0.0, 0.1]]],
    weights=[0.3, 0.3, 0.4],
    labels=[0, 0, 1],
)
sde = dj.VPSDE()
ts_show = [0.0, 0.1, 0.25, 0.5, 1.0]
print("alpha_t:", np.round(np.asarray(sde.alpha(jnp.asarray(ts_show))), 4))
print("sigma_t:", np.round(np.asarray(sde.sigma(jnp.asarray(ts_show))), 4))

# %% [markdown]
# ## 1. The marginals $p_t$
#
# `mixture.log_prob(x, sde, t)` evaluates $\log p_t$ exactly. We plot $p_t$ on a grid and check that
# it integrates to one, and that $p_T$ is the prior $\mathcal N(0, I)$ up to the neglected
# $\alpha_T\mu$ (here $\alpha_T \approx 6.6\cdot 10^{-3}$).

# %%
lim, n_grid = 4.5, 121
u = np.linspace(-lim, lim, n_grid)
grid = jnp.asarray(np.stack(np.meshgrid(u, u), -1).reshape(-1, 2), jnp.float32)
cell = (u[1] - u[0]) ** 2

log_p = jax.jit(lambda x, t: mixture.log_prob(x, sde, t))  # compiled once, reused below

fig, axes = plt.subplots(1, len(ts_show), figsize=(3 * len(ts_show), 3), sharey=True)
for ax, t in zip(axes, ts_show, strict=True):
    p = np.exp(np.asarray(log_p(grid, t))).reshape(n_grid, n_grid)
    ax.imshow(p, origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
    ax.set_title(f"$p_t$, t = {t}")
    print(f"t = {t:4}: integral of p_t over the grid = {p.sum() * cell:.4f}")
plt.tight_layout()
plt.show()

prior_gap = jnp.max(jnp.abs(log_p(grid, sde.T) - sde.prior_logp(grid)))
print(f"max |log p_T - log N(0, I)| on the grid: {float(prior_gap):.3f}")

# %% [markdown]
# The marginal is also what the forward process produces: samples of
# $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ (`sde.sample_marginal`) have covariance
# $\alpha_t^2\,\mathrm{Cov}(x_0) + \sigma_t^2 I$.

# %%
key, k_data, k_noise = jax.random.split(key, 3)
x0_data, _ = mixture.sample(k_data, N)
t_mid = 0.25
xt = sde.sample_marginal(k_noise, x0_data, jnp.full((N,), t_mid)).x_t
cov_exact = sde.alpha(t_mid) ** 2 * mixture.covariance() + sde.sigma(t_mid) ** 2 * jnp.eye(2)
print("empirical Cov(x_t):\n", np.round(np.cov(np.asarray(xt).T), 3))
print("exact     Cov(x_t):\n", np.round(np.asarray(cov_exact), 3))

# %% [markdown]
# ## 2. The score and Tweedie's formula
#
# $$\nabla\log p_t(x) = -\sum_k r_k(x)\, C_k^{-1}(x - \alpha_t\mu_k),\qquad
# C_k = \alpha_t^2\Sigma_k + \sigma_t^2 I,$$
#
# with responsibilities $r_k(x) = p(k \mid x_t = x)$. Two checks: the closed-form score equals the
# automatic gradient of $\log p_t$, and the posterior mean satisfies Tweedie's formula
# $\mathbb E[x_0 \mid x_t = x] = (x + \sigma_t^2\nabla\log p_t(x))/\alpha_t$.

# %%
t_score = 0.25


@jax.jit
def score_checks(x, t):
    """(closed-form score, autodiff score, E[x0|x], Tweedie's E[x0|x]) at time t."""
    tb = jnp.full(x.shape[:1], t)
    score = mixture.score(x, sde, tb)
    autodiff = jax.grad(lambda z: jnp.sum(mixture.log_prob(z, sde, tb)))(x)
    x0_hat, _ = mixture.posterior_x0_eps(x, sde, tb)
    tweedie = (x + sde.sigma(t) ** 2 * score) / sde.alpha(t)
    return score, autodiff, x0_hat, tweedie


score, autodiff, x0_hat, tweedie = score_checks(grid, t_score)
rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))  # noqa: E731
print(f"score vs grad log p_t:     max relative difference {rel(score, autodiff):.1e}")
print(f"E[x0|x] vs Tweedie:        max relative difference {rel(x0_hat, tweedie):.1e}")
assert rel(score, autodiff) < 1e-4 and rel(x0_hat, tweedie) < 1e-4

sub = slice(None, None, 6)
g = np.asarray(grid).reshape(n_grid, n_grid, 2)[sub, sub]
s = np.asarray(score).reshape(n_grid, n_grid, 2)[sub, sub]
logp = np.asarray(log_p(grid, t_score)).reshape(n_grid, n_grid)
plt.figure(figsize=(4.5, 4.5))
plt.contourf(u, u, logp, levels=30, cmap="Greys")
plt.quiver(g[..., 0], g[..., 1], s[..., 0], s[..., 1], color="tab:red", width=0.004)
plt.title(f"score field at t = {t_score}")
plt.gca().set_aspect("equal")
plt.show()

# %% [markdown]
# ## 3. Probability-flow ODE vs reverse SDE
#
# Both run from $x_T\sim\mathcal N(0, I)$ back to $t \approx 0$ and have the marginals $p_t$:
#
# $$\text{PF-ODE:}\quad dx = \big[f(t)x - \tfrac12 g(t)^2\nabla\log p_t(x)\big]dt,\qquad
# \text{reverse SDE:}\quad dx = \big[f(t)x - g(t)^2\nabla\log p_t(x)\big]dt + g(t)\,d\bar W.$$
#
# We integrate them with the exact model `mixture.model(sde, "eps")` (which predicts
# $\mathbb E[\varepsilon \mid x_t]$ and declares it, so `dj.sample` needs no `prediction=`; the
# samplers convert it to the score $-\varepsilon/\sigma_t$): Heun (2nd order, deterministic) for
# the ODE, Euler–Maruyama for the SDE.
# The sliced Wasserstein distance (SW) to a *fresh* sample of the mixture is compared with its
# noise floor: the distribution of SW between two independent samples of the mixture itself
# (mean ± std over 10 pairs). In 2D it is dominated by how many points each mode receives, so it
# is far from zero; an exact sampler's SW is a draw from that same distribution.

# %%
model = mixture.model(sde, "eps")
key, k_ode, k_sde, k_a, k_null, k_sw = jax.random.split(key, 6)
fresh_a, _ = mixture.sample(k_a, N)


def sw_null(key, dist, reps=10):
    """SW between `reps` pairs of independent N-samples of `dist`: (mean, std)."""
    draw = jax.vmap(lambda k: dist.sample(k, N)[0])
    a, b = draw(jax.random.split(key, 2 * reps)).reshape(2, reps, N, -1)
    sw = jax.vmap(lambda x, y: sliced_wasserstein(x, y, k_sw))(a, b)
    return float(sw.mean()), float(sw.std())


floor, floor_std = sw_null(k_null, mixture)
threshold = floor + 3 * floor_std  # an exact sampler stays below this with high probability

ode = dj.sample("heun", model, sde, k_ode, (N, 2), 25, save_trajectory=True)
em_steps = 250 if QUICK else 1000
rsde = dj.sample("euler_maruyama", model, sde, k_sde, (N, 2), em_steps, save_trajectory=True)
sw_ode = float(sliced_wasserstein(ode.samples, fresh_a, k_sw))
sw_sde = float(sliced_wasserstein(rsde.samples, fresh_a, k_sw))
print(f"noise floor  SW(data, data)             = {floor:.4f} ± {floor_std:.4f}")
print(f"PF-ODE       SW(Heun, {ode.nfe:4d} evaluations) = {sw_ode:.4f}")
print(f"reverse SDE  SW(E-M,  {rsde.nfe:4d} evaluations) = {sw_sde:.4f}")

# A sharper check: the share of samples in each component (assigned by the exact posterior
# p(k | x) at t = 0) is binomial around w_k, with standard error sqrt(w_k (1 - w_k) / N).
se = jnp.sqrt(mixture.weights * (1 - mixture.weights) / N)
for name, res in [("PF-ODE", ode), ("reverse SDE", rsde)]:
    share = jnp.mean(mixture.component_posterior(res.samples), axis=0)
    z = (share - mixture.weights) / se
    print(f"{name:>11}: component shares {np.round(np.asarray(share), 3)} vs weights "
          f"{np.asarray(mixture.weights)}, z-scores {np.round(np.asarray(z), 1)}")  # fmt: skip
    assert bool(jnp.all(jnp.abs(z) < 4))

# %% [markdown]
# Both are at the noise floor. The metric does detect a biased sampler: Heun with only 2 steps
# (5 evaluations) lands well above it.

# %%
heun_2 = dj.sample("heun", model, sde, k_ode, (N, 2), 2)
sw_heun_2 = float(sliced_wasserstein(heun_2.samples, fresh_a, k_sw))
print(f"Heun, 2 steps ({heun_2.nfe} evaluations):  SW = {sw_heun_2:.4f}")
print(f"noise floor + 3 std = {threshold:.4f}")
assert sw_ode < threshold and sw_sde < threshold and sw_heun_2 > threshold

fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True, sharey=True)
axes[0].scatter(*np.asarray(fresh_a).T, s=1, alpha=0.4, c="tab:gray")
axes[0].set_title("mixture samples")
for ax, res, name, paths in [(axes[1], ode, "PF-ODE (Heun)", 60),
                             (axes[2], rsde, "reverse SDE (Euler-Maruyama)", 8)]:  # fmt: skip
    traj = np.asarray(res.trajectory)[:, :paths]
    ax.scatter(*np.asarray(res.samples).T, s=1, alpha=0.3, c="tab:red")
    ax.plot(traj[..., 0], traj[..., 1], lw=0.5, alpha=0.7, c="tab:blue")
    ax.set_title(f"{name}:\n{paths} trajectories, all samples", fontsize=10)
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
plt.show()

# %% [markdown]
# ## 4. Exact log-likelihood through the PF-ODE
#
# Along the ODE $dx/dt = v(x, t)$ the density evolves by $\frac{d}{dt}\log p_t(x_t) =
# -\nabla\!\cdot v(x_t, t)$, so
#
# $$\log p_{t_0}(x) = \log p_T(x_T) + \int_{t_0}^{T}\nabla\!\cdot v(x_t, t)\,dt .$$
#
# `dj.log_likelihood` solves the augmented ODE with an adaptive Tsit5 and the
# exact divergence (D = 2 Jacobian–vector products). With the exact model the result must match
# the analytic `mixture.log_prob(x, sde, t0)` up to the solver tolerance and the prior term: the
# default prior $\mathcal N(0, I)$ ignores $\alpha_T\mu$; the exact $\log p_T$ at the same
# end point $x_T$ removes that error too.

# %%
t0 = 1e-5
key, k_ll = jax.random.split(key)
x_test, _ = mixture.sample(k_ll, 64 if QUICK else 256)
exact = log_p(x_test, t0)
ll = jax.jit(lambda x: dj.log_likelihood(model, sde, x, t_eps=t0))(x_test)
ll_exact_prior = log_p(ll.noise, sde.T) + ll.delta_logp  # same ODE solve, exact log p_T(x_T)
err_default = float(jnp.max(jnp.abs(ll.log_prob - exact)))
err_exact = float(jnp.max(jnp.abs(ll_exact_prior - exact)))
print(f"mean log p_t0(x): analytic {float(exact.mean()):.5f}, "
      f"PF-ODE {float(ll.log_prob.mean()):.5f}  ({int(ll.nfe)} evaluations of v)")  # fmt: skip
print(f"max |error|, prior N(0, I): {err_default:.2e}")
print(f"max |error|, exact p_T:     {err_exact:.2e}")
assert bool(ll.success) and err_exact < 1e-3 and err_default < 2e-2

plt.figure(figsize=(4, 4))
plt.scatter(exact, ll.log_prob, s=6)
plt.plot([exact.min(), exact.max()], [exact.min(), exact.max()], "k--", lw=0.8)
plt.xlabel("analytic log p(x)")
plt.ylabel("PF-ODE log p(x)")
plt.show()

# %% [markdown]
# ## 5. Guidance
#
# **Classifier guidance** adds a classifier's gradient to the score (Bayes' rule):
#
# $$\nabla\log p_t(x\mid y) = \nabla\log p_t(x) + \nabla\log p_t(y\mid x),\qquad
# \text{scale } s:\ \nabla\log p_t(x) + s\,\nabla\log p_t(y\mid x).$$
#
# The exact noisy classifier is $\log p_t(y\mid x) = \log p_t(x\mid y) + \log p(y) - \log p_t(x)$,
# computed in log space from the class-conditional mixture `mixture.condition(y)` (the
# probabilities of `mixture.class_posterior` underflow to 0 far from class $y$, where their log
# would have an infinite gradient). At $s = 1$ the guided model must be exactly the conditional
# model of `mixture.condition(y)`.

# %%
y_target = 1
conditional = mixture.condition(y_target)
log_prior_y = jnp.log(jnp.sum(jnp.where(mixture.labels == y_target, mixture.weights, 0.0)))


def classifier_logp(x, t, y):
    """log p_t(y_target | x) of the exact noisy classifier, (batch,) (y is y_target, bound)."""
    del y
    return conditional.log_prob(x, sde, t) + log_prior_y - mixture.log_prob(x, sde, t)


def classifier_guided_eps(scale, x, t):
    return dj.classifier_guided_model(model, sde, classifier_logp, y_target, scale, prediction="eps")(x, t)


key, k_x, k_t = jax.random.split(key, 3)
x_probe = 2.0 * jax.random.normal(k_x, (512, 2))
t_probe = jax.random.uniform(k_t, (512,), minval=0.05, maxval=1.0)
guided_1 = jax.jit(classifier_guided_eps)(1.0, x_probe, t_probe)
exact_conditional = conditional.model(sde, "eps")
gap = rel(guided_1, jax.jit(lambda x, t: exact_conditional(x, t))(x_probe, t_probe))
print(f"classifier guidance s = 1 vs conditional model: max relative difference {gap:.1e}")
assert gap < 1e-4

# %% [markdown]
# Sampling across the scale (the scale enters as an array leaf of a `jax.tree_util.Partial`, so
# the sampler compiles once for all $s$): $s = 0$ is unconditional, $s = 1$ conditional (compare
# with fresh samples of $p(x\mid y)$ and their own noise floor), larger $s$ pushes samples away
# from the other class. Confidence is measured by the exact classifier at $t = 0$.

# %%
key, k_guid, k_ref, k_null_c = jax.random.split(key, 4)
ref_cond, _ = conditional.sample(k_ref, N)
floor_cond, floor_cond_std = sw_null(k_null_c, conditional)
threshold_cond = floor_cond + 3 * floor_cond_std
print(f"noise floor SW(p(x|y), p(x|y)) = {floor_cond:.4f} ± {floor_cond_std:.4f};  "
      f"class prior p(y={y_target}) = {float(jnp.exp(log_prior_y)):.2f}")  # fmt: skip


def guided_sweep(guided_fn, scales, name):
    """Heun samples for each scale (one compilation); prints confidence and SW to p(x|y)."""
    fig, axes = plt.subplots(1, len(scales), figsize=(3.2 * len(scales), 3.3), sharex=True,
                             sharey=True)  # fmt: skip
    sws, xs = {}, {}
    for ax, w in zip(axes, scales, strict=True):
        fn = jax.tree_util.Partial(guided_fn, jnp.asarray(w))
        x_w = xs[w] = dj.sample("heun", fn, sde, k_guid, (N, 2), 25, prediction="eps").samples
        conf = float(jnp.mean(mixture.class_posterior(x_w)[:, y_target]))
        sws[w] = float(sliced_wasserstein(x_w, ref_cond, k_sw))
        print(f"{name} = {w:3.1f}: mean p(y={y_target} | x) = {conf:.3f}, "
              f"SW to p(x | y) = {sws[w]:.4f}")  # fmt: skip
        ax.scatter(*np.asarray(x_w).T, s=1, alpha=0.3)
        ax.set_title(f"{name} = {w}")
        ax.set_aspect("equal")
    plt.show()
    return sws, xs


sw_cls, x_cls = guided_sweep(classifier_guided_eps, [0.0, 1.0, 3.0], "classifier guidance s")
assert sw_cls[1.0] < threshold_cond

# %% [markdown]
# **Classifier-free guidance** mixes a conditional and an unconditional prediction,
#
# $$\hat\varepsilon_w(x, t, y) = (1-w)\,\hat\varepsilon(x, t, \varnothing)
# + w\,\hat\varepsilon(x, t, y),$$
#
# here with the exact conditional and unconditional oracles (the null label $\varnothing$ is the
# index `n_classes`). $w = 0$ samples $p$, $w = 1$ samples $p(x\mid y)$, $w > 1$ sharpens
# towards $y$. With *exact* models CFG at $w$ and classifier guidance at $s = w$ are the same
# field, $\hat\varepsilon_\varnothing + w(\hat\varepsilon_y - \hat\varepsilon_\varnothing)$
# (since $-\sigma_t\nabla\log p_t(y\mid x) = \hat\varepsilon_y - \hat\varepsilon_\varnothing$),
# so from the same noise they must give the same samples. (For $w \neq 0, 1$ neither samples the
# tilted density $p(x)\,p(y\mid x)^w$: noising does not commute with the tilt.)

# %%
NULL = mixture.n_classes
per_class = [mixture.condition(c) for c in range(mixture.n_classes)]


def conditional_eps(x, t, y):
    """Exact ε-prediction given labels y (batch,), the null label NULL meaning unconditional."""
    preds = jnp.stack([m.predict(x, sde, t, "eps") for m in [*per_class, mixture]])
    return jnp.take_along_axis(preds, y[None, :, None], axis=0)[0]


def cfg_eps(w, x, t):
    return dj.cfg_model(conditional_eps, y_target, w, NULL)(x, t)


sw_cfg, x_cfg = guided_sweep(cfg_eps, [0.0, 1.0, 3.0], "CFG w")
same = max(float(jnp.max(jnp.abs(x_cfg[w] - x_cls[w]))) for w in x_cfg)
print(f"max |CFG sample - classifier-guided sample| over w = s: {same:.1e}")
assert sw_cfg[1.0] < threshold_cond and same < 1e-3
