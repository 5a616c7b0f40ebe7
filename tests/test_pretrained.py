"""Pretrained networks: save/load round trips (float32 exact, float16 within its rounding), the checks
on load (SHA-256, names and shapes, unknown names), the shipped MNIST flow model (its card, samples
that have MNIST's pixel statistics, a flow-matching loss on real test digits far below the same
network untrained), the command-line `pretrained:NAME` source and `experiments.export_pretrained`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_experiments import run

import diffjax as dj
from diffjax.models import build_model
from diffjax.pretrained import network_parameters
from diffjax.training import TrainedModel

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def tiny_trained(kind="mlp", preconditioning=None):
    spec = dict(kind=kind, prediction="x0" if preconditioning else "velocity", width=16, depth=1)
    if preconditioning:
        spec["preconditioning"] = preconditioning
    record = {"model": spec, "process": {"name": "condot"}, "optimizer": {}, "data_shape": [2],
              "num_classes": None}  # fmt: skip
    process = dj.build_process(record["process"])
    network = build_model(spec, seed=3)
    model = dj.preconditioning.apply_preconditioning(network, process, spec.get("preconditioning"))
    return TrainedModel(model, process, 7, record, None)


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("preconditioning", [None, {"kind": "edm", "sigma_data": 0.5}])
def test_round_trip(tmp_path, storage, preconditioning):
    """float32 storage is bit-exact; float16 rounds each parameter to 11 significant bits (relative
    error ≤ 2⁻¹¹ of the value, absolute below float16's normal range); the wrapper comes back."""
    trained = tiny_trained(preconditioning=preconditioning)
    path = dj.save_pretrained(trained, str(tmp_path / "m.npz"), {"note": "x"}, storage_dtype=storage)
    back = dj.load_pretrained(path)
    assert type(back.model) is type(trained.model) and back.step == 7 and back.record == trained.record
    ref, got = network_parameters(trained.model), network_parameters(back.model)
    assert set(ref) == set(got) and all(got[k].dtype == np.float32 for k in got)
    for k in ref:
        if storage == "float32":
            np.testing.assert_array_equal(got[k], ref[k])
        else:
            assert np.all(np.abs(got[k] - ref[k]) <= 2.0**-11 * np.abs(ref[k]) + 2.0**-25), k
    card = dj.pretrained_card(path)
    assert card["note"] == "x" and card["storage_dtype"] == storage and card["num_parameters"] > 0
    x, t = jnp.ones((3, 2)), jnp.array([0.2, 0.5, 0.8])
    tol = 0 if storage == "float32" else 1e-2
    np.testing.assert_allclose(back.model(x, t), trained.model(x, t), atol=tol, rtol=tol)


def test_load_checks_the_file_against_its_card(tmp_path):
    path = dj.save_pretrained(tiny_trained(), str(tmp_path / "m.npz"))
    with np.load(path) as f:
        arrays = dict(f)
    name = sorted(arrays)[0]
    np.savez(path, **dict(arrays, **{name: arrays[name] + 1}))
    with pytest.raises(ValueError, match="SHA-256"):
        dj.load_pretrained(path)
    card = json.load(open(path[:-4] + ".json"))
    for edit, match in (({name: None}, "missing"), ({"extra/kernel": np.ones(2)}, "unexpected")):
        stored = {k: v for k, v in dict(arrays, **edit).items() if v is not None}
        np.savez(path, **stored)
        json.dump(dict(card, sha256=None), open(path[:-4] + ".json", "w"))
        with pytest.raises(ValueError, match=match):
            dj.load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="mnist_fm"):  # the error lists the installed ones
        dj.load_pretrained("no_such_model")
    with pytest.raises(ValueError, match="storage_dtype"):
        dj.save_pretrained(tiny_trained(), str(tmp_path / "b.npz"), storage_dtype="int8")


