"""Figure 12: few-step generation on the 2D ring (`experiments.fewstep`): the median endpoint error
‖x − Φ_exact(z)‖ against the number of network evaluations, each method next to the exact teacher's
ODE solvers, one panel per process (CondOT, VP). Read from outputs/fewstep/results_2d.jsonl (the latest
row per method, variant and NFE). Multistep consistency sampling is shown with the implied noise; the
re-noised variant (whose error at NFE ≥ 2 measures the departure from z's trajectory, 2–5 even for the
exact f*), the 1-rectified flow (on the teacher's Euler curve) and the oracle rows (0) are in the table
(`python -m experiments.fewstep.table`). The two one-step distillations sit at NFE 1, drawn apart.

    python -m experiments.fewstep.<consistency|meanflow|reflow|progressive>   # writes the rows
    python -m experiments.figures.fig12_few_step --out docs/figures
"""

from __future__ import annotations

import os
import sys

import matplotlib.pyplot as plt

from experiments.fewstep import common
from experiments.figures import _common

PROCESS_TITLES = {"condot": "CondOT path (data at t = 1)",
                  "vp": "VP SDE (data at t = 0; reflow and iCT run on CondOT only)"}  # fmt: skip
TEACHER = {  # variant -> (label, colour, line style); the teacher's samplers in greys
    "euler": ("teacher Euler", "0.25", "--"),
    "heun": ("teacher Heun", "0.45", "--"),
    "dpm_solver_pp": ("teacher DPM-Solver++", "0.65", "--"),
    "DDIM (uniform, t_eps=0)": ("teacher DDIM, uniform grid to t_data", "0.25", ":"),
    "Euler (uniform, t_eps=0)": ("teacher Euler, uniform grid to t_data", "0.55", "-."),
}
METHODS = {  # (method, variant) -> (label, colour, marker, line style)
    ("consistency", "CD (Heun, N=18, l2), implied noise"): ("CD, implied noise", "tab:blue", "o", "-"),
    ("consistency", "iCT, implied noise"): ("iCT, implied noise", "tab:cyan", "s", "-"),
    ("meanflow", "p=0"): ("MeanFlow p = 0", "tab:red", "^", "-"),
    ("meanflow", "p=1 (paper's weight)"): ("MeanFlow p = 1", "tab:red", "v", ":"),
    ("reflow", "2-RF, Euler"): ("2-rectified flow, Euler", "tab:green", "D", "-"),
    ("reflow", "1-step distillation of 2-RF"): ("2-RF distilled to 1 step", "tab:green", "*", ""),
    ("reflow", "1-step distillation of the teacher"): ("teacher distilled to 1 step", "tab:purple", "*", ""),
    ("progressive", "DDIM student"): ("progressive distillation (DDIM)", "tab:orange", "P", "-"),
    ("shortcut", "from scratch"): ("shortcut model", "tab:brown", "X", "-"),
}


JITTER = {("reflow", "1-step distillation of 2-RF"): 0.93,
          ("reflow", "1-step distillation of the teacher"): 1.07}  # fmt: skip


def series(rows: list[dict], process: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(method, variant) -> [(evaluations used, median error)] sorted by NFE, duplicates (a budget that
    a solver cannot use in full) dropped."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in common.latest_rows(rows):
        if r["process"] == process and r["method"] != "oracle":
            used = r.get("nfe_used") or r["nfe"]
            out.setdefault((r["method"], r["variant"]), {}).setdefault(used, r["median"])
    return {k: sorted(v.items()) for k, v in out.items()}


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--results", default=os.path.join(_common.ROOT, common.RESULTS))
    args = p.parse_args(argv)
    rows = common.read_rows(args.results)
    if not rows:
        raise _common.MissingInput(f"{args.results} holds no rows: run the experiments.fewstep modules")
    processes = [q for q in PROCESS_TITLES if any(r["process"] == q for r in rows)]
    fig, axes = plt.subplots(1, len(processes), figsize=(5.2 * len(processes) + 2.8, 5.0), sharey=True,
                             squeeze=False)  # fmt: skip
    handles = {}
    for ax, process in zip(axes[0], processes, strict=True):
        for key, pts in series(rows, process).items():
            method, variant = key
            if method == "teacher":
                if variant not in TEACHER:
                    continue
                label, color, ls = TEACHER[variant]
                style = dict(c=color, ls=ls, marker=".", ms=4, lw=1.1)
            elif key in METHODS:
                label, color, marker, ls = METHODS[key]
                style = dict(c=color, ls=ls or "none", marker=marker, ms=9 if marker == "*" else 5, lw=1.4)
            else:
                continue
            shift = JITTER.get(key, 1.0)  # the 1-step points coincide: draw them apart
            (line,) = ax.plot([n * shift for n, _ in pts], [m for _, m in pts], label=label, **style)
            handles.setdefault(label, line)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
        ax.minorticks_off()
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_title(PROCESS_TITLES[process])
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("median ‖x − Φ_exact(z)‖ over 4096 draws")
    order = [v[0] for v in TEACHER.values()] + [v[0] for v in METHODS.values()]
    labels = [lab for lab in order if lab in handles]
    fig.legend([handles[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)  # fmt: skip
    fig.suptitle("Few-step samplers on the 2D ring: error against the exact flow map from the same noise")
    fig.tight_layout()
    return _common.save(fig, args.out, _common.script_name(__file__))


if __name__ == "__main__":
    sys.exit(_common.run(main))
