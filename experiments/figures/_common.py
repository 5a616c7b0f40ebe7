"""Shared plumbing of the figure scripts: the `--out` argument, saving, and skipping cleanly.

Every figure script runs from the repository root as `python -m experiments.figures.<name> [--out DIR]`
and writes one PNG `DIR/<name>.png` (default DIR: outputs/figures). A script whose inputs are missing
(MNIST files, checkpoints) raises `MissingInput`; `run` turns that into a one-line message and the exit
code `SKIPPED` (3), which `make_all` reports as "skipped" rather than as a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join("outputs", "figures")
DEFAULT_MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
SKIPPED = 3

plt_rc = {
    "figure.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
matplotlib.rcParams.update(plt_rc)


class MissingInput(FileNotFoundError):
    """The figure's inputs (data files, checkpoints) are not available; the message says which
    and how to produce them."""


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with `--out` (and the script's docstring as description)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return p


def output_path(out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, name + ".png")


def save(fig, out_dir: str, name: str) -> str:
    """Write `fig` as `out_dir/name.png`, close it and return the path."""
    import matplotlib.pyplot as plt

    path = output_path(out_dir, name)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def script_name(file: str) -> str:
    return os.path.splitext(os.path.basename(file))[0]


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` is an experiments.train work directory with at least one checkpoint (a step
    directory under `workdir/checkpoints`; the run record and config are saved with each checkpoint)."""
    ckpt = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt) and any(
        name.isdigit() and os.path.isdir(os.path.join(ckpt, name)) for name in os.listdir(ckpt)
    )


def load_run(workdir: str, hint: str):
    """(cfg, trained) of an experiments.train work directory (`experiments.builders.load_run`: the
    saved config and the `TrainedModel` with EMA parameters); raises MissingInput (message: `hint`,
    how to produce it) if it has no checkpoint."""
    if not has_checkpoint(workdir):
        raise MissingInput(f"no checkpoint in {workdir}; {hint}")
    from experiments.builders import load_run as load

    return load(workdir)


def run(main: Callable[[Sequence[str] | None], str], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; print where the PNG went, or why it was skipped (exit code SKIPPED)."""
    try:
        path = main(argv)
    except MissingInput as err:
        print(f"skipped: {err}", file=sys.stderr)
        return SKIPPED
    print(f"wrote {path}")
    return 0
