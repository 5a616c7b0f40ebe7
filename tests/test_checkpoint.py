"""Checkpoints: exact resume after SIGKILL, clean stop on SIGTERM, corrupt/partial checkpoints,
non-finite steps, and restoring an 8-device checkpoint on 1 device."""

import glob
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from _train_worker import (
    build,
    eight_device_run,
    flat_arrays,
    reference_run,
    run_worker,
    state_arrays,
    worker_command,
    worker_env,
)

from diffjax.training import (
    Checkpointer,
    CorruptCheckpointWarning,
    NonFiniteError,
    TrainConfig,
    make_data_mesh,
    replicate,
    train,
)


def _start_and_wait_for_checkpoint(workdir, step: int, *extra) -> subprocess.Popen:
    """Start a slowed-down worker and return once checkpoint `step` is committed (Orbax renames
    the temporary directory to `<step>` only when the write is complete)."""
    proc = subprocess.Popen(
        worker_command(workdir, "--sleep", 0.15, *extra), env=worker_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    committed = os.path.join(str(workdir), "checkpoints", str(step))
    deadline = time.monotonic() + 180
    while not os.path.isdir(committed):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint {step} before exit/timeout:\n{proc.stdout.read()}")
        time.sleep(0.02)
    return proc


def _assert_bit_identical(out, ref):
    a, b = state_arrays(out), state_arrays(ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(out["key"], ref["key"])


def test_sigkill_then_restart_is_bit_identical(tmp_path, tmp_path_factory):
    ref = reference_run(tmp_path_factory.getbasetemp())
    proc = _start_and_wait_for_checkpoint(tmp_path, 8, "--out", tmp_path / "out.npz")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "out.npz").exists()  # it died before finishing
    out = run_worker(tmp_path)
    assert 8 <= int(out["start_step"]) < 24 and int(out["step"]) == 24
    _assert_bit_identical(out, ref)


def test_sigterm_saves_exits_cleanly_and_resumes(tmp_path, tmp_path_factory):
    ref = reference_run(tmp_path_factory.getbasetemp())
    proc = _start_and_wait_for_checkpoint(tmp_path, 8, "--out", tmp_path / "stopped.npz")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stdout.read()
    with np.load(tmp_path / "stopped.npz") as f:
        stopped, preempted = int(f["step"]), bool(f["preempted"])
    assert preempted and 8 <= stopped < 24
    assert os.path.isdir(tmp_path / "checkpoints" / str(stopped))  # saved where it stopped
    out = run_worker(tmp_path)
    assert int(out["start_step"]) == stopped and not bool(out["preempted"])
    _assert_bit_identical(out, ref)


def test_keeps_last_n_checkpoints(tmp_path_factory):
    reference_run(tmp_path_factory.getbasetemp())
    ckpt_dir = tmp_path_factory.getbasetemp() / "reference_1dev" / "checkpoints"
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [8, 16, 24]


# -- in-process runs ---------------------------------------------------------------------------
def _capture(store):
    def hook(step, state):
        store[step] = flat_arrays(state.params, "params")

    return hook


def _config(workdir, steps):
    return TrainConfig(workdir=str(workdir), num_steps=steps, checkpoint_every=4, keep=3,
                       log_every=4)  # fmt: skip


@pytest.fixture(scope="module")
def twelve_steps(tmp_path_factory):
    """A 12-step in-process run checkpointed at 4, 8, 12; params captured after every step."""
    workdir = tmp_path_factory.mktemp("twelve")
    params = {}
    train_step, state, batches, _ = build(12)
    train(_config(workdir, 12), train_step, state, batches, hooks=[(1, _capture(params))])
    return workdir, params


def _damage(step_dir: str, kind: str):
    files = sorted(
        (os.path.getsize(f), f)
        for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
        if os.path.isfile(f)
    )
    data_file = files[-1][1]  # the largest file of the array store
    if kind == "truncated":
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)
    elif kind == "deleted":
        os.remove(data_file)
    elif kind == "bitflip":  # silent damage: only the checksums can see it
        with open(data_file, "r+b") as f:
            f.seek(os.path.getsize(data_file) // 2)
            chunk = f.read(8)
            f.seek(-len(chunk), os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in chunk))
    elif kind == "no_metadata":
        shutil.rmtree(os.path.join(step_dir, "meta"))


def _target():
    return replicate(build(12)[1], make_data_mesh())


