"""Compile time of the MNIST train step and sampler (the `mnist_fm` config's U-Net, batch 128).

    .venv/bin/python -m bench.bench_compile [--rounds 3] [--config mnist_fm]

Each round runs in a fresh process (XLA's compilation cache is in-process), traces and compiles the
data-parallel train step exactly as `experiments.train` does (`compile_train_step` with donation) and
the config's sampler for a batch of 64, and reports tracing (lower) and compile seconds separately,
with the load average before and after (a busy machine inflates them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.machine import add_load_arguments, check_idle


def one_round(config: str) -> dict:
    import importlib

    import jax
    from flax import nnx

    import diffjax as dj
    from diffjax.models import build_model
    from diffjax.training import (
        compile_train_step,
        create_train_state,
        make_data_mesh,
        make_optimizer,
        make_train_step,
        model_loss,
        replicate,
        shard_batch,
    )
    from experiments.builders import build_loss, model_spec, num_classes, optimizer_spec, process_spec

    cfg = importlib.import_module(f"experiments.configs.{config}").get_config()
    process = dj.build_process(process_spec(cfg))
    graphdef, params = nnx.split(build_model(model_spec(cfg), 0))
    optimizer, schedule = make_optimizer(**optimizer_spec(cfg))
    step = make_train_step(model_loss(graphdef, build_loss(cfg, process), num_classes=num_classes(cfg)),
                           optimizer, ema_decay=cfg.train.ema_decay, schedule=schedule)  # fmt: skip
    mesh = make_data_mesh()
    state = replicate(create_train_state(params, optimizer, jax.random.key(0)), mesh)
    import numpy as np

    batch = shard_batch((np.zeros((cfg.train.batch_size, 28, 28, 1), np.float32),
                         np.zeros((cfg.train.batch_size,), np.int32)), mesh)  # fmt: skip
    out = {}
    t0 = time.perf_counter()
    lowered = compile_train_step(step, mesh).lower(state, batch)
    out["train_lower_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered.compile()
    out["train_compile_s"] = time.perf_counter() - t0
    model = nnx.merge(graphdef, params)
    t0 = time.perf_counter()
    shape = (64, 28, 28, 1)
    res = dj.sample(cfg.sample.sampler, model, process, jax.random.key(0), shape, cfg.sample.num_steps)
    jax.block_until_ready(res.samples)
    out["sample_first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(dj.sample(cfg.sample.sampler, model, process, jax.random.key(1), (64, 28, 28, 1),
                                    cfg.sample.num_steps).samples)  # fmt: skip
    out["sample_second_call_s"] = time.perf_counter() - t0
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", default="mnist_fm")
    p.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    add_load_arguments(p)
    args = p.parse_args()
    if args.one_round:
        print(json.dumps(one_round(args.config)))
        return
    load = check_idle(args)
    rows = []
    for _ in range(args.rounds):
        command = [sys.executable, "-m", "bench.bench_compile", "--one-round", "--config", args.config]
        proc = subprocess.run(command,
                              capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(load.finish().describe())
    for key in rows[0]:
        vals = sorted(r[key] for r in rows)
        print(f"{key:>22}: min {vals[0]:.2f}  median {vals[len(vals) // 2]:.2f}  max {vals[-1]:.2f}")


if __name__ == "__main__":
    main()
