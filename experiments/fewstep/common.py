"""What every 2D few-step experiment shares: the problem, the evaluation noise and its exact
endpoints, one network factory, one training loop, one metric, the teacher's rows and one row format.

Problem: `dj.ring_mixture(8, radius=4, std=0.5)` (= tests.samplers_util.mixture_2d) under
`dj.CondOTPath()` ('condot', data at t = 1, noise at t = 0) or `dj.VPSDE()` ('vp', data at 0).

Metric (`endpoint_metrics`): from 4096 fixed noise draws z = σ(t_noise)·ε (ε ~ N(0, I), key 1234) the
exact endpoints x*_i = Φ_{t_noise→t_data}(z_i) (`mixture.consistency_function`); a method's samples
x_i from the same z score

    median_i ‖x_i − x*_i‖,   RMSE = (mean_i ‖x_i − x*_i‖²)^½,
    log_p_gap = (mean_i log p_data(x_i) − E_data log p_data) / 2    (nats per dimension, 0 if exact)

with E_data log p_data the mean over 20000 data draws (key 99). The exact oracle scores 0 error.

Row format (one JSON object per line of outputs/fewstep/results_2d.jsonl, appended by `append_rows`):

    {"problem": "ring2d", "process": "condot"|"vp", "method", "variant", "nfe", "median", "rmse",
     "log_p_gap", "train_wall_s", "train_steps", ...extra keys (nfe_used, straightness, ...)}

`method` 'teacher' rows (`teacher_rows`): the exact velocity integrated by `dj.sample(solver, nfe=k)`
(Euler, Heun, DPM-Solver++; the most steps that fit the budget, so Heun at k = 2 uses 1 evaluation:
`nfe_used`) from the same z. A later row with the same (process, method, variant, nfe) supersedes an
earlier one (`latest_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from diffjax.models import ResidualMLP, ResidualMLPConfig, initialise
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step

OUT_DIR = "outputs/fewstep"
RESULTS = os.path.join(OUT_DIR, "results_2d.jsonl")
PROBLEM = "ring2d"
NFES = (1, 2, 4)
NUM_EVAL = 4096
PROCESSES = {"condot": dj.CondOTPath, "vp": dj.VPSDE}
TEACHER_SOLVERS = ("euler", "heun", "dpm_solver_pp")
ROW_KEYS = ("problem", "process", "method", "variant", "nfe", "median", "rmse", "log_p_gap", "train_wall_s",
            "train_steps")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Problem:
    """The ring under one process with its evaluation noise z (N, 2), the exact endpoints
    reference = Φ_{t_noise→t_data}(z) (N, 2) and E_data log p_data (a float)."""

    process_name: str
    process: object
    mixture: object
    z: jax.Array
    reference: jax.Array
    data_log_p: float

    @property
    def sigma_data(self) -> float:
        """The data's std per dimension, (tr Σ / 2)^½ (consistency models' σ_d)."""
        return float(jnp.sqrt(jnp.trace(self.mixture.covariance()) / 2))

    def teacher(self, prediction: str = "velocity"):
        """The exact model of the ring under the process (`mixture.model(process, prediction)`)."""
        return self.mixture.model(self.process, prediction)

    def data_batch(self, batch_size: int) -> Callable[[jax.Array], jax.Array]:
        """key -> a fresh batch (batch_size, 2) of ring data (the batch_fn of `train`)."""
        return lambda key: self.mixture.sample(key, batch_size)[0]


def make_problem(process_name: str = "condot", num_eval: int = NUM_EVAL) -> Problem:
    if process_name not in PROCESSES:
        raise ValueError(f"fewstep: process {process_name!r} is not one of {tuple(PROCESSES)}.")
    process = PROCESSES[process_name]()
    mixture = dj.ring_mixture(8, radius=4.0, std=0.5)
    z = process.prior_std() * jax.random.normal(jax.random.key(1234), (num_eval, 2))
    reference = jax.jit(mixture.consistency_function(process))(z, process.t_noise)
    data_log_p = float(jax.jit(mixture.log_prob)(mixture.sample(jax.random.key(99), 20000)[0]).mean())
    return Problem(process_name, process, mixture, z, reference, data_log_p)


def make_network(seed: int, *, prediction: str = "velocity", second_time: bool = False,
                 time_scale: float | None = None, width: int = 128,
                 depth: int = 3) -> nnx.Module:  # fmt: skip
    """The one network of these experiments: a ResidualMLP on R² (width 128, depth 3); second_time
    conditions it on (t, t − s) (flow maps); time_scale: the sinusoidal features' scale (None: the
    config's default; consistency models 250, as c_noise = ¼ ln σ̃ ∈ [−3.75, 3.75]; MeanFlow 1)."""
    cfg = ResidualMLPConfig(dim=2, width=width, depth=depth, prediction=prediction, second_time=second_time,
                            time_scale=time_scale)  # fmt: skip
    return initialise(lambda: ResidualMLP(cfg, rngs=nnx.Rngs(seed)))


