"""Training: optimizer schedule, the pure train step (exact update, EMA, key, non-finite guard),
compile-once, logging, and data parallelism (8 simulated CPU devices = 1 device)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_worker import build, eight_device_run, flat_arrays, reference_run, state_arrays

from diffjax.training import (
    Checkpointer,
    CheckpointWriteError,
    MetricsLogger,
    TrainConfig,
    TrainState,
    compile_train_step,
    create_train_state,
    make_data_mesh,
    make_optimizer,
    make_schedule,
    make_train_step,
    replicate,
    shard_batch,
)


# -- optimizer ---------------------------------------------------------------------------------
def test_schedule_warmup_and_cosine_closed_forms():
    lr, warm, total = 1e-3, 10, 110
    s = make_schedule(lr, warm)
    np.testing.assert_allclose([s(0), s(5), s(10), s(1000)], [0, lr / 2, lr, lr], rtol=1e-6)
    c = make_schedule(lr, warm, total, final_fraction=0.1)
    # cosine from lr to 0.1 lr over [10, 110]: midpoint (1 + cos(π/2))/2 = 1/2 of the way
    np.testing.assert_allclose(
        [c(5), c(10), c(60), c(110)], [lr / 2, lr, 0.55 * lr, 0.1 * lr], rtol=1e-5
    )
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule(lr, 10, 10)
    with pytest.raises(ValueError, match="clip_norm"):
        make_optimizer(lr, clip_norm=0.0)


def test_optimizer_weight_decay_and_clipping():
    """Zero gradient: AdamW update = −lr·wd·w (decoupled decay). Gradient of norm 100 clipped
    to 1 leaves Adam's first step lr·g/|g| elementwise, i.e. −lr·sign(g) up to eps."""
    w = {"w": jnp.array([1.0, -2.0, 3.0])}
    tx, _ = make_optimizer(0.1, weight_decay=0.5, clip_norm=1.0)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * w["w"], rtol=1e-6)
    g = {"w": jnp.array([60.0, -80.0, 0.0])}
    updates, _ = make_optimizer(0.1, clip_norm=1.0)[0].update(g, tx.init(w), w)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1, 0.0], atol=1e-6)


# -- the step ----------------------------------------------------------------------------------
def _noisy_quadratic(params, batch, key):
    """L(w) = mean_i ‖w − x_i − 0.1 n_i‖², n ~ N(0, I) from the step key."""
    noise = 0.1 * jax.random.normal(key, batch.shape)
    return jnp.mean(jnp.sum((params["w"] - batch - noise) ** 2, axis=-1))


def test_train_step_exact_sgd_update_ema_and_key():
    lr, decay = 0.05, 0.9
    tx = optax.sgd(lr)
    step = jax.jit(make_train_step(_noisy_quadratic, tx, ema_decay=decay, ema_warmup=False,
                                   schedule=lambda s: lr))  # fmt: skip
    w0 = {"w": jnp.array([0.5, -1.0])}
    state = create_train_state(w0, tx, jax.random.key(3))
    x = jax.random.normal(jax.random.key(1), (16, 2))
    new, metrics = step(state, x)
    key, step_key = jax.random.split(jax.random.key(3))
    noise = 0.1 * jax.random.normal(step_key, x.shape)
    grad = 2 * jnp.mean(w0["w"] - x - noise, axis=0)  # closed form ∇L
    np.testing.assert_allclose(new.params["w"], w0["w"] - lr * grad, rtol=1e-5)
    np.testing.assert_allclose(
        new.ema_params["w"], decay * w0["w"] + (1 - decay) * new.params["w"], rtol=1e-6
    )
    np.testing.assert_allclose(metrics["grad_norm"], jnp.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_array_equal(new.key, jax.random.key_data(key))
    assert int(new.step) == 1 and bool(metrics["finite"]) and metrics["lr"] == np.float32(lr)


def test_a_step_dependent_loss_sees_the_step_counter_under_one_compile():
    """A loss marked with `uses_step` gets step=state.step (traced: one compiled step serves every
    value), through `model_loss` too; an unmarked loss is called as before. The loss 0.5·min(k/4, 1)·‖w‖²
    (a warm-up schedule) reports its value at k = 0, 1, …, 5 and the SGD update uses that weight."""
    from flax import nnx

    from diffjax.training import model_loss, takes_step, uses_step

    def scheduled(params, batch, key, *, step):
        return 0.5 * jnp.minimum(step / 4.0, 1.0) * jnp.sum(params["w"] ** 2)

    assert takes_step(uses_step(scheduled)) and not takes_step(_noisy_quadratic)
    tx = optax.sgd(0.1)
    train_step = jax.jit(make_train_step(scheduled, tx, ema_decay=0.0))
    state, w = create_train_state({"w": jnp.array([1.0, -2.0])}, tx, jax.random.key(0)), np.array([1.0, -2.0])
    for k in range(6):
        state, metrics = train_step(state, None)
        r = min(k / 4.0, 1.0)
        np.testing.assert_allclose(float(metrics["loss"]), 0.5 * r * np.sum(w**2), rtol=1e-6)
        w = w - 0.1 * r * w
        np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-6)
    assert train_step._cache_size() == 1

    class Scale(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(()))

        def __call__(self, x, t, labels=None, rngs=None):
            return self.w * x

    def recorded(model, x, key, *, step):
        seen.append(step)
        return jnp.sum(model(x, 0.5))

    graphdef, params = nnx.split(Scale())
    seen = []
    fn = model_loss(graphdef, uses_step(recorded))
    assert takes_step(fn)
    make_train_step(fn, tx, ema_decay=0.0)(create_train_state(params, tx, jax.random.key(0)),
                                           (jnp.ones((2, 1)), None))  # fmt: skip
    assert int(seen[-1]) == 0


