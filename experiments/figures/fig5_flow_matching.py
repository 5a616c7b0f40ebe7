"""Figure 5: the flow-matching picture — straight conditional paths and the exact marginal velocity.

Noise μ0 = N(0, 1) at t = 0, data μ1 = a two-component 1D Gaussian mixture at t = 1, joined by the
straight paths X_t = (1 − t)X_0 + tX_1 of the CondOT path (`shared/seeds/003`, eq. 23):

    v_t(x) = E[X_1 − X_0 | X_t = x].

(a)–(c) At a chosen (t, x): all conditional paths (transparency ∝ μ0(x0)·μ1(x1)), the ones through
(t, x) highlighted, and the tangent of slope v_t(x) — from the oracle
(`GaussianMixture.velocity` with `CondOTPath`) and, as a check, from a quadrature over the paths
through (t, x) weighted by μ0(x0)·μ1(x1) (the density of (X_0, X_t) there).
(d) The field v_t(x) over (t, x) (arrows) on the marginal density p_t(x), with the probability-flow
ODE trajectories dx/dt = v_t(x) integrated by the library's Heun sampler from noise quantiles.

    python -m experiments.figures.fig5_flow_matching --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from diffjax.oracle import GaussianMixture, gaussian
from diffjax.processes import CondOTPath
from diffjax.sampling import sample
from experiments.figures import _common

log_prob = jax.jit(lambda dist, x: dist.log_prob(x))  # x (N, 1); dist a GaussianMixture pytree
velocity = jax.jit(lambda dist, x, t: dist.velocity(x, CondOTPath(), t))
POINTS = [(0.5, 0.4), (0.3, -0.8), (0.7, 1.4)]  # (t, x) as in the lecture's illustrations
LIM = 3.2


def data_mixture() -> GaussianMixture:
    return GaussianMixture.create([[-1.6], [1.2]], [0.25**2, 0.35**2], weights=[0.35, 0.65])


def velocity_by_quadrature(noise, data, t: float, x: float) -> float:
    """E[X1 − X0 | X_t = x] = ∫ μ0(x0) μ1(x1) (x1 − x0) dx0 / ∫ μ0(x0) μ1(x1) dx0 with
    x1 = (x − (1 − t) x0)/t, on a fine grid of x0."""
    x0 = np.linspace(-8, 8, 20001)
    x1 = (x - (1 - t) * x0) / t
    logw = np.asarray(log_prob(noise, jnp.asarray(x0[:, None]))) + np.asarray(
        log_prob(data, jnp.asarray(x1[:, None])))  # fmt: skip
    w = np.exp(logw - logw.max())
    return float(np.sum(w * (x1 - x0)) / np.sum(w))


def paths_panel(ax, noise, data, path, t_star, x_star, tag):
    grid = np.linspace(-LIM, LIM, 33)
    x0, x1 = np.meshgrid(grid, grid, indexing="ij")
    x0, x1 = x0.ravel(), x1.ravel()
    w = np.exp(np.asarray(log_prob(noise, jnp.asarray(x0[:, None])))
               + np.asarray(log_prob(data, jnp.asarray(x1[:, None]))))  # fmt: skip
    w = w / w.max()
    keep = w > 2e-3
    segments = np.stack([np.stack([np.zeros(keep.sum()), x0[keep]], -1),
                         np.stack([np.ones(keep.sum()), x1[keep]], -1)], 1)  # fmt: skip
    colors = np.zeros((keep.sum(), 4))
    colors[:, :3], colors[:, 3] = 0.45, 0.6 * w[keep]
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.8))
    # the paths through (t*, x*): x1 = (x* − (1 − t*) x0)/t*
    x0s = np.linspace(-LIM, LIM, 41)
    x1s = (x_star - (1 - t_star) * x0s) / t_star
    ws = np.exp(np.asarray(log_prob(noise, jnp.asarray(x0s[:, None])))
                + np.asarray(log_prob(data, jnp.asarray(x1s[:, None]))))  # fmt: skip
    ws = ws / ws.max()
    for a, b, wi in zip(x0s, x1s, ws, strict=True):
        if wi > 1e-3:
            ax.plot([0, 1], [a, b], c="tab:blue", lw=1.4, alpha=wi)
    v_oracle = float(velocity(data, jnp.array([[x_star]]), jnp.array([t_star]))[0, 0])
    v_quad = velocity_by_quadrature(noise, data, t_star, x_star)
    dt = 0.22
    ax.annotate("", xy=(t_star + dt, x_star + dt * v_oracle), xytext=(t_star, x_star),
                arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=2.2))  # fmt: skip
    ax.plot([t_star], [x_star], "o", c="tab:red", ms=6, zorder=5)
    ax.set(xlim=(-0.13, 1.13), ylim=(-LIM, LIM), xlabel="t", ylabel="x", xticks=np.linspace(0, 1, 6))
    ax.set_title(f"({tag}) paths through (t, x) = ({t_star}, {x_star}):  $v_t(x)$ = {v_oracle:.4f} (oracle)\n"
                 f"= {v_quad:.4f} (average of $x_1-x_0$ over the blue paths, weight $\\mu_0\\mu_1$)")
    return v_oracle


def density_strip(ax, dist, side: float, scale: float, color: str, label: str):
    """The 1D density of `dist` drawn sideways from t = side (scale < 0: to the left)."""
    xs = np.linspace(-LIM, LIM, 400)
    p = np.exp(np.asarray(log_prob(dist, jnp.asarray(xs[:, None]))))
    ax.fill_betweenx(xs, side, side + scale * p / p.max(), color=color, alpha=0.4, lw=0)
    ax.text(side + 0.5 * scale, LIM - 0.1, label, ha="center", va="top", fontsize=9)


def field_panel(ax, data, path):
    ts = np.linspace(0.0, 1.0, 201)
    xs = np.linspace(-LIM, LIM, 241)
    tt, xx = np.meshgrid(ts, xs, indexing="ij")
    logp = jax.jit(jax.vmap(lambda t: data.log_prob(jnp.asarray(xs)[:, None], path,
                                                    jnp.full((xs.size,), t))))(jnp.asarray(ts))  # fmt: skip
    dens = np.exp(np.asarray(logp))
    ax.pcolormesh(tt, xx, np.minimum(dens, 1.5), cmap="Greys", shading="auto", alpha=0.8)
    qt, qx = np.meshgrid(np.linspace(0.0, 0.95, 12), np.linspace(-LIM + 0.2, LIM - 0.2, 15), indexing="ij")
    v = np.asarray(velocity(data, jnp.asarray(qx.reshape(-1, 1)), jnp.asarray(qt.ravel())))
    v = v.reshape(qt.shape)
    norm = np.sqrt(1 + v**2)
    ax.quiver(qt, qx, 1 / norm, v / norm, color="tab:red", angles="xy", scale=28, width=0.003)
    n = 24
    x_init = jax.scipy.special.ndtri((jnp.arange(n) + 0.5) / n)[:, None]
    res = sample("heun", data.model(path, "velocity"), path, jax.random.key(0), (n, 1), 50,
                 x_init=x_init, save_trajectory=True)  # fmt: skip
    traj = np.asarray(res.trajectory[:, :, 0])
    grid_t = np.linspace(0.0, 1.0, traj.shape[0])
    for i in range(n):
        ax.plot(grid_t, traj[:, i], c="tab:blue", lw=1)
    ax.set(xlim=(0, 1), ylim=(-LIM, LIM), xlabel="t", ylabel="x",
           title="(d) marginal field $v_t(x)$ (arrows: direction of (1, $v_t$)), density $p_t(x)$ (grey)\n"
                 "and ODE trajectories $dx/dt=v_t(x)$ from noise quantiles (Heun, 50 steps)")  # fmt: skip


def main(argv=None) -> str:
    args = _common.parser(__doc__).parse_args(argv)
    noise, data, path = gaussian(jnp.zeros(1), jnp.ones((1, 1))), data_mixture(), CondOTPath()
    fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
    for ax, (t_star, x_star), tag in zip(axes.ravel()[:3], POINTS, "abc", strict=True):
        paths_panel(ax, noise, data, path, t_star, x_star, tag)
        density_strip(ax, noise, 0.0, -0.12, "tab:green", r"$\mu_0$")
        density_strip(ax, data, 1.0, 0.12, "tab:orange", r"$\mu_1$")
    field_panel(axes[1, 1], data, path)
    ax = axes[0, 0]
    ax.plot([], [], c="tab:gray", label=r"conditional paths $X_t=(1-t)X_0+tX_1$, alpha $\propto\mu_0\mu_1$")
    ax.plot([], [], c="tab:blue", label="the paths through the red point")
    ax.plot([], [], c="tab:red", lw=2, label=r"direction $(1, v_t(x))$, $v_t(x)=E[X_1-X_0\mid X_t=x]$")
    ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(r"Flow matching: noise $\mu_0=N(0,1)$ at t = 0, data $\mu_1$ = 0.35 N(−1.6, 0.25²)"
                 r" + 0.65 N(1.2, 0.35²) at t = 1", y=0.995)  # fmt: skip
    fig.tight_layout()
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
