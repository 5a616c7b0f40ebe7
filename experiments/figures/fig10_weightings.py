"""Figure 10: the effective weightings of common training recipes on the log-SNR axis (Kingma & Gao
2023, Fig. 2), each estimated by `diffjax.effective_weighting` from its own time distribution, weighting
and regression target: the weight p(λ)·w_ε(λ) the recipe puts on ε-matching around each log-SNR λ
(left, normalised to 1 at λ = 0: only the shape matters), and the noise-level density p(λ) alone
(right). As Kingma & Gao observe, CFM on the CondOT path and v-prediction on the cosine schedule have
the same effective weighting (∝ e^{−λ/2}), and the likelihood weighting is flat in λ.

    DDPM-ε     VP, t ~ U, ε-regression (w = 1)                       (Ho et al. 2020)
    EDM        ln σ ~ N(−1.2, 1.2²), x0-regression with (σ²+σ_d²)/(σσ_d)², σ_d = 0.5  (Karras et al. 2022)
    min-SNR-5  VP, t ~ U, ε-regression with min(SNR, 5)/SNR            (Hang et al. 2023)
    CFM        CondOT path, t ~ U, velocity regression (w = 1)         (Lipman et al. 2023)
    v-pred     cosine VP, t ~ U, v-regression (w = 1)                  (Salimans & Ho 2022)
    likelihood VP, t ~ U, score matching with λ = g²                   (Song et al. 2021)

    python -m experiments.figures.fig10_weightings --out outputs/figures
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import diffjax as dj
from experiments.figures import _common

EDGES = jnp.linspace(-15.0, 15.0, 121)


def recipes():
    vp, ve, cos, ot = dj.VPSDE(), dj.VESDE(sigma_min=0.002, sigma_max=80.0), dj.CosineVPSDE(), dj.CondOTPath()
    return [
        ("DDPM-ε (VP, uniform t)", vp, dj.uniform_time(vp), "eps", "eps", "tab:blue"),
        ("EDM (log-normal σ, EDM weight)", ve, dj.lognormal_time(ve), dj.EDMWeighting(0.5), "x0", "tab:red"),
        ("min-SNR-5 (VP, uniform t)", vp, dj.uniform_time(vp), dj.MinSNRWeighting(5.0), "eps", "tab:purple"),
        ("CFM / CondOT (uniform t, velocity)", ot, dj.uniform_time(ot, 1e-4), "none", "velocity",
         "tab:green"),
        ("v-prediction (cosine VP, uniform t)", cos, dj.uniform_time(cos), "none", "v", "tab:orange"),
        ("likelihood (VP, λ = g²)", vp, dj.uniform_time(vp), "likelihood", "eps", "tab:gray"),
    ]  # fmt: skip


def main(argv=None) -> str:
    args = _common.parser(__doc__).parse_args(argv)
    centers = np.asarray(0.5 * (EDGES[1:] + EDGES[:-1]))
    at_zero = int(np.argmin(np.abs(centers)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    key = jax.random.key(0)
    for label, process, sampler, weighting, target, color in recipes():
        w = np.asarray(dj.effective_weighting(process, sampler, weighting, target, EDGES, key, 1_000_000))
        density = np.asarray(dj.effective_weighting(process, sampler, "eps", "eps", EDGES, key, 1_000_000))
        axes[0].plot(centers, w / w[at_zero], c=color, lw=2, label=label)
        axes[1].plot(centers, density, c=color, lw=1.5, label=label)
    axes[0].set_title("effective weighting p(λ)·w(λ) on ε-matching, = 1 at λ = 0")
    axes[1].set_title("noise-level density p(λ) of each recipe's time distribution")
    axes[0].set_ylim(1e-3, 1e2)
    axes[1].set_ylim(1e-4, 1.0)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("log-SNR λ = log(α²/σ²)   (noise ←  → data)")
        ax.set_xlim(float(EDGES[0]), float(EDGES[-1]))
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