def test_a_loss_marked_uses_unconditional_gets_the_network_under_the_null_label():
    """`uses_unconditional` (MeanFlow's guidance in training): `model_loss` passes `unconditional=` the same
    network bound to the null label num_classes for every example, next to the model bound to the batch's
    labels; for a network without classes it is refused."""
    from flax import nnx

    from diffjax.training import model_loss, uses_unconditional

    class Labelled(nnx.Module):  # w·x + y: the bound labels show in the output
        def __init__(self):
            self.w = nnx.Param(jnp.ones(()))

        def __call__(self, x, t, labels=None, rngs=None):
            return self.w * x + labels[:, None]

    def loss(model, x, key, *, unconditional):
        seen.append((model(x, 0.5), unconditional(x, 0.5)))
        return jnp.sum(model(x, 0.5))

    graphdef, params = nnx.split(Labelled())
    seen, batch = [], (jnp.zeros((3, 1)), jnp.array([2, 5, 7]))
    model_loss(graphdef, uses_unconditional(loss), num_classes=10)(params, batch, jax.random.key(0))
    conditional, unconditional = seen[-1]
    np.testing.assert_array_equal(conditional[:, 0], [2, 5, 7])
    np.testing.assert_array_equal(unconditional[:, 0], [10, 10, 10])
    with pytest.raises(ValueError, match="only a class-conditional network"):
        model_loss(graphdef, uses_unconditional(loss))(params, batch, jax.random.key(0))


def test_ema_warmup_decay_and_forgetting_of_the_initialisation():
    """d_k = min(d, (1 + k)/(10 + k)): 0.1 at step 0, d once (1 + k)/(10 + k) exceeds it; after
    381 steps the weight left on the initial parameters is Π d_k (≈ 2e-18 with warm-up at
    d = 0.995, below float32 resolution, against 0.995³⁸¹ ≈ 0.15 without)."""
    tx = optax.sgd(0.0)  # params stay at 1: the EMA then measures the weight left on its start 0
    zero_loss = lambda p, b, k: jnp.sum(p["w"] * 0.0)  # noqa: E731
    weights = {}
    for warmup in (True, False):
        step = jax.jit(make_train_step(zero_loss, tx, ema_decay=0.995, ema_warmup=warmup))
        state = create_train_state({"w": jnp.ones(1)}, tx, jax.random.key(0))
        state = dataclasses.replace(state, ema_params={"w": jnp.zeros(1)})
        for _ in range(381):
            state, _ = step(state, None)
        weights[warmup] = 1.0 - float(state.ema_params["w"][0])
    assert np.prod(np.minimum(0.995, (1 + np.arange(381)) / (10 + np.arange(381)))) < 1e-17
    assert abs(weights[True]) < 1e-6  # float32 round-off of 1 − ema
    assert weights[False] == pytest.approx(0.995**381, rel=1e-3)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_step_keeps_the_state(bad):
    tx, _ = make_optimizer(1e-2)
    step = jax.jit(make_train_step(_noisy_quadratic, tx), donate_argnums=0)
    state = create_train_state({"w": jnp.ones(2)}, tx, 0)
    state, _ = step(state, jnp.ones((4, 2)))  # one good step: nonzero optimizer state
    before = jax.tree.map(np.asarray, state)
    x = np.ones((4, 2), np.float32)
    x[1, 0] = bad
    new, metrics = step(state, x)
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


def test_step_compiles_once_on_the_mesh():
    train_step, state, batches, traces = build(steps=6)
    mesh = make_data_mesh()
    step_fn = compile_train_step(train_step, mesh)
    state = replicate(state, mesh)
    data = batches(0)
    for _ in range(6):
        state, _ = step_fn(state, shard_batch(next(data), mesh))
    assert int(state.step) == 6
    assert len(traces) == 1


# -- data parallel -----------------------------------------------------------------------------
def test_mesh_and_batch_sharding_single_process():
    mesh = make_data_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    x = np.arange(12.0, dtype=np.float32).reshape(6, 2)
    (xs, none) = shard_batch((x, None), mesh)
    assert none is None and xs.shape == (6, 2)
    np.testing.assert_array_equal(np.asarray(xs), x)
    r = replicate({"a": np.ones(3)}, mesh)["a"]
    assert r.sharding.is_fully_replicated


