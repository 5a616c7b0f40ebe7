"""Figure 6: a trained 2D flow-matching model carrying noise to the checkerboard.

Uses the checkpoint of `make demo` (`--workdir`, default outputs/demo: CondOT path, velocity
MLP); skipped with a message if it has none. The model is restored with
`experiments.builders.load_run` (EMA parameters) and sampled with the configured sampler
(`experiments.builders.generate`), keeping the trajectories: snapshots of x_t along the flow, the
trajectories, and the share of samples on the checkerboard's squares (`diffjax.data.in_checkerboard`).

    python -m experiments.figures.fig6_trained_flow --out outputs/figures [--workdir outputs/demo]
"""

from __future__ import annotations

import os
import sys

import jax
import matplotlib.pyplot as plt
import numpy as np

from diffjax.data import checkerboard, in_checkerboard
from diffjax.grids import make_grid
from experiments.figures import _common


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--workdir", default=os.path.join("outputs", "demo"),
                   help="an experiments.train work directory with a 2D checkpoint (default outputs/demo)")
    p.add_argument("--num", type=int, default=2000, help="number of samples")
    args = p.parse_args(argv)
    workdir = args.workdir
    cfg, trained = _common.load_run(workdir, "fig6 needs `make demo` (run it first).")
    from experiments.builders import generate

    if cfg.model.kind != "mlp" or cfg.model.kwargs.dim != 2:
        raise ValueError(f"fig6: {workdir} holds a {cfg.model.kind} model; need a 2D MLP (checkerboard).")
    process, step = trained.process, trained.step
    res = generate(cfg, trained.model, process, jax.random.key(1), args.num, trained.record["data_shape"],
                   save_trajectory=True)  # fmt: skip
    traj = np.asarray(res.trajectory)  # (num_steps + 1, num, 2), t from t_noise to t_data
    samples = np.asarray(res.samples)
    frac = float(np.mean(np.asarray(in_checkerboard(samples))))
    data = np.asarray(checkerboard(jax.random.key(2), args.num)[0])
    frac_data = float(np.mean(np.asarray(in_checkerboard(data))))
    times = np.asarray(make_grid(process, cfg.sample.num_steps))  # generate's grid (uniform)

    fig, axes = plt.subplots(2, 4, figsize=(14, 8), sharex=True, sharey=True, layout="constrained")
    n = traj.shape[0] - 1
    for ax, i in zip(axes[0], [0, n // 4, n // 2, 3 * n // 4], strict=True):
        ax.scatter(traj[i, :, 0], traj[i, :, 1], s=1, alpha=0.4, c="tab:blue")
        ax.set_title(f"$x_t$ at t = {times[i]:.2f}" + (" (noise)" if i == 0 else ""))
    ax = axes[1, 0]
    ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, c="tab:blue")
    ax.set_title(f"$x_t$ at t = {times[-1]:.2f}: samples")
    ax = axes[1, 1]
    for j in range(150):
        ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.5, alpha=0.6, c="tab:blue")
    ax.scatter(*traj[0, :150].T, s=4, c="tab:gray", label="noise (start)", zorder=3)
    ax.scatter(*samples[:150].T, s=4, c="tab:red", label="sample (end)", zorder=3)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title("150 trajectories noise → sample")
    ax = axes[1, 2]
    ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.4, c="tab:gray")
    ax.set_title("data (checkerboard)")
    ax = axes[1, 3]
    on = np.asarray(in_checkerboard(samples))
    ax.scatter(*samples[on].T, s=1, alpha=0.4, c="tab:green", label=f"on a square ({100 * frac:.1f}%)")
    ax.scatter(*samples[~on].T, s=1, alpha=0.6, c="tab:red", label="off the squares")
    ax.legend(loc="lower left", fontsize=7, markerscale=5)
    ax.set_title("samples on / off the squares")
    for ax in axes.ravel():
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
    fig.suptitle(
        f"Trained 2D flow: {cfg.process.name} path, {cfg.model.prediction}-predicting MLP (width "
        f"{cfg.model.kwargs.width}, {step} training steps, {os.path.normpath(workdir)}),\nsampled with "
        f"{cfg.sample.sampler}, {cfg.sample.num_steps} steps ({int(res.nfe)} evaluations): {100 * frac:.1f}% "
        f"of {args.num} samples on the squares (data: {100 * frac_data:.0f}%)"
    )
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
