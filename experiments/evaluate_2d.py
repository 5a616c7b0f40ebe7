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

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from diffjax.data import TOY_DATASETS, TOY_LOG_PROBS, in_checkerboard, load_dataset
from diffjax.likelihood import log_likelihood
from diffjax.metrics import mmd_rbf, sliced_wasserstein
from experiments.builders import generate, load_run, parse_flags, train_wall_time, user_errors

flags.DEFINE_string("workdirs", None, "Comma-separated work directories of 2D models (experiments.train).")
flags.DEFINE_string("samplers", "heun:32,euler:10,dpm_solver_pp:10", "name:steps, comma-separated.")
flags.DEFINE_integer("num", 4000, "Samples per model × sampler (and test points for the distances).")
flags.DEFINE_integer("nll_examples", 1000, "Test points for the likelihood (0 to skip).")
flags.DEFINE_float("nll_tol", 1e-5, "rtol = atol of the adaptive likelihood solver.")
flags.DEFINE_float("mmd_bandwidth", 0.25, "RBF kernel bandwidth of the MMD (data have unit std).")
flags.DEFINE_string("out", "outputs/results_2d.json", "JSON lines file the rows are appended to.")
flags.mark_flags_as_required(["workdirs"])
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


def evaluate_workdir(workdir):
    cfg, trained = load_run(workdir)
    name, process, step = cfg.data.name, trained.process, trained.step
    if name not in TOY_DATASETS:
        raise ValueError(f"{workdir}: data {name!r} is not a 2D toy; use experiments.evaluate for images")
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
        print(json.dumps(row), flush=True)
    return rows


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with user_errors():
        rows = [row for workdir in FLAGS.workdirs.split(",") for row in evaluate_workdir(workdir)]
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    print("\n| model | sampler | NFE | sliced W2 (floor) | MMD² (floor) | on support | NLL nats "
          "| −log p_data | KL ± se |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kl = f"{r['kl_nats']:.3f} ± {r['kl_se']:.3f}" if r.get("kl_nats") is not None else "–"
        print(f"| {r['model']} | {r['sampler']} | {r['nfe']} "
              f"| {r['sliced_w2']:.4f} ({r['sliced_w2_floor']:.4f}) "
              f"| {r['mmd2']:.5f} ({r['mmd2_floor']:.5f}) | {fmt(r.get('on_support'), '.1%')} "
              f"| {fmt(r.get('nll_nats'), '.3f')} | {fmt(r.get('data_nll_nats'), '.3f')} "
              f"| {kl} |")  # fmt: skip


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
