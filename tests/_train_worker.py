"""A small end-to-end training run (ResidualMLP, flow matching on the 2D checkerboard) that the
training tests launch as a subprocess, since the device count and the distributed runtime are
fixed when JAX starts. Writes `--out` (npz: final params, EMA, step, start_step, preempted).

    python tests/_train_worker.py --workdir W --steps 24 --devices 8 --out W/out.npz
    python tests/_train_worker.py ... --num-processes 2 --process-id i --coordinator 127.0.0.1:P
    python tests/_train_worker.py ... --devices 2 --fsdp 4 --min-size 256   (state split 4 ways, FSDP)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

GLOBAL_BATCH = 32
NUM_EXAMPLES = 2048


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--checkpoint-every", type=int, default=8)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--devices", type=int, default=1, help="simulated CPU devices per process")
    p.add_argument("--sync", action="store_true", help="synchronous checkpoints")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds slept after every step")
    p.add_argument("--nan-at", type=int, default=-1, help="step whose batch contains inf")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--fsdp", type=int, default=1, help="state shards (1: data parallel, replicated)")
    p.add_argument("--min-size", type=int, default=None, help="smallest array split (FSDP_MIN_SIZE)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def build(steps: int, nan_at: int = -1):
    """(train_step, initial state, batches(start_step), trace counter) of the test problem."""
    import jax
    from flax import nnx

    from diffjax.data import batches, load_dataset
    from diffjax.losses import cfm_loss
    from diffjax.models import ResidualMLP, ResidualMLPConfig
    from diffjax.processes import CondOTPath
    from diffjax.training import create_train_state, make_optimizer, make_train_step

    cfg = ResidualMLPConfig(dim=2, width=32, depth=2, dropout=0.1, prediction="velocity")
    graphdef, params = nnx.split(ResidualMLP(cfg, rngs=nnx.Rngs(0)))
    path = CondOTPath()
    traces = []

    def loss_fn(params, batch, key):
        traces.append(1)  # runs once per trace, not per step
        k_loss, k_drop = jax.random.split(key)
        model = nnx.merge(graphdef, params)
        return cfm_loss(lambda x, t: model(x, t, rngs=k_drop), batch[0], k_loss, process=path)

    optimizer, schedule = make_optimizer(
        3e-3, warmup_steps=4, total_steps=max(steps, 5), weight_decay=1e-4, clip_norm=1.0
    )
    train_step = make_train_step(loss_fn, optimizer, ema_decay=0.9, schedule=schedule)
    state = create_train_state(params, optimizer, jax.random.key(42))
    data, _ = load_dataset("checkerboard", num_examples=NUM_EXAMPLES)

    def batch_iter(start_step):
        it = batches(data, None, GLOBAL_BATCH, seed=0, start_step=start_step,
                     process_index=jax.process_index(), process_count=jax.process_count())
        for step, (x, y) in enumerate(it, start=start_step):
            if step == nan_at:
                x = x.copy()
                x[0, 0] = float("inf")
            yield x, y

    return train_step, state, batch_iter, traces


def flat_arrays(tree, prefix):
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {prefix + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


# -- helpers for the tests (run in the pytest process) -----------------------------------------
WORKER = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(WORKER))
_CACHE: dict = {}


def worker_command(workdir, *extra) -> list[str]:
    return [sys.executable, WORKER, "--workdir", str(workdir), *map(str, extra)]


def worker_env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, CI="1")
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    return env


def run_worker(workdir, *extra, timeout: float = 240) -> dict:
    """Run one worker to completion; returns its npz outputs (written to workdir/out.npz)."""
    import subprocess

    import numpy as np

    out = os.path.join(str(workdir), "out.npz")
    proc = subprocess.run(
        worker_command(workdir, *extra, "--out", out), env=worker_env(), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"worker failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def reference_run(base_dir) -> dict:
    """The uninterrupted 1-device run of the default length, cached per test process."""
    if "ref" not in _CACHE:
        _CACHE["ref"] = run_worker(os.path.join(str(base_dir), "reference_1dev"))
    return _CACHE["ref"]


def eight_device_run(base_dir) -> tuple[dict, str]:
    """(outputs, workdir) of the same run on 8 simulated CPU devices, cached per test process."""
    if "eight" not in _CACHE:
        workdir = os.path.join(str(base_dir), "run_8dev")
        _CACHE["eight"] = run_worker(workdir, "--devices", 8), workdir
    return _CACHE["eight"]


def state_arrays(out: dict) -> dict:
    """The params/EMA/optimizer arrays of a worker output."""
    return {k: v for k, v in out.items() if k.startswith(("params", "ema", "opt"))}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.devices > 1:
        jax.config.update("jax_num_cpu_devices", args.devices)
    from diffjax.training import (
        FSDP_MIN_SIZE,
        TrainConfig,
        gather,
        make_mesh,
        maybe_initialize_distributed,
        train,
    )

    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import numpy as np

    train_step, state, batch_iter, traces = build(args.steps, args.nan_at)
    hooks = [(1, lambda step, state: time.sleep(args.sleep))] if args.sleep > 0 else []
    config = TrainConfig(
        workdir=args.workdir, num_steps=args.steps, checkpoint_every=args.checkpoint_every,
        keep=args.keep, log_every=args.log_every, async_checkpoints=not args.sync,
        metadata={"test": "worker"},
    )  # fmt: skip
    print(f"worker {jax.process_index()}: {jax.device_count()} devices", flush=True)
    mesh = make_mesh(fsdp=args.fsdp) if args.fsdp > 1 else None
    min_size = FSDP_MIN_SIZE if args.min_size is None else args.min_size
    result = train(config, train_step, state, batch_iter, mesh=mesh, hooks=hooks, fsdp_min_size=min_size)
    final = result.state if mesh is None else gather(result.state, mesh)  # whole arrays on every process
    if args.out:
        out = {**flat_arrays(final.params, "params"),
               **flat_arrays(final.ema_params, "ema"),
               **flat_arrays(final.opt_state, "opt"),
               "key": np.asarray(final.key), "step": result.step,
               "start_step": result.start_step, "preempted": result.preempted,
               "traces": len(traces), "devices": jax.device_count(),
               "loss": result.last_metrics.get("loss", np.nan)}  # fmt: skip
        np.savez(args.out, **out)
    print(f"worker {jax.process_index()}: done at step {result.step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
