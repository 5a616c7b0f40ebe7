"""Figure 11: guidance rules on labelled Gaussian mixtures with exact answers (`experiments.guidance_table`).

Top: 2D samples of class y = 0 (two opposite components of an 8-component ring whose neighbours belong
to other classes) from the same noise under each rule at w = 3, over the contours of the exact p(x | y)
(black) and of p(x) (grey); the last panel shows exact samples of the tilted density
p(x | y)^w p(x)^{1−w} (rejection sampling). Bottom: the exact class accuracy E[p(y | x)], the sliced W2 to
p(x | y) and to the tilted density against w (2D solid, 8D dashed; dotted: the noise floors), and CFG++
against its λ. Samplers and settings as in the table module's docstring.

    python -m experiments.figures.fig11_guidance --out docs/figures [--quick]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import guidance_table as gt
from experiments.figures import _common

W_SHOW = 3.0
RULES = ("CFG", "CFG+interval", "autoguidance", "APG")
COLORS = {"cond": "k", "CFG": "tab:blue", "CFG+interval": "tab:orange", "autoguidance": "tab:green",
          "APG": "tab:red", "CFG++": "tab:purple"}  # fmt: skip
STYLE = {"2D ring": "-", "8D": "--"}


def contours(ax, mix, lim=5.5):
    g = np.linspace(-lim, lim, 160)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    for m, color, lw in [(mix, "0.8", 0.6), (mix.condition(0), "k", 0.6)]:
        logp = np.asarray(jax.jit(m.log_prob)(pts)).reshape(xx.shape)
        levels = np.linspace(logp.max() - 4.5, logp.max() - 0.5, 3)
        ax.contour(xx, yy, logp, levels=levels, colors=color, linewidths=lw)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--quick", action="store_true", help="the table's quick mode, 2D only (smoke test)")
    args = p.parse_args(argv)
    problems = ("2D ring",) if args.quick else tuple(gt.PROBLEMS)
    rows, _, samples = gt.run(args.quick, problems=problems, log=lambda s: print(s, file=sys.stderr))
    prob = samples[("2D ring", "tilted", None)]
    lam_show = max(lam for (name, rule, lam) in samples if name == "2D ring" and rule == "CFG++")

    fig = plt.figure(figsize=(15, 6.4))
    grid = fig.add_gridspec(2, 1, height_ratios=[0.7, 1.0], hspace=0.3)
    top = grid[0].subgridspec(1, 7, wspace=0.04)
    bottom = grid[1].subgridspec(1, 4, wspace=0.3)
    panels = [("cond", 1.0, "conditional, w = 1"), *[(r, W_SHOW, f"{r}, w = {W_SHOW:g}") for r in RULES],
              ("CFG++", lam_show, f"CFG++, λ = {lam_show:g}, {prob.cfgpp_steps} steps")]  # fmt: skip
    for i, (rule, scale, title) in enumerate(panels):
        ax = fig.add_subplot(top[i])
        contours(ax, prob.mix)
        x, y = samples[("2D ring", rule, scale)]
        x = np.asarray(x)[np.asarray(y) == 0][:600]
        ax.scatter(x[:, 0], x[:, 1], s=2, c=COLORS[rule], alpha=0.6, rasterized=True)
        a = next(r.acc for r in rows if r.problem == "2D ring" and r.rule == rule and r.scale == scale)
        ax.set_title(f"{title}\naccuracy {a:.3f}")
    ax = fig.add_subplot(top[6])
    contours(ax, prob.mix)
    tilted = np.asarray(prob.tilted(W_SHOW)[0][0])[:600]
    ax.scatter(tilted[:, 0], tilted[:, 1], s=2, c="0.3", alpha=0.6, rasterized=True)
    ax.set_title(f"exact tilted target\np(x|y)^w p(x)^(1−w), w = {W_SHOW:g}")

    axes = [fig.add_subplot(bottom[i]) for i in range(4)]
    for name in problems:
        sub = [r for r in rows if r.problem == name]
        cond = next(r for r in sub if r.rule == "cond")
        for rule in RULES:
            rr = [cond] + [r for r in sub if r.rule == rule]
            w = [r.scale for r in rr]
            label = rule if name == "2D ring" else None
            kw = dict(c=COLORS[rule], ls=STYLE[name], marker="o", ms=3, label=label)
            axes[0].plot(w, [r.acc for r in rr], **kw)
            axes[1].plot(w, [r.sw for r in rr], **kw)
            axes[2].plot(w, [r.sw_tilt for r in rr], **kw)
        floors = sorted({r.scale: r.sw_tilt_floor for r in sub if not np.isnan(r.sw_tilt)}.items())
        axes[1].axhline(cond.sw_floor, c="0.5", ls=":", lw=1)
        axes[2].plot([f[0] for f in floors], [f[1] for f in floors], c="0.5", ls=":", lw=1)
        pp = [r for r in sub if r.rule == "CFG++"]
        lam = [r.scale for r in pp]
        first = name == "2D ring"
        axes[3].plot(lam, [r.acc for r in pp], c=COLORS["CFG++"], ls=STYLE[name], marker="o", ms=3,
                     label="accuracy" if first else None)  # fmt: skip
        axes[3].plot(lam, [r.sw for r in pp], c="tab:brown", ls=STYLE[name], marker="s", ms=3,
                     label="SW2 to p(x|y)" if first else None)  # fmt: skip
        axes[3].axhline(cond.acc, c=COLORS["CFG++"], ls=STYLE[name], lw=0.8, alpha=0.5)
    axes[0].set_title("exact class accuracy E p(y|x)\n(2D solid, 8D dashed)")
    axes[1].set_title("sliced W2 to p(x|y)\n(dotted: noise floor)")
    axes[2].set_title("sliced W2 to p(x|y)^w p(x)^(1−w)\n(dotted: noise floor)")
    axes[3].set_title(f"CFG++ ({prob.cfgpp_steps} DDIM steps) against λ\n(thin: conditional accuracy)")
    for ax in axes[:3]:
        ax.set_xlabel("guidance scale w")
    axes[3].set_xlabel("λ")
    axes[0].legend(fontsize=6.5, loc="lower right", ncol=1)
    axes[3].legend(fontsize=6.5, loc="center right")
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
