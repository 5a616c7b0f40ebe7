"""The machine a benchmark runs on: load, threads, spread — shared by every `bench/` script.

A speed ratio between two libraries means something only on an idle machine: another busy process
slows torch's OpenMP threads far more than XLA's pool (measured here: the same U-Net comparison
reads 0.6× idle and 2.1× beside one busy process). So every script

  * records the 1-minute load average before and after (`LoadRecord`) and refuses to start when it
    is above `--max-load` unless `--allow-busy` is given, in which case the report says BUSY in
    its first line;
  * pins the threads of both sides to the same cores (`pin_threads`: the process's CPU affinity,
    torch's intra-op threads = that many, one inter-op thread; XLA:CPU sizes its intra-op pool
    from the affinity mask);
  * reports the spread (min / median / max) of its interleaved timed rounds, not only a median.

Reports share `machine_info` (the date, platform, CPUs, jax's backend and devices, XLA_FLAGS and
versions that start a report's `machine` entry), `table_head` (a table's library columns and
parameter counts) and `format_cell` (a table cell, '—' for nan). The timing of the peer comparisons
themselves (compile, paired rounds, paired ratios) is in `timing.py`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field

DEFAULT_MAX_LOAD = 0.5


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-load", type=float, default=DEFAULT_MAX_LOAD,
                        help="refuse to start when the 1-minute load average is above this "
                             f"(default {DEFAULT_MAX_LOAD})")  # fmt: skip
    parser.add_argument("--allow-busy", action="store_true",
                        help="run anyway on a busy machine; the report is marked BUSY")
    parser.add_argument("--threads", type=int, default=None,
                        help="cores both libraries use (default: all this process may use)")


@dataclass
class LoadRecord:
    """1/5/15-minute load averages before and after a benchmark, and the verdict."""

    max_load: float
    before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    after: tuple[float, float, float] | None = None

    def finish(self) -> LoadRecord:
        self.after = os.getloadavg()
        return self

    @property
    def busy(self) -> bool:
        """Busy before the start. The run's own threads raise the load average while it runs,
        so `after` is recorded, not judged: compare it with the thread count."""
        return self.before[0] > self.max_load

    def describe(self) -> str:
        b = "/".join(f"{v:.2f}" for v in self.before)
        a = "/".join(f"{v:.2f}" for v in self.after) if self.after else "—"
        verdict = "BUSY — ratios are not comparable" if self.busy else "idle"
        return (f"load average (1/5/15 min) before {b}, after {a} "
                f"(limit {self.max_load:g}): {verdict}")  # fmt: skip

    def as_dict(self) -> dict:
        return {**asdict(self), "busy": self.busy}


def check_idle(args: argparse.Namespace) -> LoadRecord:
    """Refuse (exit 2) on a busy machine unless `--allow-busy`; return the record to finish."""
    record = LoadRecord(args.max_load)
    if record.busy:
        msg = (f"the 1-minute load average is {record.before[0]:.2f} > --max-load "
               f"{args.max_load:g}: another process is using the CPU, and the ratios would "
               "measure it.")  # fmt: skip
        if not args.allow_busy:
            print(f"refusing to benchmark: {msg} Stop it, wait, or pass --allow-busy.", file=sys.stderr)
            sys.exit(2)
        print(f"WARNING — BUSY MACHINE: {msg} (--allow-busy)", file=sys.stderr, flush=True)
    return record


def pin_threads(threads: int | None) -> int:
    """Restrict this process to `threads` cores (all allowed ones by default) and give torch, if
    it is installed, as many intra-op threads and one inter-op thread. Call before either library
    starts a thread pool. Returns the core count."""
    allowed = sorted(os.sched_getaffinity(0))
    n = len(allowed) if threads is None else threads
    if not 1 <= n <= len(allowed):
        raise ValueError(f"--threads {threads}: this process may use {len(allowed)} cores")
    os.sched_setaffinity(0, allowed[:n])
    try:
        import torch
    except ImportError:
        return n
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or torch already ran parallel work)
        pass
    return n


def spread(times: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of timed rounds, seconds."""
    return (min(times), statistics.median(times), max(times)) if times else (float("nan"),) * 3


def format_spread(times: list[float], per: int = 1, unit: str = "ms") -> str:
    """'min / median / max' in `unit` (ms) per call, or img/s when `per` images make one call."""
    lo, med, hi = spread(times)
    if unit == "img/s":
        return f"{per / hi:.1f} / {per / med:.1f} / {per / lo:.1f}"
    return f"{1e3 * lo:.0f} / {1e3 * med:.0f} / {1e3 * hi:.0f}"


def format_cell(v: float, spec: str = ".1f") -> str:
    """A table cell: `v` formatted with `spec`, or '—' for nan."""
    return "—" if v != v else format(v, spec)


def table_head(names: list[str], params: dict[str, int]) -> list[str]:
    """A report table's first rows: a column per library in `names`, then its parameter count."""
    return ["| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            "| params | " + " | ".join(f"{params[n]:,}" for n in names) + " |"]  # fmt: skip


def machine_info() -> dict:
    """The start of a report's `machine` entry: date, platform, CPUs, Python, jax (version, backend,
    devices), XLA_FLAGS, flax and optax; each script appends its own packages' versions. Call it
    once jax's platform is configured."""
    from importlib.metadata import version

    import jax

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": str(jax.devices()),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "(unset: XLA defaults)"),
        "flax": version("flax"),
        "optax": version("optax"),
    }
