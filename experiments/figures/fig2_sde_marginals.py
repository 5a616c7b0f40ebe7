"""Figure 2: marginals of the VP, sub-VP and VE SDEs — closed forms with simulated paths over them.

Top: the mean coefficient α(t) and the std σ(t) of x_t | x_0 ~ N(α(t) x_0, σ(t)² I) (closed forms
of `diffjax.processes.sde`), and the variance α² + σ² of x_t for unit-variance data (1 for VP:
"variance preserving", below 1 for sub-VP, exploding for VE), with the empirical moments of
Euler–Maruyama paths (`diffjax.integrate` with `diffjax.EulerMaruyama`) as markers. Bottom:
simulated paths from x_0 = ±1 over the closed-form bands α(t) x_0 ± 2σ(t).

    python -m experiments.figures.fig2_sde_marginals --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import diffjax as dj
from diffjax.processes import VESDE, VPSDE, SubVPSDE
from experiments.figures import _common

PROCESSES = {  # name: (SDE, colour, line style, zoom); sub-VP has VP's α(t), hence dashed
    "VP (β: 0.1→20)": (VPSDE(), "tab:blue", "-", False),
    "sub-VP (β: 0.1→20)": (SubVPSDE(), "tab:green", "--", False),
    "VE (σ: 0.01→50)": (VESDE(), "tab:red", "-", True),  # the bands explode: inset of the early times
}
N_STEPS = 1000


def simulate(sde, x0, key):
    """Euler–Maruyama paths (N_STEPS+1, batch, 1) of the forward SDE from x0 (batch, 1)."""
    ts = jnp.linspace(0.0, sde.T, N_STEPS + 1)
    term = dj.solvers.SDE(sde.drift, sde.diffusion)
    run = jax.jit(lambda k, x: dj.integrate(dj.EulerMaruyama(), term, x, ts, k, save_every=1).trajectory)
    return np.asarray(ts), np.asarray(run(key, x0))


def main(argv=None) -> str:
    args = _common.parser(__doc__).parse_args(argv)
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    t = np.linspace(1e-3, 1.0, 500)  # σ(0) = 0: start off zero for the log axes
    marks = np.arange(50, N_STEPS + 1, 100)
    key = jax.random.key(0)
    for col, (name, (sde, c, ls, zoom_in)) in enumerate(PROCESSES.items()):
        alpha, sigma = np.asarray(sde.alpha(t)), np.asarray(sde.sigma(t))
        k_data, k_path, k_show, key = jax.random.split(key, 4)
        # moments from 4000 paths started at unit-variance data x0 ~ N(0, 1)
        x0 = jax.random.normal(k_data, (4000, 1))
        ts, paths = simulate(sde, x0, k_path)
        p, x0n = paths[:, :, 0], np.asarray(x0[:, 0])
        emp_alpha = (p * x0n).mean(1) / (x0n**2).mean()  # regression slope E[x_t x_0]/E[x_0²]
        emp_sigma = (p - emp_alpha[:, None] * x0n).std(1)
        axes[0, 0].plot(t, alpha, c=c, ls=ls, label=name)
        se_alpha = emp_sigma / np.sqrt((x0n**2).sum())  # standard error of the slope
        axes[0, 0].errorbar(ts[marks], emp_alpha[marks], 2 * se_alpha[marks], fmt="o", c=c, ms=4,
                            mfc="none", capsize=2)  # fmt: skip
        axes[0, 1].plot(t, sigma, c=c, ls=ls, label=name)
        axes[0, 1].plot(ts[marks], emp_sigma[marks], "o", c=c, ms=4, mfc="none")
        axes[0, 2].plot(t, alpha**2 + sigma**2, c=c, ls=ls, label=name)
        axes[0, 2].plot(ts[marks], p[marks].var(1), "o", c=c, ms=4, mfc="none")
        # paths from x0 = ±1 over the closed-form bands
        ax = axes[1, col]
        starts = jnp.repeat(jnp.array([[-1.0], [1.0]]), 15, axis=0)
        _, show = simulate(sde, starts, k_show)
        for x_start, shade in ((-1.0, "tab:purple"), (1.0, "tab:orange")):
            m = alpha * x_start
            ax.fill_between(t, m - 2 * sigma, m + 2 * sigma, color=shade, alpha=0.15)
            ax.plot(t, m, c=shade, lw=2, label=rf"$x_0={x_start:+.0f}$: $\alpha(t)x_0 \pm 2\sigma(t)$")
            sel = np.asarray(starts[:, 0]) == x_start
            ax.plot(ts, show[:, sel, 0], c=shade, lw=0.5, alpha=0.7)
        ax.set(xlabel="t", ylabel=r"$x_t$", title=f"{name}: 15 Euler–Maruyama paths from each $x_0$")
        ax.legend(loc="upper left")
        if zoom_in:  # the bands explode: zoom into the early times too
            zoom = ax.inset_axes([0.08, 0.08, 0.38, 0.3])
            early = t <= 0.4
            for x_start, shade in ((-1.0, "tab:purple"), (1.0, "tab:orange")):
                zoom.fill_between(t[early], x_start - 2 * sigma[early], x_start + 2 * sigma[early],
                                  color=shade, alpha=0.15)  # fmt: skip
                sel = np.asarray(starts[:, 0]) == x_start
                zoom.plot(ts[ts <= 0.4], show[ts <= 0.4][:, sel, 0], c=shade, lw=0.5, alpha=0.7)
            zoom.set_title("zoom: t ≤ 0.4", fontsize=7)
            zoom.tick_params(labelsize=6)
    axes[0, 0].set(xlabel="t", ylabel=r"$\alpha(t)$", title=r"(a) mean coefficient $\alpha(t)$")
    axes[0, 1].set(xlabel="t", ylabel=r"$\sigma(t)$", yscale="log",
                   title=r"(b) std $\sigma(t)$ of $x_t \mid x_0$ (log scale)")  # fmt: skip
    axes[0, 2].set(xlabel="t", ylabel=r"Var$[x_t]$", yscale="log",
                   title=r"(c) Var$[x_t]=\alpha^2+\sigma^2$ for data $x_0\sim N(0,1)$")  # fmt: skip
    for ax, bars in zip(axes[0], ["; bars: ±2 s.e.", "", ""], strict=True):
        ax.plot([], [], "ko", mfc="none", ms=4, label=f"simulated (4000 EM paths{bars})")
        ax.plot([], [], "k-", label="closed form")
        ax.legend(loc="best")
    fig.suptitle("Forward SDE marginals $x_t = \\alpha(t)x_0 + \\sigma(t)\\varepsilon$: closed forms "
                 f"(lines) vs Euler–Maruyama ({N_STEPS} steps)", y=1.0)  # fmt: skip
    fig.tight_layout()
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