def test_shipped_mnist_flow_model_card_and_samples():
    """The installed card names how the network was trained and measured; 32 samples (midpoint,
    5 steps) have MNIST's pixel statistics: mostly background (measured 83.1% of pixels below −0.8,
    MNIST test digits 83.5%) and some bright stroke (9.9% above 0.5, MNIST 9.8%) — pure noise or a
    blank image fails both."""
    assert "mnist_fm" in dj.available_pretrained()
    card = dj.pretrained_card("mnist_fm")
    assert card["record"]["data_shape"] == [28, 28, 1] and card["storage_dtype"] == "float16"
    assert card["training"]["steps"] == card["step"] > 0 and card["config"]["loss"]["name"] == "cfm"
    assert any(e["sampler"] == card["sampler"]["name"] for e in card["evaluations"])
    trained = dj.load_pretrained("mnist_fm")
    x = dj.sample("midpoint", trained.model, trained.process, jax.random.key(0), (32, 28, 28, 1), 5).samples
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    background, stroke = np.mean(x < -0.8), np.mean(x > 0.5)
    assert 0.70 < background < 0.92 and 0.03 < stroke < 0.20, (background, stroke)


@pytest.mark.parametrize("name, loss", [("mnist_reflow_1step", "pair_distillation"),
                                        ("mnist_imf", "meanflow")])
def test_shipped_one_step_model_samples_digits_in_one_evaluation(name, loss):
    """The two-time networks made for one jump — reflowed and distilled from `mnist_fm`, or improved
    MeanFlow from scratch with no teacher — go from noise to data in one evaluation
    (Φ = z + (t_data − t_noise)·u(z, t_noise, t_data)); their 64 samples have MNIST's pixel statistics
    (measured: 81.4% / 81.3% background, 9.7% / 9.5% stroke; MNIST test digits 83.5%, 9.8%)."""
    from diffjax.flow_map import AverageVelocityMap, flow_map_sample

    card = dj.pretrained_card(name)
    assert card["sampler"] == {"name": "flow_map", "num_steps": 1}
    assert card["config"]["model"]["kwargs"]["second_time"] and card["config"]["loss"]["name"] == loss
    assert loss != "meanflow" or (card["config"]["loss"]["options"]["tangent"] == "model"
                                  and not card["config"]["teacher"]["workdir"])  # fmt: skip
    trained = dj.load_pretrained(name)
    path = trained.process
    z = path.prior_sample(jax.random.key(0), (64, 28, 28, 1))
    jump = AverageVelocityMap(trained.model, path, keyword_s=True)
    x = np.asarray(flow_map_sample(jump, path, z, jnp.array([path.t_noise, path.t_data])))
    background, stroke = np.mean(x < -0.8), np.mean(x > 0.5)
    assert 0.70 < background < 0.92 and 0.03 < stroke < 0.20, (background, stroke)


def test_shipped_few_step_model_jumps_in_one_and_in_two_evaluations():
    """`mnist_few_step` (trajectory distillation with num_steps=(1, 2)): ONE two-time network whose single
    jump z → x and whose two jumps with DDIM re-noising both draw digits with MNIST's pixel statistics
    (MNIST test digits: 83.5% background, 9.8% stroke; pure noise or a blank image fails both)."""
    from diffjax.flow_map import AverageVelocityMap, flow_map_sample

    card = dj.pretrained_card("mnist_few_step")
    assert card["sampler"] == {"name": "flow_map_ddim", "num_steps": 2}
    assert list(card["config"]["loss"]["options"]["num_steps"]) == [1, 2]
    trained = dj.load_pretrained("mnist_few_step")
    path = trained.process
    z = path.prior_sample(jax.random.key(0), (64, 28, 28, 1))
    jump = AverageVelocityMap(trained.model, path, keyword_s=True)
    for times, renoise in ((jnp.array([path.t_noise, path.t_data]), False),
                           (jnp.linspace(path.t_noise, path.t_data, 3), True)):  # fmt: skip
        x = np.asarray(flow_map_sample(jump, path, z, times, key=jax.random.key(1), renoise=renoise, eta=0.0))
        background, stroke = np.mean(x < -0.8), np.mean(x > 0.5)
        assert 0.70 < background < 0.92 and 0.03 < stroke < 0.20, (len(times), background, stroke)