def make_run_chunk(loss_fn, optimizer, batch_fn, chunk: int, with_level: bool = False):
    """A jitted run of `chunk` train steps (`make_train_step`, EMA 0.999 with warm-up) in one lax.scan:
    run_chunk(state, key[, level]) -> (state, losses (chunk,)), step i on the batch batch_fn(k_i)
    (with_level: (batch_fn(k_i), level), level a constant over the chunk, e.g. iCT's
    number of noise levels or sCM's warm-up factor). loss_fn(params, batch, key) -> scalar."""
    step = make_train_step(loss_fn, optimizer, ema_decay=0.999)

    def run_chunk(state, key, level=None):
        def body(state, k):
            state, metrics = step(state, (batch_fn(k), level) if with_level else batch_fn(k))
            return state, metrics["loss"]

        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    return jax.jit(run_chunk)


def train(network: nnx.Module, loss: Callable, batch_fn: Callable, *, num_steps: int, seed: int,
          lr: float = 2e-3, chunk: int = 250, levels_at: Callable[[int], float] | None = None):  # fmt: skip
    """Train `network` on loss(network, batch, key) with batches batch_fn(key): adam with cosine decay
    to 2% of lr, EMA 0.999, `chunk` steps per compiled lax.scan, keys split from key(seed) (state)
    and key(seed + 1) (batches). levels_at(step) -> level: the batch becomes (batch_fn(k), level),
    level constant within a chunk (iCT's curriculum, an int32; sCM's warm-up factor, a float32).
    Returns (EMA network, losses (num_steps,), wall time in s, compilation included)."""
    chunk = min(chunk, num_steps)
    if num_steps % chunk:
        raise ValueError(f"fewstep.train: num_steps={num_steps} must be a multiple of chunk={chunk}.")
    graphdef, params = nnx.split(network, nnx.Param)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.02))

    def loss_fn(p, batch, key):
        return loss(nnx.merge(graphdef, p), batch, key)

    run_chunk = make_run_chunk(loss_fn, optimizer, batch_fn, chunk, with_level=levels_at is not None)
    state = create_train_state(params, optimizer, jax.random.key(seed))
    t0, losses = time.perf_counter(), []
    for i, k in enumerate(jax.random.split(jax.random.key(seed + 1), num_steps // chunk)):
        if levels_at is None:
            state, chunk_losses = run_chunk(state, k)
        else:
            level = levels_at(i * chunk)
            level = jnp.asarray(level, jnp.int32 if isinstance(level, int | np.integer) else jnp.float32)
            state, chunk_losses = run_chunk(state, k, level)
        losses.append(chunk_losses)
    losses = np.asarray(jnp.concatenate(losses))
    return nnx.merge(graphdef, state.ema_params), losses, time.perf_counter() - t0


def endpoint_metrics(samples, problem: Problem, nfe: int, reference=None) -> dict:
    """{median, rmse, log_p_gap, nfe} of samples (N, 2) drawn from problem.z (module docstring);
    reference: other endpoints to measure against (default the exact ones; log_p_gap is always
    against the data)."""
    ref = problem.reference if reference is None else reference
    err = np.linalg.norm(np.asarray(samples, np.float64) - np.asarray(ref, np.float64), axis=1)
    log_p = float(jax.jit(problem.mixture.log_prob)(jnp.asarray(samples)).mean())
    return {"median": float(np.median(err)), "rmse": float(np.sqrt(np.mean(err**2))),
            "log_p_gap": (log_p - problem.data_log_p) / 2, "nfe": int(nfe)}  # fmt: skip


def row(problem: Problem, method: str, variant: str, metrics: dict, *, train_wall_s: float | None = None,
        train_steps: int | None = None, **extra) -> dict:  # fmt: skip
    """One result row: the ROW_KEYS (metrics from `endpoint_metrics`), then the extra keys."""
    out = {"problem": PROBLEM, "process": problem.process_name, "method": method, "variant": variant,
           "nfe": metrics["nfe"], "median": metrics["median"], "rmse": metrics["rmse"],
           "log_p_gap": metrics["log_p_gap"], "train_wall_s": train_wall_s,
           "train_steps": train_steps}  # fmt: skip
    out.update({k: v for k, v in metrics.items() if k not in out})
    out.update(extra)
    return out


def teacher_rows(problem: Problem, nfes=NFES) -> list[dict]:
    """The exact teacher's Euler, Heun and DPM-Solver++ at budgets nfes from problem.z
    (`dj.sample(..., nfe=k)`, default t_eps); budgets below one step are left out."""
    teacher, rows = problem.teacher(), []
    for solver in TEACHER_SOLVERS:
        for nfe in nfes:
            try:
                res = dj.sample(solver, teacher, problem.process, jax.random.key(0), x_init=problem.z,
                                nfe=nfe)  # fmt: skip
            except ValueError:  # a budget below one step (Heun with a final denoising step on VP)
                continue
            rows.append(row(problem, "teacher", solver, endpoint_metrics(res.samples, problem, nfe),
                            nfe_used=int(res.nfe)))  # fmt: skip
    return rows


def append_rows(rows: list[dict], path: str = RESULTS) -> None:
    """Append rows as JSON lines to `path` (created with its folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def read_rows(path: str = RESULTS) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (process, method, variant, nfe): the last one written, in first-written order."""
    latest = {}
    for r in rows:
        latest[(r["process"], r["method"], r["variant"], r["nfe"])] = r
    return list(latest.values())


def record(rows: list[dict], problem: Problem, path: str = RESULTS) -> list[dict]:
    """Append `rows` and, the first time this process is written to `path`, the teacher's rows."""
    if not any(r["process"] == problem.process_name and r["method"] == "teacher" for r in read_rows(path)):
        rows = teacher_rows(problem) + rows
    append_rows(rows, path)
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ROW_KEYS and not isinstance(v, (list, dict))}
        wall = "" if r["train_wall_s"] is None else f", train {r['train_wall_s']:.0f} s"
        print(f"{r['process']:6s} {r['method']:12s} {r['variant']:34s} NFE {r['nfe']:2d}: median "
              f"{r['median']:.4f} rmse {r['rmse']:.4f} log-p gap {r['log_p_gap']:+.3f}{wall} {extra or ''}",
              flush=True)  # fmt: skip


def run_processes(run, args, processes=tuple(PROCESSES), **run_kwargs) -> list[dict]:
    """`run(problem, num_steps, seed, **run_kwargs) -> rows` on args.process (or every process it
    supports): rows recorded in args.out and printed; all rows returned."""
    out = []
    for name in [args.process] if args.process else list(processes):
        problem = make_problem(name)
        rows = record(run(problem, args.num_steps, args.seed, **run_kwargs), problem, args.out)
        print_rows(rows)
        out += rows
    return out


def parser(doc: str, *, default_steps: int, processes=tuple(PROCESSES)):
    """The command line of a method module: --num_steps, --process (default: all it supports), --seed,
    --out (the JSON-lines file)."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_steps", type=int, default=default_steps)
    p.add_argument("--process", choices=processes, default=None, help=f"default: all of {processes}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS, help=f"JSON-lines file the rows are appended to ({RESULTS})")
    return p
