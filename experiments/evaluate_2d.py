"""Evaluate trained 2D (toy-data) models against the generator of their data.

    python -m experiments.evaluate_2d --workdirs outputs/demo --samplers heun:32,euler:10,dpm_solver_pp:10

Per model × sampler (spec name:steps), on `--num` samples against the held-out test split:
sliced W2 and MMD² (RBF, bandwidth `--mmd_bandwidth`), each beside its floor (the same statistic
between a fresh draw of the data generator and the test split), and for the checkerboard the
fraction of samples on its support. Per model: the exact negative log-likelihood of
`--nll_examples` test points through the probability-flow ODE (adaptive Tsit5, exact divergence),
in nats, against the data's own −log p_data (`diffjax.data.TOY_LOG_PROBS`, closed forms): their
paired difference estimates KL(data‖model) ≥ 0, reported with its standard error. Rows are appended
to `--out` as JSON lines and printed as a markdown table.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from diffjax.data import TOY_DATASETS, TOY_LOG_PROBS, in_checkerboard, load_dataset
from diffjax.likelihood import log_likelihood
from diffjax.metrics import mmd_rbf, sliced_wasserstein
from experiments.builders import (
    ConfigError,
    generate,
    load_run,
    parse_flags,
    source_record,
    train_wall_time,
    user_errors,
)
from experiments.tables import emit_row, markdown_table_2d, print_tables

flags.DEFINE_string("workdirs", None, "Comma-separated work directories of 2D models (experiments.train).")
flags.DEFINE_string("samplers", "heun:32,euler:10,dpm_solver_pp:10", "name:steps, comma-separated.")
flags.DEFINE_integer("num", 4000, "Samples per model × sampler (and test points for the distances).")
flags.DEFINE_integer("nll_examples", 1000, "Test points for the likelihood (0 to skip).")
flags.DEFINE_float("nll_tol", 1e-5, "rtol = atol of the adaptive likelihood solver.")
flags.DEFINE_float("mmd_bandwidth", 0.25, "RBF kernel bandwidth of the MMD (data have unit std).")
flags.DEFINE_string("out", "outputs/results_2d.jsonl", "JSON lines file each row is appended to as soon as "
                    "it is computed.")
flags.DEFINE_string("table", None, "Only print the markdown table of the rows in this JSON lines file (of "
                    "either evaluator).")
FLAGS = flags.FLAGS


def distances(x, y, key):
    return float(sliced_wasserstein(x, y, key)), float(mmd_rbf(x, y, FLAGS.mmd_bandwidth))


def likelihood(cfg, model, process, x):
    """(mean NLL, mean −log p_data, KL estimate, its standard error) in nats on the points x."""
    res = log_likelihood(model, process, jnp.asarray(x), divergence="exact", rtol=FLAGS.nll_tol,
                         atol=FLAGS.nll_tol)  # fmt: skip
    if not bool(res.success):
        raise RuntimeError("likelihood: the adaptive ODE solve failed; loosen --nll_tol")
    nll = -np.asarray(res.log_prob, np.float64)
    log_prob = TOY_LOG_PROBS.get(cfg.data.name)
    if log_prob is None:
        return float(nll.mean()), None, None, None
    data_nll = -np.asarray(log_prob(jnp.asarray(x)), np.float64)
    gap = nll - data_nll  # log p_data − log p_model: its mean estimates KL(data‖model)
    return float(nll.mean()), float(data_nll.mean()), float(gap.mean()), float(gap.std() / np.sqrt(len(x)))


def check_inputs(sources: list[str]) -> None:
    """Every source exists and is a 2-D model, every sampler spec is name:steps — before any work."""
    for spec in FLAGS.samplers.split(","):
        parts = spec.split(":")
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ConfigError(f"--samplers: {spec!r} is not name:steps (e.g. heun:32).")
    for source in sources:
        shape = tuple(source_record(source)["data_shape"])
        if shape != (2,):
            raise ConfigError(f"{source}: a model of {shape} data; the 2-D metrics need a 2-D toy model "
                              "(images: experiments.evaluate).")  # fmt: skip


def evaluate_workdir(workdir, out=None):
    """Rows of one model, each appended to the JSON lines file `out` as soon as it is computed."""
    cfg, trained = load_run(workdir)
    name, process, step = cfg.data.name, trained.process, trained.step
    if name not in TOY_DATASETS:
        raise ConfigError(f"{workdir}: data {name!r} is not a 2D toy; use experiments.evaluate for images")
    test_x, _ = load_dataset(name, "test", num_examples=FLAGS.num)
    fresh, _ = TOY_DATASETS[name](jax.random.key(7), FLAGS.num)
    k_dist = jax.random.key(3)
    sw_floor, mmd_floor = distances(fresh, test_x, k_dist)
    nll = None
    if FLAGS.nll_examples:
        nll = likelihood(cfg, trained.model, process, test_x[: FLAGS.nll_examples])
    rows = []
    for spec in FLAGS.samplers.split(","):
        sampler, steps = spec.split(":")
        cfg.sample.sampler, cfg.sample.num_steps = sampler, int(steps)
        res = generate(cfg, trained.model, process, jax.random.key(1), FLAGS.num,
                       trained.record["data_shape"])  # fmt: skip
        sw, mmd = distances(res.samples, test_x, k_dist)
        row = dict(model=os.path.basename(os.path.normpath(workdir)), data=name, sampler=sampler,
                   steps=int(steps), nfe=int(res.nfe), sliced_w2=round(sw, 4),
                   sliced_w2_floor=round(sw_floor, 4), mmd2=round(mmd, 6), mmd2_floor=round(mmd_floor, 6),
                   train_steps=step, train_time_s=train_wall_time(workdir))  # fmt: skip
        if name == "checkerboard":
            row["on_support"] = round(float(jnp.mean(in_checkerboard(res.samples))), 4)
        if nll is not None:
            row.update(nll_nats=nll[0], data_nll_nats=nll[1], kl_nats=nll[2], kl_se=nll[3],
                       nll_examples=FLAGS.nll_examples)  # fmt: skip
        rows.append(row)
        emit_row(row, out)
    return rows


def main(argv):
    del argv
    if FLAGS.table:
        return print_tables(FLAGS.table)
    if not FLAGS.workdirs:
        raise app.UsageError("give --workdirs (2-D work directories to evaluate) or --table (a results file)")
    sources = FLAGS.workdirs.split(",")
    logging.set_verbosity(logging.WARNING)
    with user_errors():
        check_inputs(sources)
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        rows = [row for workdir in sources for row in evaluate_workdir(workdir, out=FLAGS.out)]
    print(f"\nappended {len(rows)} rows to {FLAGS.out}\n\n" + markdown_table_2d(rows))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
