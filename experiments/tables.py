"""The markdown tables of the evaluators' JSON lines results (`experiments.evaluate`: FD-MNIST rows,
`experiments.evaluate_2d`: 2-D rows); both commands' `--table FILE` prints them for a file of either."""

from __future__ import annotations

import json
import os

from experiments.builders import user_errors


def markdown_table(rows) -> str:
    """One line per row; a later row for the same model × sampler × NFE × w replaces an earlier one."""
    latest = {(r["model"], r.get("ema"), r["sampler"], r["nfe"], r.get("guidance_scale"),
               r.get("clip_denoised", False), r.get("grid"), r.get("guided_by"),
               str(r.get("guidance_interval")), str(r.get("options"))): r
              for r in rows}  # fmt: skip
    header = ["model", "EMA", "sampler", "NFE", "w", "clip x̂0", "FD-MNIST", "class TV", "cond. acc.",
              "bits/dim (PF-ODE)", "ELBO bits/dim", "train steps", "train time"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in latest.values():
        acc = f"{100 * r['conditional_accuracy']:.1f}%" if "conditional_accuracy" in r else "–"
        bpd = f"{r['bits_per_dim']:.3f}" if r.get("bits_per_dim") is not None else "–"
        if r.get("bits_per_dim_se") is not None:
            bpd += f" ± {r['bits_per_dim_se']:.3f}"
        tv = f"{r['class_tv']:.3f}" if "class_tv" in r else "–"
        elbo = "–"
        if r.get("elbo_bits_per_dim") is not None:
            elbo = f"{r['elbo_bits_per_dim']:.3f} ± {r['elbo_bits_per_dim_se']:.3f}"
        t = f"{r['train_time_s'] / 60:.1f} min" if r.get("train_time_s") else "–"
        w = r.get("guidance_scale", "–")
        clip = "yes" if r.get("clip_denoised") else "no"
        sampler = r["sampler"] + (" (optimized grid)" if r.get("grid") == "optimized" else "")
        if r.get("options"):
            sampler += " (" + ", ".join(f"{k}={v}" for k, v in r["options"].items()) + ")"
        if r.get("guided_by"):
            sampler += f", autoguided by {r['guided_by']}"
        if r.get("guidance_interval"):
            sampler += ", guided in σ ∈ ({}, {}]".format(*r["guidance_interval"])
        cells = [r["model"], r.get("ema", "–"), sampler, r["nfe"], w, clip, f"{r['fd_mnist']:.2f}", tv,
                 acc, bpd, elbo, r["train_steps"], t]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown_table_2d(rows) -> str:
    """One line per row of experiments.evaluate_2d."""
    lines = ["| model | sampler | NFE | sliced W2 (floor) | MMD² (floor) | on support | NLL nats "
             "| −log p_data | KL ± se |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        kl = f"{r['kl_nats']:.3f} ± {r['kl_se']:.3f}" if r.get("kl_nats") is not None else "–"
        lines.append(f"| {r['model']} | {r['sampler']} | {r['nfe']} "
                     f"| {r['sliced_w2']:.4f} ({r['sliced_w2_floor']:.4f}) "
                     f"| {r['mmd2']:.5f} ({r['mmd2_floor']:.5f}) | {fmt(r.get('on_support'), '.1%')} "
                     f"| {fmt(r.get('nll_nats'), '.3f')} | {fmt(r.get('data_nll_nats'), '.3f')} "
                     f"| {kl} |")  # fmt: skip
    return "\n".join(lines)


def emit_row(row: dict, out: str | None) -> None:
    """Print one result row as JSON and append it to the JSON lines file `out` at once (a later
    failure loses no row already computed)."""
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def print_tables(path: str) -> None:
    """The markdown tables of a results file of either evaluator (MNIST rows, 2-D rows)."""
    with user_errors():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--table {path!r}: no such results file.")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    mnist, flat = [r for r in rows if "fd_mnist" in r], [r for r in rows if "sliced_w2" in r]
    if not mnist and not flat:
        print(f"{path}: no rows of experiments.evaluate or experiments.evaluate_2d.")
    print("\n\n".join(t for t in ((markdown_table(mnist) if mnist else ""),
                                    (markdown_table_2d(flat) if flat else "")) if t))  # fmt: skip