def test_shipped_consistency_model_is_its_teachers_network_read_as_a_one_step_jump():
    """`mnist_scd` (sCD, sCM's recipe) loads as a `DDIMConsistencyModel` of a velocity U-Net: f(x, t_min)
    = x bit for bit, and one evaluation from noise draws digits with MNIST's pixel statistics (MNIST test
    digits: 83.5% background, 9.8% stroke); the consistency sampler takes it from the card."""
    from diffjax.consistency import DDIMConsistencyModel
    from diffjax.flow_map import ToDataMap, flow_map_sample

    card = dj.pretrained_card("mnist_scd")
    assert card["sampler"] == {"name": "consistency", "num_steps": 1}
    trained = dj.load_pretrained("mnist_scd")
    model, path = trained.model, trained.process
    assert isinstance(model, DDIMConsistencyModel) and model.prediction == "velocity"
    z = path.prior_sample(jax.random.key(0), (64, 28, 28, 1))
    assert np.array_equal(np.asarray(model(z, model.t_min)), np.asarray(z))
    x = np.asarray(flow_map_sample(ToDataMap(model), path, z, jnp.array([path.t_noise, path.t_data]),
                                   key=jax.random.key(1), renoise=True))  # fmt: skip
    background, stroke = np.mean(x < -0.8), np.mean(x > 0.5)
    assert 0.70 < background < 0.92 and 0.03 < stroke < 0.20, (background, stroke)


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")  # fmt: skip
def test_shipped_mnist_flow_model_fits_real_test_digits():
    """Its conditional flow-matching loss on 256 held-out digits (the same times and noise for both)
    is below a third of the same network's at initialisation (measured: 0.183 vs 1.927, 0.095 of it;
    the float32 run's own parameters give 0.183 too, equal to 6 digits)."""
    from diffjax.data import load_dataset

    x, _ = load_dataset("mnist", "test", MNIST, num_examples=256)
    trained = dj.load_pretrained("mnist_fm")
    fresh = build_model(trained.record["model"], seed=0)
    loss = jax.jit(lambda m: dj.cfm_loss(m, jnp.asarray(x), jax.random.key(0), process=trained.process))
    ratio = float(loss(trained.model)) / float(loss(fresh))
    assert ratio < 1 / 3, ratio


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")  # fmt: skip
def test_shipped_class_conditional_model_draws_the_requested_digits():
    """40 samples of the labels 0..9 (midpoint, 5 steps), judged by a nearest-class-mean classifier of
    the MNIST test digits (78.7% on real test digits): with guidance w = 2 they are the requested digit
    (measured 97.5%), while w = 0 — the same network with the null label, unconditional — is at
    chance (measured 12.5%): the labels, not a lucky unconditional model, make the digits."""
    from diffjax.data import load_dataset

    card = dj.pretrained_card("mnist_cfg")
    assert card["record"]["num_classes"] == 10 and card["config"]["train"]["label_dropout"] > 0
    x, y = load_dataset("mnist", "test", MNIST)
    means = np.stack([x[y == c].reshape(-1, 784).mean(0) for c in range(10)])
    trained = dj.load_pretrained("mnist_cfg")
    labels = jnp.arange(40) % 10
    accuracy = {}
    for w in (0.0, 2.0):
        guided = dj.cfg_model(trained.model, labels, w, 10)
        res = dj.sample("midpoint", guided, trained.process, jax.random.key(0), (40, 28, 28, 1), 5)
        s = np.asarray(res.samples)
        nearest = ((s.reshape(40, 1, 784) - means[None]) ** 2).sum(-1).argmin(1)
        accuracy[w] = float(np.mean(nearest == np.asarray(labels)))
    assert accuracy[2.0] > 0.7 and accuracy[0.0] < 0.4, accuracy


