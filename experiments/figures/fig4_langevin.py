"""Figure 4: unadjusted Langevin dynamics converging to a 2D Gaussian mixture.

x_{k+1} = x_k + ε ∇log p(x_k) + √(2ε) ξ_k (`diffjax.langevin.langevin_dynamics`) with the exact
score of a three-component `GaussianMixture`, started from a broad Gaussian. Snapshots of the
particles at several iterations over the contours of log p (`GaussianMixture.log_prob`), and the
sliced Wasserstein distance to exact samples per iteration against its noise floor (the distance
between two independent exact sample sets of the same size).

    python -m experiments.figures.fig4_langevin --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from diffjax.langevin import langevin_dynamics
from diffjax.metrics import sliced_wasserstein
from diffjax.oracle import GaussianMixture
from experiments.figures import _common

SNAPSHOTS = [0, 10, 50, 250, 1000, 5000]
STEP_SIZE, NUM_STEPS, SAVE_EVERY, N = 0.02, 5000, 10, 4000
N_FLOOR = 10


def mixture() -> GaussianMixture:
    means = [[-2.0, -1.0], [2.0, -1.0], [0.0, 2.2]]
    covs = [[[0.5, 0.25], [0.25, 0.4]], [[0.3, -0.1], [-0.1, 0.5]], [[0.8, 0.0], [0.0, 0.15]]]
    return GaussianMixture.create(means, covs, weights=[0.45, 0.35, 0.2])


def occupancy(mix: GaussianMixture, x) -> str:
    """Fraction of the particles x (N, 2) whose most likely component is k, for every k."""
    comp = np.asarray(mix.component_posterior(jnp.asarray(x)).argmax(1))
    return "/".join(f"{f:.2f}" for f in np.bincount(comp, minlength=3) / len(comp))


def main(argv=None) -> str:
    args = _common.parser(__doc__).parse_args(argv)
    mix = mixture()
    k_init, k_run, k_data, k_ref, k_sw = jax.random.split(jax.random.key(0), 5)
    x_init = 3.0 * jax.random.normal(k_init, (N, 2))
    run = jax.jit(lambda k: langevin_dynamics(mix.score, x_init, k, STEP_SIZE, NUM_STEPS, SAVE_EVERY))
    _, saved = run(k_run)  # (NUM_STEPS // SAVE_EVERY + 1, N, 2)
    saved = np.asarray(saved)
    data = mix.sample(k_data, N)[0]
    # the noise floor: SW between `data` and N_FLOOR further independent exact sample sets
    floors = jax.jit(jax.vmap(lambda k: sliced_wasserstein(mix.sample(k, N)[0], data, k_sw)))(
        jax.random.split(k_ref, N_FLOOR))
    floor_m, floor_s = float(floors.mean()), float(floors.std())
    # distances at ~40 log-spaced saved iterations (and every snapshot)
    idx = np.unique(np.concatenate([np.geomspace(1, saved.shape[0] - 1, 40).astype(int),
                                    np.array(SNAPSHOTS + [100]) // SAVE_EVERY]))  # fmt: skip
    dist = jax.jit(lambda xs: jax.lax.map(lambda x: sliced_wasserstein(x, data, k_sw), xs))
    sw = dict(zip(idx.tolist(), np.asarray(dist(jnp.asarray(saved[idx]))).tolist(), strict=True))
    iters = idx * SAVE_EVERY

    lim = 6.0
    g = np.linspace(-lim, lim, 200)
    gx, gy = np.meshgrid(g, g)
    logp = np.asarray(mix.log_prob(jnp.stack([gx.ravel(), gy.ravel()], -1))).reshape(gx.shape)
    fig = plt.figure(figsize=(15, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, 5)
    cells = [grid[0, 0], grid[0, 1], grid[0, 2], grid[1, 0], grid[1, 1], grid[1, 2]]
    for cell, it in zip(cells, SNAPSHOTS, strict=True):
        ax = fig.add_subplot(cell)
        ax.contour(gx, gy, logp, levels=np.arange(-12, 0, 1.0), cmap="viridis", linewidths=0.7)
        x = saved[it // SAVE_EVERY]
        ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:red", alpha=0.35, lw=0)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[-4, 0, 4], yticks=[-4, 0, 4])
        ax.set_title(f"iteration {it}  (SW = {sw[it // SAVE_EVERY]:.3f})")
    ax = fig.add_subplot(grid[:, 3:])
    ax.loglog(iters[1:], [sw[i] for i in idx[1:]], "o-", ms=3, c="tab:red",
              label=f"ULA, step ε = {STEP_SIZE}, {N} particles")  # fmt: skip
    ax.axhline(floor_m, c="k", ls="--", lw=1,
               label=f"noise floor: SW of {N_FLOOR} exact sample sets to the same data: mean ± 2 std")
    ax.axhspan(floor_m - 2 * floor_s, floor_m + 2 * floor_s, color="k", alpha=0.1)
    weights = "/".join(f"{w:.2f}" for w in np.asarray(mix.weights))
    ax.annotate(f"plateau: particles sit in the modes but with the wrong mode\nweights "
                f"(occupancy at k=100: {occupancy(mix, saved[100 // SAVE_EVERY])}, at k={NUM_STEPS}: "
                f"{occupancy(mix, saved[-1])};\nweights {weights}); crossings between modes "
                "re-weight them slowly", xy=(100, sw[100 // SAVE_EVERY]),
                xytext=(11, 0.13), fontsize=8, arrowprops=dict(arrowstyle="->", lw=0.8))  # fmt: skip
    ax.set(xlabel="Langevin iteration k", ylabel="sliced Wasserstein-2 to exact samples",
           title=f"distance to {N} exact samples per iteration")  # fmt: skip
    ax.legend(loc="upper right")
    fig.suptitle(r"Langevin dynamics $x_{k+1}=x_k+\varepsilon\nabla\log p(x_k)+\sqrt{2\varepsilon}\,\xi_k$"
                 " with the exact score of a 3-component Gaussian mixture (contours: log p)")  # fmt: skip
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
