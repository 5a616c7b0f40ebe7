"""Multi-host data parallelism on one machine: two JAX processes (one CPU device each, gloo
collectives, `jax.distributed.initialize` on localhost) form one 2-device mesh; each feeds its
half of the global batch. The result must equal the 1-process run, only process 0 writes logs,
and both write the checkpoint together. With two devices each and the state split 4 ways (FSDP
across the processes) the result must equal the 1-process run too."""

import json
import os
import subprocess

import numpy as np
from _train_worker import (
    build,
    flat_arrays,
    free_port,
    reference_run,
    state_arrays,
    worker_command,
    worker_env,
)

from diffjax.training import Checkpointer, make_data_mesh, replicate


def run_two_processes(tmp_path, *extra) -> tuple[list[str], list[dict]]:
    """(logs, outputs) of the worker run as two localhost processes (gloo); `extra` worker flags."""
    port = free_port()
    procs = [
        subprocess.Popen(
            worker_command(
                tmp_path, "--num-processes", 2, "--process-id", i,
                "--coordinator", f"127.0.0.1:{port}", "--out", tmp_path / f"out{i}.npz", *extra,
            ),
            env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:  # a failed peer would leave the other waiting for the coordinator
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{logs[i]}"
    return logs, [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(2)]


def assert_states_match(ref, outs, what: str) -> dict:
    """Every process's final state equals the 1-device reference to the data-parallel tolerance
    (as for 1 vs 8 devices: only the order of the batch sums differs); returns the reference."""
    a = state_arrays(ref)
    for out in outs:
        b = state_arrays(out)
        assert b.keys() == a.keys()
        worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
        print(f"{what}: max |Δ| = {worst:.3g}")
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    return a


def test_two_processes_match_one_process(tmp_path, tmp_path_factory):
    ref = reference_run(tmp_path_factory.getbasetemp())
    logs, outs = run_two_processes(tmp_path)
    assert all("2 devices" in log for log in logs)
    a = assert_states_match(ref, outs, "2 processes vs 1")
    for k in a:  # the two processes hold the same replicated state
        np.testing.assert_array_equal(outs[0][k], outs[1][k])

    # logs: written once, by process 0 only
    steps = [json.loads(s)["step"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16, 20, 24]
    assert len(os.listdir(tmp_path / "tensorboard")) == 1
    summaries = [log.count("summary:") for log in logs]
    assert summaries == [1, 0]

    # checkpoint: written by both processes (each its own shard files), restorable on 1 device
    ckpt_dir = tmp_path / "checkpoints"
    written = [str(p) for p in ckpt_dir.rglob("*")]
    assert any("process_1" in p for p in written) and any("process_0" in p for p in written)
    with Checkpointer(ckpt_dir, save_every=8) as ckpt:
        assert ckpt.all_steps() == [8, 16, 24]
        restored = ckpt.restore(24, replicate(build(24)[1], make_data_mesh()))
    for k, v in flat_arrays(restored.params, "params").items():
        np.testing.assert_array_equal(v, outs[0][k])


def test_fsdp_across_two_processes_matches_one_process(tmp_path, tmp_path_factory):
    """Two processes with two CPU devices each, the state split 4 ways over all of them (32×32 kernels
    and their Adam moments and EMA: each process holds half): the same 24 steps as on 1 device, to
    the data-parallel tolerance (only the order of the gradient sums differs); the checkpoint they
    wrote together restores bit-identically on 1 device."""
    ref = reference_run(tmp_path_factory.getbasetemp())
    logs, outs = run_two_processes(tmp_path, "--devices", 2, "--fsdp", 4, "--min-size", 256)
    assert all("4 devices" in log for log in logs)
    assert_states_match(ref, outs, "fsdp 4 over 2 processes vs 1 device")
    with Checkpointer(tmp_path / "checkpoints", save_every=8) as ckpt:
        restored = ckpt.restore(24, replicate(build(24)[1], make_data_mesh()))
    for k, v in flat_arrays(restored.params, "params").items():
        np.testing.assert_array_equal(v, outs[0][k])