def test_scripts_take_a_pretrained_source(tmp_path):
    out = run("sample", "--workdir", "pretrained:mnist_fm", "--sampler", "euler:2", "--num", "4",
              "--out", str(tmp_path / "s"))  # fmt: skip
    assert "(2 evaluations per sample)" in out
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 28, 28, 1)
    # without --out the files go to outputs/pretrained/NAME/ (a pretrained source is no directory)
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "outputs",
                           "pretrained", "mnist_fm", "sample_euler_3")  # fmt: skip
    try:
        out = run("sample", "--workdir", "pretrained:mnist_fm", "--sampler", "euler:3", "--num", "2")
        assert "wrote outputs/pretrained/mnist_fm/sample_euler_3.png" in out
        assert np.load(default + ".npz")["samples"].shape == (2, 28, 28, 1)
    finally:
        for suffix in (".npz", ".png"):
            if os.path.exists(default + suffix):
                os.remove(default + suffix)
    out = run("sample", "--workdir", "pretrained:nothing", expect=2)
    assert "No pretrained network 'nothing'" in out and "Traceback" not in out


def test_a_pretrained_network_starts_and_teaches_a_run(capsys):
    """train.init_from / teacher.workdir = 'pretrained:mnist_fm': a two-time network (MeanFlow,
    shortcut) starts as the shipped flow model (its new interval embedding listed, its output layer
    zero; the one differing field named, the U-Net's tuple fields equal to their recorded lists not),
    and the teacher's velocity is the shipped model's."""
    from flax import nnx

    from experiments.builders import model_spec, network_spec, teacher_flow_velocity
    from experiments.configs import mnist_shortcut
    from experiments.train import initial_parameters

    cfg = mnist_shortcut.get_config()
    cfg.teacher.workdir = cfg.train.init_from = "pretrained:mnist_fm"
    shipped = dj.load_pretrained("mnist_fm")
    params = initial_parameters(cfg.train.init_from, nnx.split(build_model(network_spec(cfg)))[1],
                                model_spec(cfg))  # fmt: skip
    note = [line for line in capsys.readouterr().out.splitlines() if "differs" in line]
    assert len(note) == 1 and note[0].endswith("in second_time: None → True"), note
    theirs = dict(jax.tree_util.tree_flatten_with_path(nnx.state(shipped.model, nnx.Param))[0])
    mine = jax.tree_util.tree_flatten_with_path(params)[0]
    assert {k for k, _ in mine} > set(theirs)
    for path, value in mine:
        if path in theirs:
            np.testing.assert_array_equal(value, theirs[path])
        elif "linear2" in jax.tree_util.keystr(path):
            assert not np.any(value)
    _, velocity = teacher_flow_velocity(cfg, shipped.process)
    x, t = jax.random.normal(jax.random.key(0), (2, 28, 28, 1)), jnp.array([0.3, 0.8])
    np.testing.assert_array_equal(velocity(x, t), shipped.model(x, t))  # CondOT, velocity prediction


