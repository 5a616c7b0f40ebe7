"""Gradients of the probability-flow log-likelihood (w.r.t. the data x and the model's parameters)
and log p computed during sampling (`sample_with_log_prob`).

The model is the exact velocity of Gaussian data N(μ, diag(s²)) under the process, with learnable
parameters θ = (μ, log s) held in a `jax.tree_util.Partial`, so that in closed form

    log p_t(x) = Σ_d log N(x_d; α(t) μ_d, α(t)² s_d² + σ(t)²),

and on CondOTPath (α(t_noise) = 0: the default prior N(0, I) is exact) `log_likelihood` equals
log p_{t₀}(x) up to the solver error, as a function of x *and* θ. Float64 throughout.

Tolerances (measured values in brackets):
- Finite differences: central differences along random unit directions u of (θ, x) with steps
  h = 1e-3 and h/2; the truncation error of FD(h/2) is ≈ |FD(h) − FD(h/2)|/3 (error ∝ h²), and we
  require |FD(h/2) − ⟨∇, u⟩| ≤ 3·|FD(h) − FD(h/2)| + 1e3·ε·(1 + |F|)/h (rounding) [ratio 0.33–0.34,
  errors 6e-9–2e-7]. For fixed grids the numerical solution is a smooth map and reverse mode through
  the scan is its exact derivative. An adaptive solve is differentiated along its accepted steps
  (diffrax does not differentiate the controller) while FD also moves the steps; that term is bounded
  by the global error, taken as steps × rtol × (1 + |F|) (accumulated local errors) [3e-8; the FD
  errors 9e-8–1.8e-7 are again truncation, a third of the Richardson estimate].
- Against the closed form (adaptive, rtol = 1e-10): steps × rtol × (1 + |g|), the same bound for
  the sensitivities, which the differentiated solve integrates on the same steps [errors 7e-11–4e-10
  against bounds ≈ 1e-8; backsolve 5e-11–2e-10, bound doubled for its second solve].
- log p during sampling vs `log_likelihood` and vs the closed form (dopri5, rtol = 1e-9): the sum of
  both solves' bounds (nfe₁ + nfe₂)/6 × rtol × (1 + |log p|) [errors 1.9e-9, bounds ≥ 1.4e-7];
  DPM-Solver++ by its convergence from 32 to 64 steps [mismatch 3.0e-3 → 3.5e-4, ratio 8.5].
- Statistical: |z| < 4 [|z| ≤ 0.74].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from diffjax._array import expand
from diffjax.likelihood import log_likelihood, sample_with_log_prob
from diffjax.processes import VPSDE, CondOTPath
from diffjax.sampling import sample

Z_MAX = 4.0
EPS64 = float(np.finfo(np.float64).eps)


def gaussian_velocity(params, process, x, t):
    """The exact probability-flow velocity α̇ E[x0|x] + σ̇ E[ε|x] of data N(μ, diag(s²))."""
    a, s, da, ds = (expand(c, x) for c in process.coefficients(t))
    var = jnp.exp(2.0 * params["log_std"])
    r = x - a * params["mean"]
    denom = a**2 * var + s**2
    return da * (params["mean"] + a * var / denom * r) + ds * (s / denom * r)


def gaussian_log_prob(params, process, x, t):
    """log p_t(x) in closed form, (batch,)."""
    a, s = process.alpha(jnp.asarray(t, x.dtype)), process.sigma(jnp.asarray(t, x.dtype))
    var = a**2 * jnp.exp(2.0 * params["log_std"]) + s**2
    return jnp.sum(-0.5 * (x - a * params["mean"]) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var), -1)


def model_of(params, process):
    return jax.tree_util.Partial(gaussian_velocity, params, process)


def setup(batch=3, seed=0):
    params = {"mean": jnp.array([0.5, -1.0]), "log_std": jnp.array([0.2, -0.4])}
    x = params["mean"] + jnp.exp(params["log_std"]) * jax.random.normal(jax.random.key(seed), (batch, 2))
    return params, x


def tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def axpy(a, h, u):
    return jax.tree.map(lambda p, q: p + h * q, a, u)


def fd_errors(value, args, grads, key, n_dirs=3, h=1e-3):
    """For random unit directions u: (|FD(h/2) − ⟨g, u⟩|, |FD(h) − FD(h/2)|, rounding bound)."""
    out = []
    for k in jax.random.split(key, n_dirs):
        leaves, treedef = jax.tree.flatten(args)
        ks = jax.random.split(k, len(leaves))
        u = [jax.random.normal(kk, v.shape) for kk, v in zip(ks, leaves, strict=True)]
        u = jax.tree.unflatten(treedef, u)
        norm = jnp.sqrt(tree_dot(u, u))
        u = jax.tree.map(lambda v, norm=norm: v / norm, u)
        fd = [(value(axpy(args, s, u)) - value(axpy(args, -s, u))) / (2 * s) for s in (h, h / 2)]
        rounding = 1e3 * EPS64 * (1 + abs(float(value(args)))) / h
        out.append((abs(float(fd[1] - tree_dot(grads, u))), abs(float(fd[0] - fd[1])), rounding))
    return out


# -- gradients of log_likelihood ------------------------------------------------------------------
@pytest.mark.parametrize("solver,divergence", [("rk4", "exact"), ("heun", "hutchinson")])
def test_fixed_step_gradients_match_finite_differences(solver, divergence):
    """RK4 (exact divergence) and Heun (Hutchinson, fixed key, two Gaussian probes) on CondOT from
    t₀ = t_data, 8 steps: reverse mode through the scan equals central FD of the solve in (θ, x)."""
    with x64():
        process, (params, x) = CondOTPath(), setup()

        def total(args):
            p, x = args
            res = log_likelihood(model_of(p, process), process, x, jax.random.key(1), prediction="velocity",
                                 solver=solver, num_steps=8, t_eps=0.0, divergence=divergence,
                                 probe="gaussian", n_probes=2)  # fmt: skip
            return res.log_prob.sum()

        vg = jax.jit(jax.value_and_grad(total))
        _, g = vg((params, x))
        errs = fd_errors(lambda a: vg(a)[0], (params, x), g, jax.random.key(2))
        for err, richardson, rounding in errs:
            assert err <= 3 * richardson + rounding, errs


def assert_closed_form_gradient(grad, params, x, process, steps: float, rtol: float) -> None:
    """Each leaf of grad matches the closed-form ∇ log p within steps·rtol·(1 + |∇ log p|)."""
    exact = jax.grad(lambda a: gaussian_log_prob(a[0], process, a[1], 1.0).sum())((params, x))
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(exact), strict=True):
        bound = steps * rtol * (1 + float(jnp.max(jnp.abs(b))))
        assert float(jnp.max(jnp.abs(a - b))) < bound, (a - b, bound)


def test_adaptive_gradients_match_finite_differences_and_the_closed_form():
    """dopri5 (rtol = atol = 1e-10) through diffrax's RecursiveCheckpointAdjoint: the gradient in
    (θ, x) matches central FD and the closed-form gradient within the global-error bound."""
    with x64():
        process, (params, x) = CondOTPath(), setup()
        rtol = 1e-10

        def total(args):
            p, x = args
            res = log_likelihood(model_of(p, process), process, x, prediction="velocity", solver="dopri5",
                                 rtol=rtol, atol=rtol, t_eps=0.0)  # fmt: skip
            return res.log_prob.sum(), res.nfe

        vg = jax.jit(jax.value_and_grad(total, has_aux=True))
        (f0, nfe), g = vg((params, x))
        steps = int(nfe) / 6
        assert_closed_form_gradient(g, params, x, process, steps, rtol)
        step_term = steps * rtol * (1 + abs(float(f0)))
        errs = fd_errors(lambda a: vg(a)[0][0], (params, x), g, jax.random.key(3))
        for err, richardson, rounding in errs:
            assert err <= 3 * richardson + rounding + step_term, (errs, step_term)


def test_backsolve_adjoint_agrees_with_recursive_checkpointing():
    """BacksolveAdjoint (continuous adjoint, solved backwards at the same tolerances) gives the
    closed-form gradient within the same global-error bound as the checkpointed one."""
    with x64():
        process, (params, x) = CondOTPath(), setup()
        rtol = 1e-10

        def total(args):
            p, x = args
            res = log_likelihood(model_of(p, process), process, x, prediction="velocity", solver="dopri5",
                                 rtol=rtol, atol=rtol, t_eps=0.0, adjoint="backsolve")  # fmt: skip
            return res.log_prob.sum(), res.nfe

        (_, nfe), g = jax.jit(jax.value_and_grad(total, has_aux=True))((params, x))
        assert_closed_form_gradient(g, params, x, process, 2 * int(nfe) / 6, rtol)  # forward + backward


def test_gradients_compile_once_across_parameter_values():
    """A Partial model's parameters are traced: `jax.grad` of the likelihood, eager or under
    `jax.jit`, traces the model once for several parameter values (and x values)."""
    with x64():
        process, (params, x) = CondOTPath(), setup()
        traces = []

        def apply(p, x, t):
            traces.append(1)
            return gaussian_velocity(p, process, x, t)

        def loss(p, x):
            res = log_likelihood(jax.tree_util.Partial(apply, p), process, x, prediction="velocity",
                                 solver="euler", num_steps=4, t_eps=0.0)  # fmt: skip
            return -res.log_prob.mean()

        eager, jitted = jax.grad(loss, argnums=(0, 1)), jax.jit(jax.grad(loss, argnums=(0, 1)))
        for f in (eager, jitted):
            grads = []
            for shift in (0.0, 0.3, -0.7):
                p = jax.tree.map(lambda v: v + shift, params)  # noqa: B023
                grads.append(f(p, x + shift))
                if shift == 0.0:
                    n_traces = len(traces)
            assert len(traces) == n_traces, "new parameter values retraced the model"
            assert not np.allclose(grads[0][0]["mean"], grads[1][0]["mean"])  # the values did change


def test_nnx_module_parameters_get_gradients_through_split_and_merge():
    """An NNX network: `nnx.split` it, merge the traced state inside the loss; `jax.jit(jax.grad)`
    traces once for new parameter values, and the gradient agrees with a central FD."""
    from flax import nnx

    class Net(nnx.Module):
        prediction = "velocity"

        def __init__(self, rngs):
            self.hidden, self.out = nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x, t):
            traces.append(1)
            return self.out(jnp.tanh(self.hidden(jnp.concatenate([x, t[:, None]], -1))))

    with x64():
        traces, process = [], CondOTPath()
        graphdef, state = nnx.split(Net(nnx.Rngs(0)))
        state = jax.tree.map(lambda v: v.astype(jnp.float64), state)
        x = setup()[1]

        def loss(state):
            net = nnx.merge(graphdef, state)
            return -log_likelihood(net, process, x, solver="heun", num_steps=3, t_eps=0.0).log_prob.mean()

        grad = jax.jit(jax.grad(loss))
        g = grad(state)
        n_traces = len(traces)
        g2 = grad(jax.tree.map(lambda v: 1.1 * v, state))
        assert len(traces) == n_traces
        assert not np.allclose(g["out"]["kernel"][...], g2["out"]["kernel"][...])
        errs = fd_errors(jax.jit(loss), state, g, jax.random.key(7), n_dirs=1)
        for err, richardson, rounding in errs:
            assert err <= 3 * richardson + rounding, errs


# -- log p during sampling ------------------------------------------------------------------------
def test_sampled_log_prob_equals_log_likelihood_and_the_closed_form():
    """dopri5 at rtol = atol = 1e-9 both ways on CondOT (exact prior) from noise to t_end = 1 − t_eps:
    log p carried along with the samples equals `log_likelihood` of the returned samples and the
    closed-form log p_{t_end}, within the accumulated-error bound steps × rtol × (1 + |log p|)
    of each solve (per example)."""
    with x64():
        process, (params, _) = CondOTPath(), setup()
        model, rtol, t_eps = model_of(params, process), 1e-9, 1e-3
        kw = dict(prediction="velocity", rtol=rtol, atol=rtol, t_eps=t_eps)
        res = sample_with_log_prob("dopri5", model, process, jax.random.key(4), (16, 2), **kw)
        back = log_likelihood(model, process, res.samples, solver="dopri5", **kw)
        exact = gaussian_log_prob(params, process, res.samples, process.data_end(t_eps))
        assert bool(res.success) and bool(back.success)
        bound = (int(res.nfe) + int(back.nfe)) / 6 * rtol * (1 + jnp.abs(exact))
        assert np.all(np.abs(res.log_prob - back.log_prob) < bound), (res.log_prob - back.log_prob, bound)
        assert np.all(np.abs(res.log_prob - exact) < bound), (res.log_prob - exact, bound)
        np.testing.assert_allclose(res.log_prob, res.prior_logp - res.delta_logp)
        np.testing.assert_allclose(back.noise, res.noise, atol=bound.max())  # the ODE map is invertible


def test_fixed_grid_sampled_log_prob_converges_to_log_likelihood():
    """DPM-Solver++(2M) on VP's log-SNR grid, t_eps = 1e-3: the samples are those of
    `sample(..., denoise_final=False)` with the same key, and |log p during sampling − log_likelihood
    of the samples| (both solves' errors) falls at the solver's order ≥ 1.5 from 32 to 64 steps
    and lies within its Richardson estimate at 64."""
    with x64():
        process, (params, _) = VPSDE(), setup()
        model, key, t_eps = model_of(params, process), jax.random.key(5), 1e-3
        kw = dict(prediction="velocity", grid="logsnr", t_eps=t_eps)

        @jax.jit
        def mismatch(key):
            out = []
            for n in (32, 64):
                res = sample_with_log_prob("dpm_solver_pp", model, process, key, (8, 2), n, **kw)
                back = log_likelihood(model, process, res.samples, solver="dpm_solver_pp", num_steps=n, **kw)
                out.append((res.samples, jnp.max(jnp.abs(res.log_prob - back.log_prob))))
            return out

        (samples_32, e_32), (_, e_64) = mismatch(key)
        ref = sample("dpm_solver_pp", model, process, key, (8, 2), 32, denoise_final=False, **kw)
        np.testing.assert_allclose(samples_32, ref.samples, rtol=1e-12, atol=1e-12)
        assert float(e_32) / float(e_64) > 2**1.5, (e_32, e_64)
        assert float(e_64) < 3 * float(e_32 - e_64), (e_32, e_64)


def test_hutchinson_sampled_log_prob_is_unbiased():
    """Same key: same prior draw, so exact and Hutchinson runs share the trajectory (Euler, fixed
    grid) and d = Hutchinson − exact log p has mean 0 over keys (Δ is linear in the divergence):
    a paired z-test over 300 keys. Gaussian probes: for this model's diagonal Jacobian Rademacher
    probes would be exact (zᵀJz = Σ J_ii z_i² = tr J), and the test would have no power."""
    with x64():
        process, (params, _) = CondOTPath(), setup()
        model = model_of(params, process)
        kw = dict(prediction="velocity", t_eps=0.0)

        def run(key, divergence):
            res = sample_with_log_prob("euler", model, process, key, (4, 2), 8, divergence=divergence,
                                       probe="gaussian", **kw)  # fmt: skip
            return res.samples, res.log_prob

        keys = jax.random.split(jax.random.key(6), 300)
        (x_e, lp_e), (x_h, lp_h) = jax.jit(jax.vmap(lambda k: (run(k, "exact"), run(k, "hutchinson"))))(keys)
        np.testing.assert_array_equal(x_e, x_h)
        d = lp_h - lp_e
        z = d.mean(0) / (d.std(0, ddof=1) / np.sqrt(d.shape[0]))
        assert np.all(np.abs(z) < Z_MAX), z
        assert float(d.std()) > 1e-3  # the estimator is random (the test has power)


def test_sample_with_log_prob_rejects_bad_arguments():
    process, (params, _) = CondOTPath(), setup()
    model, key = model_of(params, process), jax.random.key(0)
    with pytest.raises(ValueError, match="σ = 0"):
        sample_with_log_prob("dpm_solver_pp", model, process, key, (2, 2), 8, prediction="velocity",
                             t_eps=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="use t_eps > 0"):
        sample_with_log_prob("dopri5", model, VPSDE(), key, (2, 2), prediction="velocity", t_eps=0.0)
    with pytest.raises(ValueError, match="deterministic ODE solver"):
        sample_with_log_prob("euler_maruyama", model, process, key, (2, 2), 8, prediction="velocity")
    with pytest.raises(ValueError, match="num_steps"):
        sample_with_log_prob("rk4", model, process, key, (2, 2), prediction="velocity")
    with pytest.raises(ValueError, match="t_noise"):
        sample_with_log_prob("rk4", model, process, key, (2, 2), 2, grid=jnp.array([0.5, 0.7, 1.0]),
                             prediction="velocity")  # fmt: skip
    with pytest.raises(ValueError, match="infinite at t_data"):  # VP: dσ/dt ~ 1/√t, the value is NaN
        vp = VPSDE()
        log_likelihood(model_of(params, vp), vp, jnp.zeros((2, 2)), prediction="velocity", t_eps=0.0)
    with pytest.raises(ValueError, match="adjoint"):
        log_likelihood(model, process, jnp.zeros((2, 2)), prediction="velocity", solver="rk4",
                       adjoint="backsolve")  # fmt: skip