def test_eight_devices_match_one_device(tmp_path_factory):
    """24 AdamW steps (dropout, warmup, clipping, EMA) of a ResidualMLP flow-matching run on 8
    simulated CPU devices vs 1. Only the summation order of the batch mean differs (partial sums
    per device + all-reduce), a relative error of a few float32 ulps (~1e-7) per step; tolerance
    rtol 1e-5 with atol 1e-6 for entries near zero leaves two orders of magnitude of margin."""
    base = tmp_path_factory.getbasetemp()
    one, (eight, _) = reference_run(base), eight_device_run(base)
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    assert int(one["traces"]) == 1 and int(eight["traces"]) == 1  # compiled once per run
    a, b = state_arrays(one), state_arrays(eight)
    assert a.keys() == b.keys() and len(a) > 20
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(f"1 vs 8 devices: max |Δ| over params/EMA/Adam state = {worst:.3g}")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_array_equal(eight["key"], one["key"])
    # the run really moved: parameters differ from initialisation by far more than tolerance
    init = flat_arrays(build(24)[1].params, "params")
    assert max(float(np.max(np.abs(a[k] - init[k]))) for k in init) > 1e-2


# -- logging -----------------------------------------------------------------------------------
def test_metrics_logger_files_and_disabled(tmp_path):
    log = MetricsLogger(tmp_path / "on", num_steps=10, progress=False)
    log.log(5, {"loss": np.float32(0.5), "finite": np.bool_(True)})
    log.log(10, {"loss": 0.25})
    line = log.summary(10, loss=0.25)
    log.close()
    records = [json.loads(s) for s in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10] and records[0]["loss"] == 0.5
    assert records[0]["finite"] is True and records[1]["steps_per_s"] > 0
    assert os.listdir(tmp_path / "on" / "tensorboard")
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["step"] == 10
    assert line.startswith("summary: step=10")
    off = MetricsLogger(tmp_path / "off", num_steps=10, enabled=False)
    off.log(5, {"loss": 1.0})
    off.summary(10)
    off.close()
    assert not (tmp_path / "off").exists()


def test_sample_grids_are_logged_to_tensorboard_as_images(tmp_path):
    """The event file (TFRecord framing: length, crc, payload, crc) holds an image summary of the grid
    at its step, with the grid's width and height."""
    import struct

    from tensorboardX.proto import event_pb2

    from diffjax.training.logging import log_image

    grid = (np.arange(12 * 20) % 256).astype(np.uint8).reshape(12, 20)
    assert log_image(tmp_path, "samples", 7, grid)
    (path,) = (tmp_path / "tensorboard").iterdir()
    data, images = path.read_bytes(), []
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12 : 12 + length])
        images += [(event.step, v.image) for v in event.summary.value if v.tag == "samples"]
        data = data[12 + length + 4 :]
    ((step, image),) = images
    assert step == 7 and (image.width, image.height) == (20, 12)
    assert image.encoded_image_string[:4] == b"\x89PNG"


def test_a_resumed_segment_logs_every_step_once_and_sums_wall_time(tmp_path, capsys):
    """An interrupted run logged steps 5..15 but checkpointed at 10: resuming from 10 drops the records
    after it, so metrics.jsonl holds each step once; summary.json sums the segments' wall time and a
    rerun that does no step keeps it. Off a terminal each log period prints one line."""
    first = MetricsLogger(tmp_path, num_steps=20, progress=False)
    for step in (5, 10, 15):
        first.log(step, {"loss": 1.0 / step})
    first.summary(15)
    first.close()
    wall_1 = json.loads((tmp_path / "summary.json").read_text())["wall_time_s"]
    assert "step 15/20: loss=0.06667" in capsys.readouterr().out
    second = MetricsLogger(tmp_path, num_steps=20, start_step=10, progress=False)
    second.log(15, {"loss": 0.5})
    second.log(20, {"loss": 0.25})
    second.summary(20)
    second.close()
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20] and records[2]["loss"] == 0.5
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["steps_this_run"] == 10
    assert summary["wall_time_s"] == pytest.approx(wall_1 + summary["wall_time_this_run_s"], abs=2e-3)
    noop = MetricsLogger(tmp_path, num_steps=20, start_step=20, progress=False)
    noop.summary(20)
    noop.close()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_checkpoint_that_cannot_be_written_says_where_and_what_is_intact(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
    state = create_train_state({"w": jnp.ones(3)}, optax.sgd(1.0), 0)
    ckpt.save(1, state)
    ckpt.wait()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", full_disk)
    message = (r"step 2 to .*ckpt: OSError: \[Errno 28\] No space left on device \(\d+ MiB free on that "
               r"disk\)\. The earlier checkpoints \[1\] are intact")
    with pytest.raises(CheckpointWriteError, match=message):
        ckpt.save(2, state)
    ckpt.close()


def test_train_config_validation():
    with pytest.raises(ValueError, match="log_every"):
        TrainConfig(workdir="w", num_steps=10, log_every=0)
    assert isinstance(create_train_state({"w": jnp.ones(1)}, optax.sgd(1.0), 0), TrainState)
