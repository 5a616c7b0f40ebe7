"""Figure 13: MNIST few-step samples from the same noise — one 8 × 8 grid per (run, sampler, steps), the
few-step Euler first, so a panel shows what a method bought at its number of network evaluations.

Each run is restored from its work directory (`experiments.builders.load_run`, EMA parameters) and
sampled with `experiments.builders.generate` from one shared draw of the prior (x̂0 clipped to
[−1, 1]); panels whose work directory has no checkpoint are left out (skipped only if none has one).

    python -m experiments.figures.fig13_fewstep_mnist --out docs/figures \\
        [--panels "outputs/mnist_fm:euler:2:teacher, Euler 2 steps;outputs/mnist_reflow:euler:1:2-RF, 1 step"]
"""

from __future__ import annotations

import sys

import jax
import matplotlib.pyplot as plt
import numpy as np

from diffjax.viz import image_grid
from experiments.figures import _common

PANELS = (  # work directory, sampler, steps, title
    ("outputs/mnist_fm", "euler", 2, "teacher (flow matching), Euler 2 steps"),
    ("outputs/mnist_fm", "midpoint", 10, "teacher, midpoint 10 steps (20 NFE)"),
    ("outputs/mnist_pd2", "ddim", 2, "progressive distillation, 2 steps"),
    ("outputs/mnist_pd1", "ddim", 1, "progressive distillation, 1 step"),
    ("outputs/mnist_reflow", "euler", 2, "2-rectified flow, Euler 2 steps"),
    ("outputs/mnist_reflow", "euler", 1, "2-rectified flow, Euler 1 step"),
    ("outputs/mnist_rf_distil1", "flow_map", 1, "2-RF distilled to 1 step"),
    ("outputs/mnist_shortcut", "flow_map", 2, "shortcut model, 2 jumps"),
    ("outputs/mnist_shortcut", "flow_map", 1, "shortcut model, 1 jump"),
    ("outputs/mnist_meanflow", "flow_map", 1, "MeanFlow (600-step fine-tune), 1 jump"),
    ("outputs/mnist_shortcut_2200", "flow_map_ddim", 2, "shortcut model, 2 jumps (DDIM re-noising)"),
    ("outputs/mnist_traj2", "flow_map", 2, "trajectory distillation, 2 jumps"),
    ("outputs/mnist_traj2", "flow_map_ddim", 2, "trajectory distillation, 2 jumps (DDIM re-noising)"),
    ("outputs/mnist_traj1", "flow_map", 1, "trajectory distillation, 1 jump"),
)


def parse_panels(text: str) -> tuple:
    panels = []
    for item in text.split(";"):
        workdir, sampler, steps, title = item.split(":", 3)
        panels.append((workdir, sampler, int(steps), title))
    return tuple(panels)


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--panels", default=None, help="workdir:sampler:steps:title;... (default: PANELS)")
    p.add_argument("--num", type=int, default=64, help="samples per panel (default 64)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the shared noise")
    args = p.parse_args(argv)
    panels = parse_panels(args.panels) if args.panels else PANELS
    present = [q for q in panels if _common.has_checkpoint(q[0])]
    if not present:
        raise _common.MissingInput("fig13: none of the few-step MNIST runs exists; train them "
                                   "(configs mnist_progressive, mnist_reflow, mnist_shortcut, ...)")
    from experiments.builders import generate

    cols = min(4, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    noise = None
    for ax, (workdir, sampler, steps, title) in zip(axes.flat, present, strict=False):
        cfg, trained = _common.load_run(workdir, "train it first")
        shape = (args.num, *trained.record["data_shape"])
        if noise is None:
            noise = trained.process.prior_sample(jax.random.key(args.seed), shape)
        cfg.sample.update(sampler=sampler, num_steps=steps, clip_denoised=True)
        res = generate(cfg, trained.model, trained.process, jax.random.key(args.seed + 1), args.num,
                       trained.record["data_shape"], x_init=noise)  # fmt: skip
        grid = image_grid(np.asarray(res.samples), ncol=int(np.ceil(np.sqrt(args.num))))
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{title}\n({int(res.nfe)} NFE, {trained.step:,} training steps)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("MNIST few-step samples from the same noise (EMA parameters, x̂0 clipped)")
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
