"""Optimise a sampler's time grid by differentiation (`diffjax.grid_optimization.optimize_grid`).

A trained model, against its own accurate solve (100-step 3rd-order DPM-Solver++ from the same
noises), on a fixed batch of prior noises; writes the grid (JSON: solver, options, steps, NFE, times,
training and held-out errors of the optimised and of the fixed grids) into the work directory:

    python -m experiments.optimize_grid --workdir outputs/mnist_edm --solver dpm_solver_pp \
        --num_steps 5 [--out grid.json]
    python -m experiments.evaluate --workdirs outputs/mnist_edm --samplers dpm_solver_pp:5 \
        --grid_file outputs/mnist_edm/grid_dpm_solver_pp_5.json
    python -m experiments.sample --workdir outputs/mnist_edm \
        --grid_file outputs/mnist_edm/grid_dpm_solver_pp_5.json

The exact problems (the Gaussian-mixture oracle as the model: 2D ring and 16D mixture, VP SDE and
CondOT path), one JSON row per problem × solver × steps, and a markdown table of the held-out
median / RMSE of the per-sample RMS endpoint error, fixed grids against the optimised one:

    python -m experiments.optimize_grid --oracle --solvers dpm_solver_pp:2,dpm_solver_pp:3,unipc:2 \
        --steps 5,10 --out outputs/grid_optimization.jsonl

A solver spec is name[:order].
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

import diffjax as dj
from diffjax.grid_optimization import OptimizedGrid, optimize_grid
from diffjax.grids import GRIDS
from diffjax.oracle import GaussianMixture, ring_mixture
from experiments.builders import ConfigError, load_run, parse_flags, user_errors


def define_flags():
    """The command's flags (defined only when it runs, so that experiments.sample / evaluate can
    import `use_grid_file` without them)."""
    flags.DEFINE_string("workdir", None, "A work directory written by experiments.train.")
    flags.DEFINE_bool("oracle", False, "Run the exact Gaussian-mixture problems instead of a trained model.")
    flags.DEFINE_string("solver", "dpm_solver_pp", "Solver spec name[:order] (--workdir mode).")
    flags.DEFINE_integer("num_steps", 5, "Steps of the grid (--workdir mode).")
    flags.DEFINE_string("solvers", "dpm_solver_pp:2,dpm_solver_pp:3",
                        "Solver specs, comma-separated (--oracle).")
    flags.DEFINE_list("steps", ["5", "10"], "Numbers of steps (--oracle).")
    flags.DEFINE_list("problems", ["2d_vp", "2d_condot", "16d_vp", "16d_condot"], "Oracle problems.")
    flags.DEFINE_integer("batch", None, "Training noises (default 16 for a workdir, 128 for the oracle).")
    flags.DEFINE_integer("heldout", None, "Held-out noises (default 64 for a workdir, 2048 for the oracle).")
    flags.DEFINE_integer("iterations", None, "Adam steps (default 60 for a workdir, 100 for the oracle).")
    flags.DEFINE_float("learning_rate", 0.05, "Adam learning rate on the grid logits.")
    flags.DEFINE_integer("reference_steps", 100, "Steps of the reference solve (3rd-order DPM-Solver++).")
    flags.DEFINE_string("init", "best", "Start grid: best | uniform | edm | logsnr.")
    flags.DEFINE_enum("objective", "mse", ["mse", "log"], "What the grid minimises: the mean e² "
                      "(mse) or the mean log e² (log: the typical, median-like error).")
    flags.DEFINE_integer("seed", 0, "Seed of the training and held-out noises.")
    flags.DEFINE_string("out", None, "Output: the grid JSON (--workdir; default "
                        "WORKDIR/grid_<solver>_<steps>.json) or JSON lines (--oracle; default "
                        "outputs/grid_optimization.jsonl).")  # fmt: skip


FLAGS = flags.FLAGS


def parse_solver(spec: str) -> tuple[str, dict]:
    """'name[:order]' -> (name, options)."""
    name, *order = spec.split(":")
    if name not in dj.SOLVERS:
        raise ConfigError(f"solver {name!r} is not one of {tuple(dj.SOLVERS)}.")
    if len(order) > 1 or (order and not order[0].isdigit()):
        raise ConfigError(f"a solver spec is name[:order], got {spec!r}.")
    return name, ({"order": int(order[0])} if order else {})


def mixture(name: str) -> GaussianMixture:
    """2d: the ring of 8 (tests' `mixture_2d`); 16d: four anisotropic components (`mixture_16d`)."""
    if name == "2d":
        return ring_mixture(8, radius=4.0, std=0.5, dim=2)
    rng = np.random.default_rng(0)
    means = 3.0 * rng.standard_normal((4, 16))
    stds = rng.uniform(0.3, 1.0, size=(4, 16))
    return GaussianMixture.create(means, stds**2, weights=[0.1, 0.2, 0.3, 0.4])


def summary_row(res: OptimizedGrid) -> dict:
    """Held-out median and RMSE of the per-sample RMS endpoint error, per grid, and the paired
    improvement of the mean e² over the best fixed grid with its standard error."""
    best = res.best_fixed()
    diff = np.square(res.fixed_heldout_errors[best]) - np.square(res.heldout_errors)
    stats = lambda e: dict(zip(("median", "rmse"), OptimizedGrid.summary(e), strict=True))  # noqa: E731
    heldout = {k: stats(v) for k, v in res.fixed_heldout_errors.items() if k in GRIDS}
    heldout["optimized"] = stats(res.heldout_errors)
    return dict(nfe=res.nfe, init=res.init, best_fixed=best, ts=[float(t) for t in res.ts],
                train_mse=res.train_error,
                initial_train_mse=float(res.losses[0]) if len(res.losses) else None, heldout=heldout,
                mse_gain=float(diff.mean()),
                mse_gain_se=float(diff.std() / np.sqrt(diff.size)), reference_error=res.reference_error)


def run_oracle():
    processes = {"vp": (dj.VPSDE(), "eps"), "condot": (dj.CondOTPath(), "velocity")}
    out = FLAGS.out or "outputs/grid_optimization.jsonl"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    rows = []
    for problem in FLAGS.problems:
        dim, proc = problem.split("_")
        process, prediction = processes[proc]
        model = mixture(dim).model(process, prediction)
        for spec in FLAGS.solvers.split(","):
            name, options = parse_solver(spec)
            for n in FLAGS.steps:
                start = time.time()
                res = optimize_grid(dj.make_solver(name, **options), model, process,
                                    jax.random.key(FLAGS.seed), (FLAGS.batch or 128, mixture(dim).dim),
                                    int(n), init=FLAGS.init,
                                    iterations=FLAGS.iterations or 100, learning_rate=FLAGS.learning_rate,
                                    heldout=FLAGS.heldout or 2048, objective=FLAGS.objective,
                                    reference_steps=FLAGS.reference_steps)  # fmt: skip
                row = dict(problem=problem, solver=spec, num_steps=int(n), objective=FLAGS.objective,
                           wall_s=round(time.time() - start, 1), **summary_row(res))
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n" + markdown_table(rows))


def markdown_table(rows) -> str:
    """Held-out median / RMSE of the per-sample RMS endpoint error: each fixed grid, the optimised."""
    head = ["problem", "solver", "steps", "NFE", *GRIDS, "optimised", "gain (mean e²) ± se", "reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cell = lambda k, r=r: f"{r['heldout'][k]['median']:.2e} / {r['heldout'][k]['rmse']:.2e}"  # noqa: E731
        cells = [r["problem"], r["solver"], r["num_steps"], r["nfe"], *[cell(k) for k in GRIDS],
                 cell("optimized"), f"{r['mse_gain']:.2e} ± {r['mse_gain_se']:.1e}",
                 f"{r['reference_error']:.1e}"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def run_workdir():
    name, options = parse_solver(FLAGS.solver)
    cfg, trained = load_run(FLAGS.workdir)
    if trained.num_classes is not None:
        raise ConfigError("optimize_grid: class-conditional models are not supported (the guided model "
                          "depends on the labels of the batch); use an unconditional run.")  # fmt: skip
    model, process = trained.model, trained.process
    prediction = cfg.model.prediction
    if cfg.sample.get("clip_denoised", False):
        model = dj.clip_denoised(model, process, prediction)
    shape = tuple(trained.record["data_shape"])
    start = time.time()

    def log(i, loss):
        if i % 10 == 0:
            print(f"iteration {i}: training objective ({FLAGS.objective}) {loss:.4e} "
                  f"({time.time() - start:.0f} s)", flush=True)

    res = optimize_grid(dj.make_solver(name, **options), model, process, jax.random.key(FLAGS.seed),
                        (FLAGS.batch or 16, *shape), FLAGS.num_steps, prediction=prediction, init=FLAGS.init,
                        iterations=FLAGS.iterations or 60, learning_rate=FLAGS.learning_rate,
                        heldout=FLAGS.heldout or 64, reference_steps=FLAGS.reference_steps,
                        objective=FLAGS.objective, callback=log)  # fmt: skip
    row = dict(solver=name, options=options, num_steps=FLAGS.num_steps, workdir=FLAGS.workdir,
               objective=FLAGS.objective,
               train_step=trained.step, batch=FLAGS.batch or 16, iterations=FLAGS.iterations or 60,
               learning_rate=FLAGS.learning_rate, wall_s=round(time.time() - start, 1),
               **summary_row(res))
    out = FLAGS.out or os.path.join(FLAGS.workdir, f"grid_{name}_{FLAGS.num_steps}.json")
    with open(out, "w") as f:
        json.dump(row, f, indent=1)
    for k, v in row["heldout"].items():
        print(f"{k:>10}: held-out median {v['median']:.4e}, RMSE {v['rmse']:.4e}")
    print(f"wrote {out} ({row['wall_s']} s)")


def load_grid_file(path: str) -> dict:
    """The JSON written by this script: solver, options, num_steps and the times ts."""
    try:
        with open(path) as f:
            grid = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--grid_file {path}: cannot read it ({err}).") from None
    missing = [k for k in ("solver", "num_steps", "ts") if k not in grid]
    if missing or len(grid["ts"]) != grid["num_steps"] + 1:
        raise ConfigError(f"--grid_file {path}: not a grid written by experiments.optimize_grid.")
    return grid


def use_grid_file(cfg, path: str) -> dict:
    """Set cfg.sample's sampler, options, steps and grid (the array) from a grid file."""
    grid = load_grid_file(path)
    cfg.sample.sampler, cfg.sample.num_steps = grid["solver"], int(grid["num_steps"])
    with cfg.unlocked():  # the grid field holds a name; a grid file replaces it with its times
        del cfg.sample["grid"], cfg.sample["options"]
        cfg.sample.grid = tuple(float(t) for t in grid["ts"])
        cfg.sample.options = dict(grid.get("options", {}))
    return grid


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.oracle == bool(FLAGS.workdir):
        raise app.UsageError("give either --workdir (a trained run) or --oracle (the exact problems).")
    with user_errors():
        run_oracle() if FLAGS.oracle else run_workdir()


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
