"""Accuracy of few-NFE samplers on a trained network: the shipped MNIST flow-matching model.

For `dj.load_pretrained("mnist_fm")` (CondOT, velocity) and 1000 noises, every sampler configuration
runs from the *same* noises at a small NFE budget; reported: the per-sample endpoint error
‖x − x_ref‖ / √D against the model's own accurate solve from the same noise (RK4, 200 steps by
default; its error is bounded by the RK4 solve with half the steps, printed), median and RMSE, and
FD-MNIST of the samples
(the evaluation classifier's features, 10,000 test images; 1000 real training images score ≈ 24.5;
with fewer samples FD is biased upwards — compare rows of one run only).
Accuracy only: no times. Decides, on a real network, what `bench_endpoint.py` measures on exact
mixtures: the interpolation variable of DEIS / SA-Solver ('log_snr' vs 'flow_time').

    .venv/bin/python bench/mnist_endpoint.py [--nfe 5 10] [--num 1000]   # ~20 CPU minutes
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import diffjax as dj
from diffjax.data import load_dataset
from diffjax.evaluation import feature_statistics, frechet_distance, load_or_train_classifier

CONFIGS = [("euler", {}), ("midpoint", {}), ("dpm_solver_pp", {"order": 2}), ("unipc", {"order": 2}),
           ("deis", {"order": 2}), ("deis", {"order": 3}),
           ("sa_solver", dict(predictor_order=2, corrector_order=3, tau=0.0))]  # fmt: skip
ADAMS = ("deis", "sa_solver")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--ref_steps", type=int, default=200, help="RK4 steps of the reference solve")
    ap.add_argument("--data_dir", default="../shared/data/mnist")
    ap.add_argument("--cache_dir", default="outputs/cache")
    ap.add_argument("--out", default="outputs/mnist_endpoint.jsonl")
    args = ap.parse_args()
    dj.configure_xla_cpu()
    trained = dj.load_pretrained("mnist_fm")
    model, process = trained.model, trained.process
    shape = (args.num, 28, 28, 1)
    x_T = process.prior_sample(jax.random.key(2026), shape)
    clf = load_or_train_classifier(args.cache_dir, args.data_dir)
    test_stats = feature_statistics(clf.features(load_dataset("mnist", "test", args.data_dir)[0]))

    def run(solver, opts, n=None, nfe=None):
        res = dj.sample(solver, model, process, jax.random.key(0), x_init=x_T, num_steps=n, nfe=nfe, **opts)
        return np.asarray(res.samples, np.float64), int(res.nfe)

    start = time.time()
    ref, _ = run("rk4", {}, n=args.ref_steps)
    half, _ = run("rk4", {}, n=args.ref_steps // 2)
    err = lambda x: np.sqrt(np.mean((x - ref).reshape(args.num, -1) ** 2, axis=1))  # noqa: E731
    print(f"reference RK4 {args.ref_steps} steps vs half as many: median {np.median(err(half)):.2e} "
          f"({time.time() - start:.0f} s)", flush=True)  # fmt: skip
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for nfe in args.nfe:
        for name, opts in CONFIGS:
            for variable in ("log_snr", "flow_time") if name in ADAMS else (None,):
                o = dict(opts, interpolate_in=variable) if variable else dict(opts)
                try:
                    x, used = run(name, o, nfe=nfe)
                except ValueError:
                    continue
                e = err(x)
                fd = frechet_distance(*feature_statistics(clf.features(np.clip(x, -1, 1).astype(np.float32))),
                                      *test_stats)  # fmt: skip
                row = dict(sampler=name, options={k: v for k, v in o.items()}, budget=nfe, nfe=used,
                           median=float(np.median(e)), rmse=float(np.sqrt(np.mean(e**2))), fd_mnist=float(fd))
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