# Orbax leaves its other read coroutines of a failed restore un-awaited; they are harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", ["truncated", "deleted", "bitflip", "no_metadata"])
def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(kind, twelve_steps, tmp_path):
    source, params = twelve_steps
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    _damage(str(tmp_path / "checkpoints" / "12"), kind)
    with Checkpointer(tmp_path / "checkpoints", save_every=4) as ckpt:
        with pytest.warns(CorruptCheckpointWarning, match="step 12"):
            restored = ckpt.restore_latest(_target())
        assert int(restored.step) == 8 and ckpt.all_steps() == [4, 8]
    for k, v in flat_arrays(restored.params, "params").items():
        np.testing.assert_array_equal(v, params[8][k])
    assert os.listdir(tmp_path / "checkpoints_corrupt")  # kept aside for inspection
    # training again resumes at 8, re-saves 12, and ends bit-identical to the undamaged run
    train_step, state, batches, _ = build(12)
    result = train(_config(tmp_path, 12), train_step, state, batches)
    assert result.start_step == 8
    for k, v in flat_arrays(result.state.params, "params").items():
        np.testing.assert_array_equal(v, params[12][k])


def test_partial_checkpoint_without_commit_is_ignored(twelve_steps, tmp_path):
    """An interrupted write leaves Orbax's temporary directory (renamed to `<step>` only on
    commit); it is not a checkpoint and is cleaned up."""
    source, params = twelve_steps
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    partial = tmp_path / "checkpoints" / "16.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "checkpoints" / "12", partial)
    shutil.rmtree(partial / "meta")
    with Checkpointer(tmp_path / "checkpoints", save_every=4) as ckpt:
        assert ckpt.all_steps() == [4, 8, 12]
        restored = ckpt.restore_latest(_target())
    assert int(restored.step) == 12 and not partial.exists()


def test_non_finite_loss_stops_with_last_good_checkpoint_intact(tmp_path):
    params = {}
    train_step, state, batches, _ = build(12, nan_at=6)  # batch 6 contains inf
    with pytest.raises(NonFiniteError, match=r"step 6 .*last good checkpoint \(step 4\)") as info:
        train(_config(tmp_path, 12), train_step, state, batches, hooks=[(1, _capture(params))])
    err = info.value
    assert err.step == 6 and int(err.state.step) == 6 and not err.metrics["finite"]
    for k, v in flat_arrays(err.state.params, "params").items():
        np.testing.assert_array_equal(v, params[6][k])  # the bad update was not applied
    with Checkpointer(tmp_path / "checkpoints", save_every=4) as ckpt:
        assert ckpt.all_steps() == [4]  # nothing saved after the failure
        restored = ckpt.restore(4, _target())
    for k, v in flat_arrays(restored.params, "params").items():
        np.testing.assert_array_equal(v, params[4][k])


def test_eight_device_checkpoint_restores_and_continues_on_one_device(tmp_path, tmp_path_factory):
    eight, workdir = eight_device_run(tmp_path_factory.getbasetemp())
    assert jax.device_count() == 1
    target = _target()
    with Checkpointer(os.path.join(workdir, "checkpoints"), save_every=8) as ckpt:
        restored = ckpt.restore(24, target)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(restored))
    for k, v in {**flat_arrays(restored.params, "params"),
                 **flat_arrays(restored.opt_state, "opt")}.items():  # fmt: skip
        np.testing.assert_array_equal(v, eight[k], err_msg=k)
    # and training continues from it on this 1-device mesh
    shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    train_step, state, batches, _ = build(28)
    result = train(_config(tmp_path, 28), train_step, state, batches)
    assert result.start_step == 24 and result.step == 28
    assert np.isfinite(result.last_metrics["loss"])


def test_host_checksums_equal_the_compiled_ones_on_every_dtype():
    """`tree_checksums` sums arrays a process holds whole on the host (numpy, uint64 wrapping) and
    split ones with the compiled `_checksums`: both must give the same numbers for every dtype a state
    holds, or a checkpoint written by one path would be refused by the other."""
    import jax.numpy as jnp
    from conftest import x64

    from diffjax.training.checkpoint import _checksums, tree_checksums

    rng = np.random.default_rng(0)
    with x64():
        tree = [rng.normal(size=(300, 301)).astype(np.float32), rng.normal(size=(7,)).astype(jnp.bfloat16),
                rng.integers(0, 2**31, size=(5, 3), dtype=np.int32), np.array([True, False, True]),
                rng.integers(0, 255, size=(9,), dtype=np.uint8), rng.normal(size=(30, 31)),
                rng.integers(0, 2**62, size=(5,), dtype=np.int64), jnp.zeros((), jnp.int32),
                jax.random.key_data(jax.random.key(3)), rng.normal(size=(2100, 1000)).astype(np.float32)]
        tree = [jnp.asarray(x) for x in tree]
        compiled = [[int(v) for v in np.asarray(c)] for c in _checksums(tree)]
        assert tree_checksums(tree) == compiled
        changed = list(tree)
        changed[-1] = changed[-1].at[1234, 5].add(1e-3)  # one word of the largest leaf (i·w sums wrap)
        assert tree_checksums(changed)[-1] != compiled[-1]