AUTOGUIDED_PAIRS = {  # (weaker model, its step, grid, w)
    "mnist_edm": ("mnist_edm_step500", 500, "edm", 2.5),
    "mnist_fm_autoguide": ("mnist_fm_autoguide_step250", 250, "uniform", 2.5),
}


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")  # fmt: skip
@pytest.mark.parametrize("name", list(AUTOGUIDED_PAIRS))
def test_shipped_model_autoguided_by_its_early_checkpoint_lands_closer_to_real_digits(name):
    """The shipped autoguidance pairs: a run (step 1500) and its own early checkpoint, the weaker model.
    From the same 64 noises (DPM-Solver++ 10 steps), autoguided samples lie closer to their nearest
    MNIST test digit than unguided ones — a paired z-test (measured: EDM, w = 2.5 everywhere, mean L2
    distance 11.89 → 10.46, z = −6.8; the flow with logit-normal times, w = 2.5, 11.39 → 10.46,
    z = −4.1); FD-MNIST in the README."""
    from diffjax.data import load_dataset

    weak, weak_step, grid, w = AUTOGUIDED_PAIRS[name]
    good, bad = dj.load_pretrained(name), dj.load_pretrained(weak)
    assert (good.step, bad.step) == (1500, weak_step) and good.record["process"] == bad.record["process"]
    x, _ = load_dataset("mnist", "test", MNIST)
    real = x.reshape(-1, 784).astype(np.float32)
    noise = good.process.prior_sample(jax.random.key(0), (64, 28, 28, 1))
    nearest = {}
    for scale in (1.0, w):
        model = good.model if scale == 1.0 else dj.autoguidance(good.model, bad.model, scale)
        s = dj.sample("dpm_solver_pp", model, good.process, jax.random.key(1), None, 10, x_init=noise,
                      grid=grid).samples  # fmt: skip
        s = np.clip(np.asarray(s).reshape(64, 784), -1, 1)
        d2 = (s**2).sum(1)[:, None] - 2 * s @ real.T + (real**2).sum(1)[None]
        nearest[scale] = np.sqrt(np.maximum(d2.min(1), 0))
    d = nearest[w] - nearest[1.0]
    z = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert z < -3, (nearest[1.0].mean(), nearest[w].mean(), z)


def test_export_pretrained_ships_a_finished_run_with_its_evaluations_per_noise_seed(tmp_path):
    """`experiments.export_pretrained` writes <name>.npz/.json that load as the run's EMA network (float32:
    equal parameters), with the sampler asked for and, of the results file, this run's newest row per
    (sampler, steps, grid, ..., guidance interval, ..., noise seed): another model's rows, rows without FD
    and older duplicates are left out."""
    from experiments.configs import checkerboard_fm
    from experiments.train import train_and_evaluate

    workdir = tmp_path / "tiny_run"
    cfg = checkerboard_fm.get_config()
    cfg.train.update(num_steps=4, warmup_steps=1, checkpoint_every=4, batch_size=32)
    cfg.sample.num_samples = 8
    train_and_evaluate(cfg, str(workdir))
    row = {"model": "tiny_run", "sampler": "euler", "steps": 3, "nfe": 3, "ema": "decay 0.999"}
    rows = [{**row, "seed": 1, "fd_mnist": 9.0}, {**row, "seed": 2, "fd_mnist": 8.0},
            {**row, "seed": 1, "fd_mnist": 7.0}, {**row, "model": "other", "seed": 3, "fd_mnist": 1.0},
            {**row, "seed": 4, "swd": 0.1},
            {**row, "seed": 5, "fd_mnist": 6.0, "guidance_interval": [0.28, 5.42]},  # guided in an interval
            {**row, "seed": 5, "fd_mnist": 5.0, "guidance_interval": None},  # everywhere: another row
            {**row, "seed": 5, "fd_mnist": 4.0, "grid": "optimized"}]  # fmt: skip  (another grid)
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run("export_pretrained", "--workdir", str(workdir), "--name", "tiny", "--out_dir", str(tmp_path),
              "--sampler", "euler:3", "--results", str(results), "--storage", "float32")  # fmt: skip
    assert "largest relative rounding of a parameter tensor 0.0e+00" in out
    card = dj.pretrained_card(str(tmp_path / "tiny.npz"))
    assert card["sampler"] == {"name": "euler", "num_steps": 3} and card["training"]["steps"] == 4
    assert sorted((e["seed"], e["fd_mnist"]) for e in card["evaluations"]) == [(1, 7.0), (2, 8.0), (5, 4.0),
                                                                                (5, 5.0), (5, 6.0)]
    assert [e.get("guidance_interval") for e in card["evaluations"] if e["fd_mnist"] == 6.0] == [[0.28, 5.42]]
    shipped = dj.load_pretrained(str(tmp_path / "tiny.npz"))
    ran = dj.load_model(str(workdir))
    for name, value in network_parameters(ran.model).items():
        np.testing.assert_array_equal(network_parameters(shipped.model)[name], value)
