"""Figure 3: forward noising of MNIST digits — the DDPM chain and the CondOT flow-matching path.

Both are x_t = α(t)·x_data + σ(t)·ε, drawn here with the same ε for each digit. They run in
opposite time conventions (the DM↔FM translation table of `shared/seeds/003`):

    DDPM (diffusion):       data X_0 at t = 0, noise X_T at t = T = 1000,  α = √ᾱ_t, σ = √(1 − ᾱ_t)
    CondOT (flow matching): data X_1 at t = 1, noise X_0 at t = 0,        α = t,   σ = 1 − t

Columns run from data (left) to noise (right) in both panels; the titles give t, α and σ.
Skipped with a message if the MNIST IDX files are missing (`--data-dir`, default
../shared/data/mnist).

    python -m experiments.figures.fig3_forward_noising --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from diffjax.data import DatasetNotFoundError, load_dataset
from diffjax.processes import CondOTPath, DDPMChain
from experiments.figures import _common

DDPM_TIMES = [0, 50, 100, 200, 300, 500, 700, 1000]
FM_TIMES = [1.0, 0.9, 0.8, 0.7, 0.6, 0.4, 0.2, 0.0]
DIGITS = [0, 1, 2, 3, 7]


def load_digits(data_dir: str) -> np.ndarray:
    """One test image (28, 28, 1) in [−1, 1] of each digit in DIGITS."""
    try:
        images, labels = load_dataset("mnist", "test", data_dir, source="idx")
    except DatasetNotFoundError as err:
        raise _common.MissingInput(f"fig3 needs the MNIST IDX files: {err.reason}") from None
    return np.stack([images[np.flatnonzero(labels == d)[0]] for d in DIGITS])


def noised(process, x, eps, times) -> np.ndarray:
    """(len(times), n, 28, 28, 1): x_t = α(t) x + σ(t) ε for every t."""
    out = []
    for t in times:
        tb = jnp.full((x.shape[0],), t, jnp.float32)
        mean, std = process.marginal(x, tb)
        out.append(np.asarray(mean + std * eps))
    return np.stack(out)


def draw(subfig, process, frames, times, title, fmt):
    axes = subfig.subplots(frames.shape[1], frames.shape[0], gridspec_kw=dict(wspace=0.04, hspace=0.04))
    for j, t in enumerate(times):
        a, s = float(process.alpha(t)), abs(float(process.sigma(t)))
        for i in range(frames.shape[1]):
            ax = axes[i, j]
            ax.imshow(frames[j, i, :, :, 0], cmap="gray", vmin=-1, vmax=1)
            ax.axis("off")
            if i == 0:
                ax.set_title(f"t={fmt(t)}\nα={a:.2f}\nσ={s:.2f}", fontsize=8)
    subfig.suptitle(title, fontsize=10)


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--data-dir", default=_common.DEFAULT_MNIST, help="folder of the MNIST IDX files")
    args = p.parse_args(argv)
    x = jnp.asarray(load_digits(args.data_dir))
    eps = jax.random.normal(jax.random.key(0), x.shape)
    ddpm, fm = DDPMChain.linear(1000), CondOTPath()
    frames_dm = noised(ddpm, x, eps, DDPM_TIMES)
    frames_fm = noised(fm, x, eps, FM_TIMES)

    fig = plt.figure(figsize=(15, 5.0), layout="constrained")
    left, right = fig.subfigures(1, 2, wspace=0.04)
    draw(left, ddpm, frames_dm, DDPM_TIMES,
         "DDPM chain (β: 1e-4→0.02, T=1000): data $X_0$ at t=0 → noise $X_T$ at t=T", str)  # fmt: skip
    draw(right, fm, frames_fm, FM_TIMES,
         "CondOT path $X_t = tX_1 + (1-t)X_0$: data $X_1$ at t=1 → noise $X_0$ at t=0",
         lambda t: f"{t:.1f}")  # fmt: skip
    fig.suptitle("Forward noising $x_t=\\alpha(t)\\,x_{data}+\\sigma(t)\\,\\varepsilon$ (same ε per "
                 "digit in both panels; grey scale clipped to [−1, 1])", fontsize=11)  # fmt: skip
    fig.supxlabel(
        "DM ↔ FM:  data sample  $X_0$ ↔ $X_1$   |   noise sample  $X_T$ ↔ $X_0$   |   time  "
        "$t\\in[0,T]$ (diffusion) ↔ $t\\in[0,1]$ (interpolation)   |   network predicts  "
        "$\\varepsilon_\\theta(X,t)$ ↔ $v_\\theta(X,t)$",
        fontsize=9.5,
    )
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
