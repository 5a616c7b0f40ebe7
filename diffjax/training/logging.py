"""Training metrics: JSON lines, TensorBoard event files, a progress bar and a summary line.

Only process 0 writes (`enabled` defaults to `jax.process_index() == 0`); the others are silent.
Files in `workdir`: `metrics.jsonl` (one {"step": s, ...} object per log step; a run resumed from
the checkpoint at step s drops the records after s that an interrupted run had logged, so every step
appears once), `tensorboard/` (tensorboardX event files) and `summary.json` (wall time summed over
the resumed segments; a rerun that does no step leaves it as it is). The tqdm bar shows loss and
steps/s on a terminal; elsewhere (nohup, SLURM, CI) each log period prints one line instead.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax


def progress_bar_wanted() -> bool:
    """A progress bar only on an interactive terminal outside CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class MetricsLogger:
    """Writes scalar metrics of steps (start_step, num_steps] to `workdir`."""

    def __init__(
        self, workdir: str | os.PathLike, *, num_steps: int, start_step: int = 0,
        enabled: bool | None = None, progress: bool | None = None, tensorboard: bool | None = None,
    ):  # fmt: skip
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = os.fspath(workdir)
        self.start_step, self.num_steps = start_step, num_steps
        self._t0 = self._t_last = time.perf_counter()
        self._step_last = start_step
        self._jsonl = self._tb = self._bar = None
        if not self.enabled:
            return
        os.makedirs(self.workdir, exist_ok=True)
        path = os.path.join(self.workdir, "metrics.jsonl")
        _drop_records_after(path, start_step)
        self._jsonl = open(path, "a")
        if tensorboard is None:  # when tensorboardX is installed (the `experiments` extra)
            tensorboard = importlib.util.find_spec("tensorboardX") is not None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
        if progress_bar_wanted() if progress is None else progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Record `metrics` (Python/NumPy scalars) at `step`, adding 'steps_per_s' since the
        previous call; returns the record."""
        now = time.perf_counter()
        rate = (step - self._step_last) / max(now - self._t_last, 1e-9)
        self._t_last, self._step_last = now, step
        record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        record["steps_per_s"] = rate
        if not self.enabled:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(f"train/{name}", value, step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record.get('loss', math.nan):.4g}", it_s=f"{rate:.1f}")
        else:
            print(f"step {step}/{self.num_steps}: loss={record.get('loss', math.nan):.4g}, "
                  f"{rate:.2f} steps/s", flush=True)  # fmt: skip
        return record

    def advance(self, step: int) -> None:
        """Move the progress bar to `step`."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def summary(self, step: int, **fields) -> str:
        """Write `summary.json` and print one line: steps done, wall time (this run and all
        segments), steps/s, `fields`. A run that did no step keeps the existing summary."""
        wall = time.perf_counter() - self._t0
        done = step - self.start_step
        path = os.path.join(self.workdir, "summary.json")
        previous = _read_json(path) if self.start_step > 0 else {}
        record = {"step": int(step), "steps_this_run": done,
                  "wall_time_s": round(wall + previous.get("wall_time_s", 0.0), 3),
                  "wall_time_this_run_s": round(wall, 3), "segments": previous.get("segments", 0) + 1,
                  "steps_per_s": round(done / max(wall, 1e-9), 3),
                  **{k: _scalar(v) for k, v in fields.items()}}  # fmt: skip
        line = "summary: " + ", ".join(
            f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        if self.enabled:
            if done > 0 or not previous:
                with open(path, "w") as f:
                    json.dump(record, f, indent=1)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            print(line, flush=True)
        return line

    def close(self) -> None:
        for handle in (self._bar, self._tb, self._jsonl):
            if handle is not None:
                handle.close()
        self._jsonl = self._tb = self._bar = None


def log_image(workdir: str | os.PathLike, tag: str, step: int, image) -> bool:
    """Add an image (H, W) or (H, W, C) uint8 (e.g. a sample grid, `diffjax.viz.image_grid`) to the
    work directory's TensorBoard logs at `step`, when tensorboardX is installed; True if written. Only
    process 0 writes."""
    if jax.process_index() != 0 or importlib.util.find_spec("tensorboardX") is None:
        return False
    import numpy as np
    from tensorboardX import SummaryWriter

    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    writer = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
    try:
        writer.add_image(tag, image, step, dataformats="HWC")
    finally:
        writer.close()
    return True


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _drop_records_after(path: str, step: int) -> None:
    """Keep the metrics.jsonl records up to `step` (a resumed run logs the later steps anew)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def _scalar(v):
    """Python bool/int/float (or str) of a scalar."""
    if isinstance(v, str | bool | int | float) or v is None:
        return v
    item = v.item() if hasattr(v, "item") else v
    return item if isinstance(item, bool | int | float) else float(item)
