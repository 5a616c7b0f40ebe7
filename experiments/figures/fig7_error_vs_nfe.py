"""Figure 7: error against the number of model evaluations (NFE) for every sampler, exact model.

Reads the CSV of the sampler benchmark (`bench/bench_samplers.py`: every sampler driven by the
exact model of a Gaussian mixture, so the error is the sampler's own): sliced W2 of the samples to
fresh mixture samples against NFE, one panel per problem (2D ring, 16D mixture) and process family
(VP, CondOT). diffjax: solid lines, filled markers (adaptive solvers: stars, one per tolerance);
peers (diffusers, flow_matching): dashed, hollow. Dotted line: the noise floor (the same statistic
for fresh data). Skipped if the CSV is missing (`--csv`, default bench/results/samplers.csv, else
the `--quick` run's samplers_quick.csv).

    python -m experiments.figures.fig7_error_vs_nfe --out outputs/figures [--csv PATH]
"""

from __future__ import annotations

import csv
import math
import os
import sys

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from experiments.figures import _common

RESULTS = os.path.join(_common.ROOT, "bench", "results")
CANDIDATES = [os.path.join(RESULTS, "samplers.csv"), os.path.join(RESULTS, "samplers_quick.csv")]
BENCH = ".venv-bench/bin/python bench/bench_samplers.py"


def read_runs(path: str) -> list[dict]:
    """The CSV rows with nfe (int), sliced_w2 and noise_floor (float), adaptive (bool)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["nfe"], r["adaptive"] = int(r["nfe"]), r["target_nfe"].startswith("tol")
        r["sliced_w2"], r["noise_floor"] = float(r["sliced_w2"]), float(r["noise_floor"])
    return rows


def minor_labels(lo: float, hi: float) -> FuncFormatter:
    """Labels for the minor ticks m·10^k of a log axis: m in (2, 5), or 2..9 on short ranges."""
    keep = (2, 5) if hi / lo > 20 else (2, 3, 4, 5, 6, 8)

    def label(v, _=None):
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in keep else ""

    return FuncFormatter(label)


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--csv", default=None, help="the benchmark's CSV (default: bench/results/"
                   "samplers.csv, else samplers_quick.csv)")  # fmt: skip
    args = p.parse_args(argv)
    path = args.csv or next((c for c in CANDIDATES if os.path.isfile(c)), CANDIDATES[0])
    if not os.path.isfile(path):
        raise _common.MissingInput(f"fig7 reads the sampler benchmark's CSV {path}; write it with "
                                   f"`{BENCH}` (~10 min on 2 cores; `--quick`, ~1 min, writes "
                                   "samplers_quick.csv with NFE 10 only)")  # fmt: skip
    runs = [r for r in read_runs(path) if not math.isnan(r["sliced_w2"])]
    problems = list(dict.fromkeys(r["problem"] for r in runs))
    families = list(dict.fromkeys(r["family"] for r in runs))
    methods = list(dict.fromkeys((r["library"], r["method"]) for r in runs))
    ours = [m for m in methods if m[0] == "diffjax"]
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(ours)}
    colours |= {m: plt.get_cmap("Dark2")(i % 8) for i, m in enumerate(m for m in methods if m not in ours)}

    fig, axes = plt.subplots(len(problems), len(families), figsize=(8.5 * len(families), 5.6 * len(problems)),
                             squeeze=False, layout="constrained")  # fmt: skip
    for (i, prob), (j, fam) in ((a, b) for a in enumerate(problems) for b in enumerate(families)):
        ax, sel = axes[i, j], [r for r in runs if r["problem"] == prob and r["family"] == fam]
        for lib, meth in dict.fromkeys((r["library"], r["method"]) for r in sel):
            pts = [r for r in sel if (r["library"], r["method"]) == (lib, meth)]
            pts.sort(key=lambda r: r["nfe"])
            mine, adaptive = lib == "diffjax", pts[0]["adaptive"]
            tols = f" (tol {', '.join(r['target_nfe'][4:] for r in pts)})" if adaptive else ""
            style = (":", "*") if adaptive else ("-", "o") if mine else ("--", "s")
            ax.plot([r["nfe"] for r in pts], [r["sliced_w2"] for r in pts], c=colours[lib, meth],
                    ls=style[0], marker=style[1], mfc=None if mine else "none",
                    ms=8 if adaptive else 4.5, lw=1.3, label=f"{lib}: {meth}{tols}")  # fmt: skip
        floor = sel[0]["noise_floor"]
        ax.axhline(floor, c="k", ls=":", lw=1, label=f"noise floor (fresh data): {floor:.3f}")
        ax.set(xscale="log", yscale="log", xlabel="NFE (model evaluations per sample)",
               ylabel="sliced W2 to exact mixture samples",
               title=f"{prob} mixture, {fam} process")  # fmt: skip
        ax.grid(True, which="both", alpha=0.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(minor_labels(*ax.get_ylim()))
        ax.set_xticks([t for t in (5, 10, 20, 50, 100, 200) if t <= 1.2 * max(r["nfe"] for r in sel)])
        ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        for nfe in sorted({r["nfe"] for r in sel if not r["adaptive"] and r["library"] == "diffjax"}):
            best = min((r for r in sel if r["nfe"] == nfe and r["library"] == "diffjax"),
                       key=lambda r: r["sliced_w2"])  # fmt: skip
            print(f"  {prob} {fam}: best diffjax sampler at NFE {nfe}: {best['method']} "
                  f"SW {best['sliced_w2']:.4f} (floor {floor:.4f})")  # fmt: skip
    fig.suptitle(f"Error vs NFE with the exact mixture model ({os.path.relpath(path)})")
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
