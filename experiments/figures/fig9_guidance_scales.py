"""Figure 9: classifier-free guidance on class-conditional MNIST — the same noise at scales w.

The model of `experiments/configs/mnist_cfg.py` (flow matching with label dropout, `--workdir`,
default outputs/mnist_cfg) is restored with `experiments.builders.load_run` (EMA parameters) and
sampled with its config's sampler at guidance scales w (`diffjax.guidance.cfg_model`:
pred = (1 − w)·pred(x, t, ∅) + w·pred(x, t, y); w = 0 unconditional, w = 1 conditional, w > 1
sharper). One panel per w, rows = digits 0–9, `--per-digit` columns; every panel starts from the
same prior draw, so a cell shows the same noise under different w. Skipped if the model is absent.

    python -m experiments.figures.fig9_guidance_scales --out outputs/figures [--workdir outputs/mnist_cfg]
"""

from __future__ import annotations

import os
import sys

import jax
import matplotlib.pyplot as plt
import numpy as np

from diffjax.viz import image_grid
from experiments.figures import _common

TRAIN = ("python -m experiments.train --config experiments/configs/mnist_cfg.py --workdir {} "
         "--config.data.data_dir=../shared/data/mnist")  # fmt: skip


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--workdir", default=os.path.join("outputs", "mnist_cfg"),
                   help="work directory of the class-conditional model (default outputs/mnist_cfg)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0],
                   help="guidance scales w (default 0 1 2 4)")
    p.add_argument("--per-digit", type=int, default=4, help="samples per digit (columns per panel)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every w)")
    args = p.parse_args(argv)
    cfg, trained = _common.load_run(args.workdir, "train it: " + TRAIN.format(args.workdir))
    from experiments.builders import generate, num_classes

    n_cls = num_classes(cfg)
    if n_cls is None:
        raise ValueError(f"fig9: {args.workdir} holds an unconditional model; need a class-conditional "
                         "one (experiments/configs/mnist_cfg.py).")  # fmt: skip
    labels = np.repeat(np.arange(n_cls), args.per_digit)  # row d of the grid: digit d
    process, step = trained.process, trained.step
    fig, axes = plt.subplots(1, len(args.scales), figsize=(1 + 0.7 * args.per_digit * len(args.scales), 6.8),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, w in zip(axes[0], args.scales, strict=True):
        cfg.sample.guidance_scale = w
        res = generate(cfg, trained.model, process, jax.random.key(args.seed), len(labels),
                       trained.record["data_shape"], labels=labels)  # fmt: skip
        print(f"  w = {w:g}: NFE {int(res.nfe)} (each on the doubled batch [cond, uncond])", flush=True)
        ax.imshow(image_grid(np.asarray(res.samples), ncol=args.per_digit)[..., 0], cmap="gray",
                  vmin=0, vmax=255, interpolation="nearest")  # fmt: skip
        kind = {0.0: " (unconditional)", 1.0: " (conditional)"}.get(w, "")
        ax.set_title(f"w = {w:g}{kind}")
        ax.set_xticks([])
        h = 28 + 2  # image_grid: 28-pixel images, 2-pixel padding
        ax.set_yticks(2 + h * np.arange(n_cls) + 14, [str(d) for d in range(n_cls)])
        ax.tick_params(length=0)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
    axes[0, 0].set_ylabel("class label y")
    s = cfg.sample
    fig.suptitle(f"Classifier-free guidance $(1-w)f(x,t,\\varnothing) + w f(x,t,y)$ on the "
                 f"{cfg.model.prediction} prediction f:\n"
                 f"{os.path.normpath(args.workdir)}, {step:,} training steps, {s.sampler}, "
                 f"{s.num_steps} steps, NFE {int(res.nfe)}; same prior draw in every panel")  # fmt: skip
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
