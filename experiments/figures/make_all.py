"""Run every figure module (experiments/figures/fig*.py) into one folder and report.

Each figure runs as its own subprocess from the repository root, `python -m
experiments.figures.<name> --out DIR` (so the package imports and its default inputs, e.g.
outputs/demo, resolve there). A figure exits 0 when it wrote its PNG, `SKIPPED` (3) when its inputs
are missing (checkpoints, data, the benchmark CSV), anything else on failure. This exits 1 if any
figure failed, else 0 (skipped figures are not failures).

    python -m experiments.figures.make_all [--out outputs/figures] [--only fig1 fig4]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

from experiments.figures._common import DEFAULT_OUT, ROOT, SKIPPED

HERE = os.path.dirname(os.path.abspath(__file__))


def scripts(only: list[str] | None) -> list[str]:
    """The figure modules' names (fig1_euler_ou, ...), those starting with a prefix in `only` if given."""
    found = sorted(os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(HERE, "fig*.py")))
    if only:
        found = [name for name in found if any(name.startswith(o) for o in only)]
    return found


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--only", nargs="*", default=None, help="name prefixes, e.g. fig1 fig4")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    todo = scripts(args.only)
    if not todo:
        print(f"no figure script matches {args.only}", file=sys.stderr)
        return 1
    status: dict[str, list[str]] = {"wrote": [], "skipped": [], "failed": []}
    for name in todo:
        print(f"{name} ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"experiments.figures.{name}", "--out", out], cwd=ROOT,
                              capture_output=True, text=True)  # fmt: skip
        dt = time.perf_counter() - t0
        if proc.returncode == 0:
            kind, msg = "wrote", last_line(proc.stdout)
        elif proc.returncode == SKIPPED:
            kind, msg = "skipped", last_line(proc.stderr).removeprefix("skipped: ")
        else:
            kind = "failed"
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            msg = f"exit code {proc.returncode}\n{tail}"
        status[kind].append(name)
        print(f"  {kind} ({dt:.0f} s): {msg}", flush=True)
    print("\n" + "; ".join(f"{k} {len(v)}" + (f" ({', '.join(v)})" if v and k != "wrote" else "")
                          for k, v in status.items()) + f" — figures in {out}")  # fmt: skip
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
