"""The combined table of the 2D few-step experiments, one per process, from outputs/fewstep/results_2d.jsonl.

    python -m experiments.fewstep.table [--results FILE]

Rows: the exact teacher's samplers, then each method and variant (the latest row per (process, method,
variant, nfe): `common.latest_rows`), then the oracle rows (the exact maps through the methods'
samplers: the pipeline check). Columns: median / RMSE of ‖x − Φ_exact(z)‖ at NFE 1, 2, 4
('[k used]': a solver that fits only k evaluations in the budget), the log-density gap (nats/dim) at
NFE 1 / 2 / 4, the training wall time (s) and steps, and the extra measurements (straightness S,
Euler's error against the flow's own fine solve, the train-step cost against CFM).
"""

from __future__ import annotations

import argparse

from experiments.fewstep import common

METHOD_ORDER = ("teacher", "consistency", "meanflow", "shortcut", "reflow", "progressive", "oracle")


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    used = r.get("nfe_used")
    return f"{r['median']:.3f} / {r['rmse']:.3f}" + ("" if used in (None, r["nfe"]) else f" [{used} used]")


def _notes(rows: list[dict]) -> str:
    r = rows[0]
    notes = []
    if "straightness" in r:
        notes.append(f"S = {r['straightness']:.2g} (teacher {r['straightness_teacher']:.2f})")
    if "self_rmse" in r:
        notes.append("self RMSE " + " / ".join(f"{x['self_rmse']:.3f}" for x in rows))
    if "step_cost_ratio" in r:
        notes.append(f"step {r['step_ms_meanflow']:.1f} ms = {r['step_cost_ratio']:.2f}× CFM")
    if r["method"] == "progressive":
        notes.append("train: cumulative over the halvings")
    return "; ".join(notes)


def _train(rows: list[dict]) -> str:
    timed = [r for r in rows if r["train_wall_s"] is not None]
    if not timed:
        return ""
    r = min(timed, key=lambda r: r["nfe"])  # progressive: the most-distilled student's cost
    return f"{r['train_wall_s']:.0f} s ({r['train_steps']} steps)"


def _order(r: dict) -> int:
    return METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else len(METHOD_ORDER)


def markdown(rows: list[dict], process: str) -> str:
    """The markdown table of one process (module docstring); teacher samplers that give the same
    numbers at every budget share a line; results at other budgets (8, 16) follow as a list."""
    rows = [r for r in common.latest_rows(rows) if r["process"] == process]
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for r in sorted(rows, key=_order):
        groups.setdefault((r["method"], r["variant"]), {})[r["nfe"]] = r
    nfes = common.NFES
    names, seen = {}, {}
    for (method, variant), by_nfe in groups.items():  # merge teacher samplers with identical results
        key = (method, tuple((k, round(by_nfe[k]["median"], 6), round(by_nfe[k]["rmse"], 6)) for k in nfes
                             if k in by_nfe))  # fmt: skip
        if method == "teacher" and key in seen:
            names[seen[key]].append(variant)
        else:
            seen[key], names[(method, variant)] = (method, variant), [variant]
    head = ["method", "variant", *(f"NFE {k}: median / RMSE" for k in nfes), "log-p gap", "train", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    other = []
    for (method, variant), by_nfe in groups.items():
        shown = [by_nfe[k] for k in nfes if k in by_nfe]
        extra = [f"NFE {k} {_cell(r)}" for k, r in sorted(by_nfe.items()) if k not in nfes]
        if extra:
            other.append(f"- {method}, {variant}: " + ", ".join(extra))
        if not shown or (method, variant) not in names:
            continue
        gap = " / ".join("—" if k not in by_nfe else f"{by_nfe[k]['log_p_gap']:+.2f}" for k in nfes)
        label = " = ".join(names[(method, variant)])
        cells = [method, label, *(_cell(by_nfe.get(k)) for k in nfes), gap, _train(shown), _notes(shown)]
        lines.append("| " + " | ".join(cells) + " |")
    if other:
        lines += ["", "Other budgets (median / RMSE):", *other]
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=common.RESULTS)
    args = p.parse_args(argv)
    rows = common.read_rows(args.results)
    if not rows:
        raise SystemExit(f"{args.results} holds no rows: run python -m experiments.fewstep.<method> first.")
    out = []
    present = {r["process"] for r in rows}
    for process in [q for q in common.PROCESSES if q in present] + sorted(present - set(common.PROCESSES)):
        out.append(f"### {process}: ‖x − Φ_exact(z)‖ over {common.NUM_EVAL} noise draws\n\n"
                   + markdown(rows, process))  # fmt: skip
    text = "\n\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
