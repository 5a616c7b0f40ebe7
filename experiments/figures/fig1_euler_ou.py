"""Figure 1: Euler on the linear ODE dx/dt = −θx, and Euler–Maruyama on an Ornstein–Uhlenbeck SDE.

(a) Euler iterates x_{k+1} = (1 − θh) x_k for several step sizes h against the closed form
    x0·e^{−θt}; (b) the global error at t = T against h (first order: slope 1); (c) Euler–Maruyama
    paths of dX = −θ(X − μ) dt + s dW with the exact marginal mean ± 2 std of `LinearSDE`, and the
    empirical mean ± 2 std of many simulated paths.

Both integrators are `diffjax.integrate` with the `diffjax.EulerMaruyama` solver on a
`diffjax.solvers.SDE` term (with G = 0 it is the Euler method).

    python -m experiments.figures.fig1_euler_ou --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import diffjax as dj
from diffjax.processes import LinearSDE
from experiments.figures import _common

THETA, X0, T_ODE = 2.0, 1.0, 3.0
OU_THETA, OU_MU, OU_S, OU_X0, T_OU = 1.0, 0.0, 0.8, 3.0, 5.0


def euler_linear_ode(theta: float, x0: float, h: float, horizon: float):
    """(ts, xs): Euler on dx/dt = −θx with step h (Euler–Maruyama with zero diffusion)."""
    n = int(np.floor(horizon / h + 1e-9))
    ts = jnp.linspace(0.0, n * h, n + 1)
    term = dj.solvers.SDE(lambda x, t: -theta * x, lambda t: jnp.zeros(()))
    path = dj.integrate(dj.EulerMaruyama(), term, jnp.full((1, 1), x0), ts, jax.random.key(0),
                        save_every=1).trajectory  # fmt: skip
    return np.asarray(ts), np.asarray(path[:, 0, 0])


def main(argv=None) -> str:
    args = _common.parser(__doc__).parse_args(argv)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0), gridspec_kw={"width_ratios": [1.2, 0.8, 1.4]})

    # (a) Euler vs closed form
    ax = axes[0]
    tt = np.linspace(0, T_ODE, 400)
    ax.plot(tt, X0 * np.exp(-THETA * tt), c="k", lw=2, label=r"closed form $x_0e^{-\theta t}$")
    for h, c in zip([0.05, 0.25, 0.5, 0.8], ["tab:blue", "tab:green", "tab:orange", "tab:red"],
                    strict=True):  # fmt: skip
        ts, xs = euler_linear_ode(THETA, X0, h, T_ODE)
        ax.plot(ts, xs, "o-", c=c, ms=3, lw=1, label=rf"Euler $h={h}$ ($1-\theta h={1 - THETA * h:+.1f}$)")
    ax.axhline(0, c="gray", lw=0.5)
    ax.set(xlabel="t", ylabel="x(t)", title=rf"(a) Euler on $dx/dt=-\theta x$, $\theta={THETA}$, $x_0={X0}$")
    ax.legend(loc="upper right")

    # (b) global error at T = 1 vs h
    ax = axes[1]
    hs = np.array([0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625])
    errs = [abs(euler_linear_ode(THETA, X0, h, 1.0)[1][-1] - X0 * np.exp(-THETA)) for h in hs]
    ax.loglog(hs, errs, "o-", c="tab:blue", label="|Euler − exact| at t = 1")
    ax.loglog(hs, errs[-1] * hs / hs[-1], "k--", lw=1, label="slope 1 (first order)")
    ax.set(xlabel="step size h", ylabel="global error", title="(b) Euler is first order")
    ax.legend(loc="upper left")

    # (c) Euler–Maruyama on the OU process with exact moment bands
    ax = axes[2]
    ou = LinearSDE.from_constant(A=[[-OU_THETA]], b=[OU_THETA * OU_MU], G=[[OU_S]], T=T_OU)
    n_steps, n_paths = 500, 4000
    ts = jnp.linspace(0.0, T_OU, n_steps + 1)
    x0 = jnp.full((n_paths, 1), OU_X0)
    term = dj.solvers.SDE(lambda x, t: ou.drift(x, t[0]), ou.diffusion_matrix)
    simulate = jax.jit(lambda k: dj.integrate(dj.EulerMaruyama(), term, x0, ts, k, save_every=1).trajectory)
    paths = np.asarray(simulate(jax.random.key(1))[..., 0])  # (n+1, n_paths)
    tr = ou.transition(ts)
    mean = np.asarray(tr.mean(jnp.array([OU_X0])))[:, 0]
    std = np.sqrt(np.asarray(tr.V)[:, 0, 0])
    tn = np.asarray(ts)
    for i in range(25):
        ax.plot(tn, paths[:, i], lw=0.6, alpha=0.6, c="tab:blue")
    ax.fill_between(tn, mean - 2 * std, mean + 2 * std, color="tab:orange", alpha=0.2,
                    label="exact mean ± 2 std (LinearSDE moments)")  # fmt: skip
    ax.plot(tn, mean, c="tab:orange", lw=2)
    emp_m, emp_s = paths.mean(1), paths.std(1)
    ax.plot(tn, emp_m, "k:", lw=1.2, label=f"empirical mean ± 2 std ({n_paths} EM paths)")
    ax.plot(tn, emp_m - 2 * emp_s, "k:", lw=1.2)
    ax.plot(tn, emp_m + 2 * emp_s, "k:", lw=1.2)
    stat = OU_S / np.sqrt(2 * OU_THETA)
    ax.axhline(OU_MU + 2 * stat, c="gray", lw=0.5, ls="--")
    ax.axhline(OU_MU - 2 * stat, c="gray", lw=0.5, ls="--", label=r"stationary $\mu\pm2s/\sqrt{2\theta}$")
    ax.set(xlabel="t", ylabel="X(t)",
           title=rf"(c) Euler–Maruyama on OU $dX=-\theta(X-\mu)dt+s\,dW$: "
                 rf"$\theta={OU_THETA}, \mu={OU_MU}, s={OU_S}$, $\Delta t={T_OU / n_steps}$")  # fmt: skip
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
