"""Figure 8: samples of the trained MNIST models side by side — DDPM, VP SDE and flow matching.

Each model is restored from its experiments.train work directory with
`experiments.builders.load_run` (EMA parameters) and sampled with its config's default sampler
(`experiments.builders.generate`), 64 samples from the same seed, x̂0 clipped to the data range
[−1, 1] at every step (`clip_denoised`; `--raw` samples the unclipped model), shown as an 8 × 8 grid
(`diffjax.viz.image_grid`). Panel titles: model (process, network prediction), sampler, steps, NFE
(model evaluations per sample) and training steps. Work directories without a checkpoint are left
out; skipped only if none has one.

    python -m experiments.figures.fig8_mnist_samples --out outputs/figures \
        [--ddpm outputs/mnist_ddpm] [--vp outputs/mnist_vp] [--fm outputs/mnist_fm]
"""

from __future__ import annotations

import os
import sys
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from diffjax.viz import image_grid
from experiments.figures import _common

MODELS = {  # flag: (title, default work directory, config file)
    "ddpm": ("DDPM", os.path.join("outputs", "mnist_ddpm"), "mnist_ddpm.py"),
    "vp": ("VP SDE", os.path.join("outputs", "mnist_vp"), "mnist_vp.py"),
    "fm": ("flow matching", os.path.join("outputs", "mnist_fm"), "mnist_fm.py"),
}


def train_command(flag: str, workdir: str) -> str:
    return (f"python -m experiments.train --config experiments/configs/{MODELS[flag][2]} "
            f"--workdir {workdir} --config.data.data_dir=../shared/data/mnist")  # fmt: skip


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    for flag, (title, default, _) in MODELS.items():
        p.add_argument(f"--{flag}", default=default, help=f"{title} work directory (default {default})")
    p.add_argument("--num", type=int, default=64, help="samples per model (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every model)")
    p.add_argument("--raw", action="store_true", help="do not clip x̂0 to [−1, 1] while sampling")
    args = p.parse_args(argv)
    present = {f: getattr(args, f) for f in MODELS if _common.has_checkpoint(getattr(args, f))}
    if not present:
        cmds = "; ".join(train_command(f, getattr(args, f)) for f in MODELS)
        raise _common.MissingInput(f"fig8: no trained MNIST model found; train one: {cmds}")
    from experiments.builders import generate

    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 5.3), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, (flag, workdir) in zip(axes[0], present.items(), strict=True):
        cfg, trained = _common.load_run(workdir, train_command(flag, workdir))
        step = trained.step
        cfg.sample.clip_denoised = not args.raw
        t0 = time.perf_counter()
        res = generate(cfg, trained.model, trained.process, jax.random.key(args.seed), args.num,
                       trained.record["data_shape"])  # fmt: skip
        samples = np.asarray(res.samples)
        s = cfg.sample
        print(f"  {flag}: {workdir} step {step}, {s.sampler} {s.num_steps} steps, NFE {int(res.nfe)}, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        ax.imshow(image_grid(samples, ncol=int(np.ceil(np.sqrt(args.num))))[..., 0], cmap="gray",
                  vmin=0, vmax=255, interpolation="nearest")  # fmt: skip
        ax.axis("off")
        ax.set_title(f"{MODELS[flag][0]}: {cfg.process.name} process, {cfg.model.prediction} prediction\n"
                     f"{s.sampler}, {s.num_steps} steps, NFE {int(res.nfe)}\n"
                     f"{step:,} training steps ({os.path.normpath(workdir)})")  # fmt: skip
    missing = [MODELS[f][0] for f in MODELS if f not in present]
    note = f" (not trained yet: {', '.join(missing)})" if missing else ""
    clip = "raw x̂0" if args.raw else "x̂0 clipped to [−1, 1]"
    fig.suptitle(f"Unconditional MNIST samples: {args.num} per model, seed {args.seed}, EMA params, {clip}"
                 + (f"\n{note.strip()}" if note else ""))  # fmt: skip
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
