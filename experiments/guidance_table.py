"""The exact guidance table: every guidance rule of `diffjax.guidance` on labelled Gaussian mixtures
whose class-conditional densities, class posterior and tilted targets are known.

Problems (4 classes, 8 components, class c = components {c, c + 4}; classes overlap, so guidance
changes the samples): `ring_2d` (8 components on a circle of radius 3, std 0.8, adjacent components
of different classes) and `mixture_8d` (8 random means of scale 0.8 in 8D, diagonal stds in
[0.5, 1]). Exact conditional sampling classifies a fraction ≈ 0.78 / 0.79 of its samples correctly.

Rules, each from the SAME initial noise x_T and labels y = i mod 4 (n per class):
    cond          w = 1 (the exact conditional model)
    CFG           (1 − w)·D(x, ∅) + w·D(x, y)                          (`cfg_model`)
    CFG+interval  CFG only where σ/α ∈ (SIGMA_LO, SIGMA_HI], conditional elsewhere
    autoguidance  D_bad + w(D_good − D_bad), D_bad = the exact conditional model of the mixture with
                  every component std × BAD_WIDTH (a deliberately degraded network)
    APG           η = APG_ETA, r = APG_R, no momentum, on the CFG pair
    APG+momentum  the same with momentum β = APG_MOMENTUM (Sadat et al.'s running average of Δ over
                  the sampler's steps, threaded by `diffjax.sample`)
    CFG++         λ ∈ LAMBDAS, DDIM with CFGPP_STEPS steps (its own sampler: it is a DDIM rule)
All but CFG++ sample with DPM-Solver++(2M) on VPSDE, 'eps' prediction, `STEPS` steps of the log-SNR
grid to t_eps = 1e-3, then x̂0 (`diffjax.sample`); the sampler error is measured as the sliced W2
between STEPS and 2·STEPS samples of CFG at the largest w (printed; it must be far below the floor).

Columns: sliced W2 (256 directions, root-mean-square over the 4 classes of the per-class distance) of
the samples to fresh exact samples of p(x | y), with its noise floor (the same statistic between two
exact sample sets); the exact class accuracy E[p(y | x)] (oracle posterior at the data) ± its
standard error; for CFG-type rules the sliced W2 to independent samples of the tilted density
p_w(x | y) ∝ p(x | y)^w p(x)^{1−w}, with its floor. Tilted samples: rejection sampling from p(x | y)
(exact draws) with acceptance probability p(y | x)^{w−1} ≤ 1 (since p_w/p(x | y) ∝ p(y | x)^{w−1}):
exact and independent; at w = 1 everything is accepted (the tilt is p(x | y)).

A second table follows CFG++ at fixed λ over 5–200 DDIM steps: it is DDIM-CFG with the per-step scale
w_k = λ/(1 − e^{−h_k}) (`diffjax.guidance.cfgpp_equivalent_scales`), which grows like λ/h as the steps
shrink, so its samples depend on the step count and have no ODE limit at fixed λ.

    python -m experiments.guidance_table            # full table (a few minutes on a CPU)
    python -m experiments.guidance_table --quick    # small n, few steps (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.guidance import (
    apg,
    autoguidance,
    bind_labels,
    cfg_model,
    cfgpp_equivalent_scales,
    cfgpp_sample,
    guidance_interval,
)
from diffjax.metrics import sliced_wasserstein
from diffjax.oracle import GaussianMixture

_sliced_w2 = jax.jit(sliced_wasserstein)
_class_posterior = jax.jit(lambda mix, x: mix.class_posterior(x))

N_CLASSES = 4
SCALES = (1.0, 1.5, 2.0, 3.0, 5.0)
LAMBDAS = (0.2, 0.4, 0.6, 0.8, 1.0)
SIGMA_LO, SIGMA_HI = 0.3, 3.0
BAD_WIDTH = 1.5
APG_ETA, APG_R, APG_MOMENTUM = 0.0, 1.0, -0.5
STEPS, CFGPP_STEPS, CFGPP_QUICK_STEPS = 200, 50, 10
PROCESS = dj.VPSDE()
LABELS8 = [0, 1, 2, 3, 0, 1, 2, 3]


def ring_2d(width: float = 1.0) -> GaussianMixture:
    ang = 2 * np.pi * np.arange(8) / 8
    means = 3.0 * np.stack([np.cos(ang), np.sin(ang)], -1)
    return GaussianMixture.create(means, (0.8 * width) ** 2, labels=LABELS8)


def mixture_8d(width: float = 1.0) -> GaussianMixture:
    rng = np.random.default_rng(0)
    means = 0.8 * rng.standard_normal((8, 8))
    stds = rng.uniform(0.5, 1.0, (8, 8)) * width
    return GaussianMixture.create(means, stds**2, labels=LABELS8)


PROBLEMS = {"2D ring": ring_2d, "8D": mixture_8d}


@functools.partial(jax.jit, static_argnums=2)
def exact_conditional(mix: GaussianMixture, key, n: int, label):
    """n exact samples of p(x | label)."""
    return mix.condition(label).sample(key, n)[0]


def exact_tilted(mix: GaussianMixture, key, n: int, label: int, w: float):
    """n samples of p(x | y)^w p(x)^{1−w} / Z by rejection from p(x | y), acceptance p(y | x)^{w−1}."""
    if w < 1:
        raise ValueError(f"exact_tilted: the rejection bound needs w >= 1, got {w}.")
    out, have = [], 0
    while have < n:
        key, k1, k2 = jax.random.split(key, 3)
        x = exact_conditional(mix, k1, 4 * n, label)
        p = _class_posterior(mix, x)[:, label]
        keep = np.asarray(jax.random.uniform(k2, p.shape) < p ** (w - 1.0))
        out.append(np.asarray(x)[keep])
        have += int(keep.sum())
    return jnp.asarray(np.concatenate(out)[:n])


@dataclasses.dataclass
class Row:
    problem: str
    rule: str
    scale: float
    sw: float
    sw_floor: float
    acc: float
    acc_se: float
    sw_tilt: float = math.nan
    sw_tilt_floor: float = math.nan


class Problem:
    """One labelled mixture with its fixed noise, labels, references and rules."""

    def __init__(self, name: str, n_per_class: int, steps: int, cfgpp_steps: int, seed: int = 0):
        self.name, self.steps, self.cfgpp_steps = name, steps, cfgpp_steps
        self.mix = PROBLEMS[name]()
        self.bad = PROBLEMS[name](BAD_WIDTH)
        self.n = n_per_class
        self.y = jnp.arange(N_CLASSES * n_per_class) % N_CLASSES
        key = jax.random.key(seed)
        self.k_noise, self.k_ref, self.k_floor, self.k_proj, self.k_tilt = jax.random.split(key, 5)
        self.x_init = PROCESS.prior_sample(self.k_noise, (self.y.shape[0], self.mix.dim))
        self.model = self.mix.conditional_model(PROCESS)
        self.bad_model = self.bad.conditional_model(PROCESS)
        self.refs = [exact_conditional(self.mix, jax.random.fold_in(self.k_ref, c), n_per_class, c)
                     for c in range(N_CLASSES)]  # fmt: skip
        self.floors = [exact_conditional(self.mix, jax.random.fold_in(self.k_floor, c), n_per_class, c)
                       for c in range(N_CLASSES)]  # fmt: skip
        self._tilted: dict[float, tuple[list, list]] = {}

    # -- rules ---------------------------------------------------------------------------------
    def cfg(self, w):
        return cfg_model(self.model, self.y, w, N_CLASSES)

    def rules(self, w):
        """name -> guided model at scale w (all 'eps' models of VPSDE)."""
        cfg = self.cfg(w)
        return {
            "CFG": cfg,
            "CFG+interval": guidance_interval(cfg, PROCESS, SIGMA_LO, SIGMA_HI),
            "autoguidance": autoguidance(bind_labels(self.model, self.y),
                                         bind_labels(self.bad_model, self.y), w),  # fmt: skip
            "APG": apg(cfg, PROCESS, APG_ETA, APG_R, prediction="eps"),
            "APG+momentum": apg(cfg, PROCESS, APG_ETA, APG_R, prediction="eps", momentum=APG_MOMENTUM),
        }

    def sample(self, model, steps=None):
        steps = steps or self.steps
        return dj.sample("dpm_solver_pp", model, PROCESS, jax.random.key(1), num_steps=steps,
                         prediction="eps", grid="logsnr", x_init=self.x_init).samples  # fmt: skip

    def sample_cfgpp(self, lam):
        return cfgpp_sample(self.cfg(1.0), PROCESS, jax.random.key(1), None, self.cfgpp_steps, lam,
                            prediction="eps", grid="logsnr", x_init=self.x_init)  # fmt: skip

    # -- metrics -------------------------------------------------------------------------------
    def per_class(self, x):
        return [x[np.asarray(self.y) == c] for c in range(N_CLASSES)]

    def sw(self, xs, refs) -> float:
        return float(np.sqrt(np.mean([float(_sliced_w2(a, b, self.k_proj)) ** 2
                                      for a, b in zip(xs, refs, strict=True)])))  # fmt: skip

    def accuracy(self, x) -> tuple[float, float]:
        p = np.asarray(jnp.take_along_axis(_class_posterior(self.mix, x), self.y[:, None], 1)[:, 0])
        return float(p.mean()), float(p.std(ddof=1) / np.sqrt(p.size))

    def tilted(self, w):
        if w not in self._tilted:
            k = jax.random.fold_in(self.k_tilt, int(round(1000 * w)))
            a, b = ([exact_tilted(self.mix, jax.random.fold_in(k, off + c), self.n, c, w)
                     for c in range(N_CLASSES)] for off in (0, 100))  # fmt: skip
            self._tilted[w] = (a, b)
        return self._tilted[w]

    def row(self, rule, scale, x, tilt: bool) -> Row:
        xs = self.per_class(x)
        acc, se = self.accuracy(x)
        row = Row(self.name, rule, scale, self.sw(xs, self.refs), self.sw(self.floors, self.refs), acc, se)
        if tilt:
            a, b = self.tilted(scale)
            row.sw_tilt, row.sw_tilt_floor = self.sw(xs, a), self.sw(b, a)
        return row


def run(quick: bool = False, scales=SCALES, lambdas=LAMBDAS, problems=tuple(PROBLEMS), log=print):
    """All rows of the table, the sampler check per problem, and the 2D samples per rule (for fig11)."""
    n, steps, cfgpp_steps = (100, 10, CFGPP_QUICK_STEPS) if quick else (2000, STEPS, CFGPP_STEPS)
    if quick:
        scales, lambdas = (1.0, 3.0), (1.0,)
    rows, checks, samples = [], {}, {}
    for name in problems:
        t0 = time.perf_counter()
        prob = Problem(name, n, steps, cfgpp_steps)
        x = prob.sample(prob.cfg(1.0))
        rows.append(prob.row("cond", 1.0, x, tilt=True))
        samples[(name, "cond", 1.0)] = (x, prob.y)
        for w in scales:
            if w == 1.0:
                continue
            for rule, model in prob.rules(w).items():
                x = prob.sample(model)
                rows.append(prob.row(rule, w, x, tilt=True))
                samples[(name, rule, w)] = (x, prob.y)
        for lam in lambdas:
            x = prob.sample_cfgpp(lam)
            rows.append(prob.row("CFG++", lam, x, tilt=False))
            samples[(name, "CFG++", lam)] = (x, prob.y)
        if not quick:  # the sampler's own error: STEPS against 2·STEPS steps at the largest w
            w_max = max(scales)
            fine = prob.sample(prob.cfg(w_max), 2 * steps)
            coarse = samples[(name, "CFG", w_max)][0]
            checks[name] = (w_max, prob.sw(prob.per_class(coarse), prob.per_class(fine)),
                            prob.sw(prob.floors, prob.refs))  # fmt: skip
        samples[(name, "tilted", None)] = prob
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
    return rows, checks, samples


def cfgpp_step_dependence(quick: bool = False, lambdas=(0.2, 1.0), steps=(5, 10, 25, 50, 100, 200)):
    """CFG++ on the 2D ring at fixed λ with more and more DDIM steps: (λ, steps, accuracy, its standard
    error, SW2 to p(x | y), floor, the equivalent CFG scale w_k of `cfgpp_equivalent_scales`, constant
    on the log-SNR grid). Shows that CFG++ at fixed λ has no step-size-independent limit."""
    if quick:
        lambdas, steps = (1.0,), (CFGPP_QUICK_STEPS,)
    prob = Problem("2D ring", 100 if quick else 2000, STEPS, CFGPP_STEPS)
    floor = prob.sw(prob.floors, prob.refs)
    out = []
    for lam in lambdas:
        for n in steps:
            prob.cfgpp_steps = n
            x = prob.sample_cfgpp(lam)
            w_k = np.asarray(cfgpp_equivalent_scales(PROCESS, dj.make_grid(PROCESS, n, "logsnr"), lam))
            out.append((lam, n, *prob.accuracy(x), prob.sw(prob.per_class(x), prob.refs), floor,
                        float(np.median(w_k))))  # fmt: skip
    return out


def fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def markdown(rows: list[Row]) -> str:
    lines = ["| problem | rule | w (λ for CFG++) | SW2 to p(x\\|y) [floor] | accuracy E p(y\\|x) | "
             "SW2 to p(x\\|y)^w p(x)^(1−w) [floor] |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tilt = "—" if math.isnan(r.sw_tilt) else f"{r.sw_tilt:.3f} [{r.sw_tilt_floor:.3f}]"
        lines.append(f"| {r.problem} | {r.rule} | {r.scale:g} | {r.sw:.3f} [{r.sw_floor:.3f}] | "
                     f"{r.acc:.3f} ± {r.acc_se:.3f} | {tilt} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--quick", action="store_true",
                   help="n = 100 per class, 10 steps, w ∈ {1, 3}, λ = 1 (smoke test)")
    args = p.parse_args(argv)
    rows, checks, _ = run(args.quick, problems=tuple(args.problems), log=lambda s: print(s, file=sys.stderr))
    print(markdown(rows))
    steps, cfgpp_steps = (10, 10) if args.quick else (STEPS, CFGPP_STEPS)
    print(f"\nSampler: DPM-Solver++(2M), VPSDE, eps, log-SNR grid, {steps} steps to t_eps = 1e-3 (CFG++: "
          f"DDIM, {cfgpp_steps} steps, same grid). Interval (σ_lo, σ_hi] = ({SIGMA_LO}, {SIGMA_HI}]; "
          f"autoguidance D_bad: stds × {BAD_WIDTH}; APG η = {APG_ETA}, r = {APG_R}, "
          f"momentum 0 or β = {APG_MOMENTUM}.")  # fmt: skip
    print("\nCFG++ against the number of DDIM steps (2D ring, log-SNR grid; w_k: the equivalent CFG scale "
          "λ/(1 − e^{−h}) of every step):\n\n| λ | steps | accuracy | SW2 to p(x\\|y) [floor] | w_k |\n"
          "|---|---|---|---|---|")  # fmt: skip
    for lam, n, acc, se, sw, floor, w_k in cfgpp_step_dependence(args.quick):
        print(f"| {lam:g} | {n} | {acc:.3f} ± {se:.3f} | {sw:.3f} [{floor:.3f}] | {w_k:.2f} |")
    for name, (w_max, err, floor) in checks.items():
        print(f"Sampler error ({name}, CFG w = {w_max:g}): SW2({steps} vs {2 * steps} steps) = "
              f"{err:.4f} (floor {floor:.3f}).")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
