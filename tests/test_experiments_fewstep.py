"""Few-step methods through the experiments package: MeanFlow and consistency-model configs train,
checkpoint, load and sample with their own samplers; fine-tuning a one-time run into a two-time
network; MeanFlow distillation and consistency distillation from a teacher run; the config checks
that keep a loss, network, preconditioning and sampler together."""

import os

import jax
import numpy as np
import pytest
from test_experiments import MNIST, run

import diffjax as dj
from experiments.builders import ConfigError, generate, validate_config
from experiments.configs import checkerboard_fm, checkerboard_ict, checkerboard_meanflow
from experiments.train import train_and_evaluate


def tiny(module, num_steps=4, **edits):
    cfg = module.get_config()
    cfg.train.update(num_steps=num_steps, warmup_steps=1, checkpoint_every=num_steps, log_every=num_steps,
                     batch_size=32)  # fmt: skip
    cfg.model.kwargs.update(width=32, depth=1)
    cfg.data.num_examples = 1000
    cfg.sample.update(num_samples=16)
    for path, value in edits.items():
        node, *parents = cfg, *path.split(".")[:-1]
        for part in parents:
            node = node[part]
        node[path.split(".")[-1]] = value
    return cfg


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fm") / "run")
    train_and_evaluate(tiny(checkerboard_fm), workdir)
    return workdir


def test_meanflow_fine_tuned_and_distilled_from_a_flow_run_samples_in_jumps(tmp_path, flow_run, capsys):
    """init_from copies the one-time network and adds only the interval embedding; the MeanFlow
    network then samples with 'flow_map' (1 evaluation per jump) and, on its diagonal, with ODE
    solvers; the command line samples it too."""
    from flax import nnx

    from diffjax.models import build_model
    from experiments.builders import model_spec
    from experiments.train import initial_parameters

    workdir = str(tmp_path / "mf")
    cfg = tiny(checkerboard_meanflow, **{"train.init_from": flow_run, "teacher.workdir": flow_run,
                                         "model.kwargs.time_scale": None})  # the source's time features
    graphdef, params = nnx.split(build_model(model_spec(cfg), 0))
    start = nnx.merge(graphdef, initial_parameters(flow_run, params))  # u(x, t, s) = the source's v(x, t)
    x, t, s = np.ones((3, 2), np.float32), np.array([0.1, 0.5, 0.9]), np.array([0.9, 0.6, 0.95])
    np.testing.assert_allclose(start(x, t, s=s), dj.load_model(flow_run).model(x, t), rtol=1e-6, atol=1e-6)
    summary = train_and_evaluate(cfg, workdir)
    out = capsys.readouterr().out
    assert "new, freshly initialised: ['interval_embed']" in out
    assert "differs from the one of" in out and "second_time: None → True" in out, out  # said, not refused
    assert "→ (" not in out  # a tuple field equal to its recorded list is no difference
    assert summary["nfe"] == 1
    trained = dj.load_model(workdir)
    assert trained.model.config.second_time
    cfg.sample.update(sampler="heun", num_steps=3)  # an ODE solver on the diagonal u(x, t, t) = v(x, t)
    res = generate(cfg, trained.model, trained.process, jax.random.key(0), 8, (2,))
    assert res.nfe == 6 and np.all(np.isfinite(np.asarray(res.samples)))  # full Heun steps (a velocity)
    out = run("sample", "--workdir", workdir, "--sampler", "flow_map", "--steps", "2", "--num", "8")
    assert "(2 evaluations per sample)" in out
    samples = np.load(os.path.join(workdir, "sample_flow_map_2.npz"))["samples"]
    assert samples.shape == (8, 2) and np.all(np.isfinite(samples))
    # 'flow_map_renoise': one jump = the deterministic jump; two jump to the data and re-noise between
    jumps = {}
    for sampler, steps in [(name, n) for n in (1, 2) for name in ("flow_map", "flow_map_renoise")]:
        cfg.sample.update(sampler=sampler, num_steps=steps)
        jumps[sampler, steps] = np.asarray(generate(cfg, trained.model, trained.process, jax.random.key(0), 8,
                                                    (2,)).samples)  # fmt: skip
    np.testing.assert_array_equal(jumps["flow_map_renoise", 1], jumps["flow_map", 1])
    assert np.all(np.isfinite(jumps["flow_map_renoise", 2]))
    assert np.max(np.abs(jumps["flow_map_renoise", 2] - jumps["flow_map", 2])) > 1e-3


def test_consistency_training_and_distillation_runs_load_as_consistency_models(tmp_path, flow_run):
    """iCT from scratch, CD and continuous-time CD (sCM) from the flow run: load_model returns the
    consistency model f(x, t) (boundary f(x, t_data) = x), sampled with multistep consistency
    sampling."""
    cd = {"loss.name": "consistency_distillation", "loss.options": {"num_steps": 8, "solver": "heun"},
          "teacher.workdir": flow_run}
    scd = {"loss.name": "consistency_continuous", "loss.options": {"warmup_steps": 2},
           "teacher.workdir": flow_run, "model.noise_input": "trig", "loss.learned_weighting": True}
    for name, edits in (("ict", {}), ("cd", cd), ("scd", scd)):
        workdir = str(tmp_path / name)
        summary = train_and_evaluate(tiny(checkerboard_ict, **edits), workdir)
        assert summary["nfe"] == 1
        model = dj.load_model(workdir).model
        from diffjax.consistency import ConsistencyModel

        assert isinstance(model, ConsistencyModel)
        assert model.noise_input == ("trig" if name == "scd" else "log_sigma")  # kept in the run record
        x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
        assert np.array_equal(np.asarray(model(x, model.t_min)), x)
    out = run("sample", "--workdir", workdir, "--sampler", "consistency", "--steps", "3", "--num", "8")
    assert "(3 evaluations per sample)" in out


def test_scd_fine_tunes_the_teachers_own_network_read_as_its_one_step_jump(tmp_path, flow_run):
    """sCM's recipe through the config: model.preconditioning='ddim_consistency' reads the flow run's
    velocity network (train.init_from, also the teacher) as f = x̂0, so the run starts as the teacher's
    one-step sampler (with sCM's learned weighting the flow's network goes inside `WithUncertainty`);
    it loads as that consistency model and samples in jumps. A trig noise input (a `ConsistencyModel`
    input) is refused for it before any work."""
    from diffjax.consistency import DDIMConsistencyModel

    edits = {"model.preconditioning": "ddim_consistency", "loss.name": "consistency_continuous",
             "loss.options": {"warmup_steps": 2}, "teacher.workdir": flow_run, "train.init_from": flow_run,
             "loss.learned_weighting": True, "sample.sampler": "consistency",
             "sample.num_steps": 1}  # fmt: skip
    workdir = str(tmp_path / "scd")
    summary = train_and_evaluate(tiny(checkerboard_fm, **edits), workdir)
    assert summary["nfe"] == 1 and np.isfinite(summary["loss"])
    model = dj.load_model(workdir).model
    assert isinstance(model, DDIMConsistencyModel) and model.prediction == "velocity"
    from flax import nnx

    source = jax.tree_util.tree_leaves(nnx.state(dj.load_model(flow_run).model, nnx.Param))
    assert len(jax.tree_util.tree_leaves(nnx.state(model.network.network, nnx.Param))) == len(source)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    assert np.array_equal(np.asarray(model(x, model.t_min)), x)
    with pytest.raises(ConfigError, match="noise_input"):
        validate_config(tiny(checkerboard_fm, **edits, **{"model.noise_input": "trig"}))
    out = run("sample", "--workdir", workdir, "--sampler", "consistency", "--steps", "2", "--num", "8")
    assert "(2 evaluations per sample)" in out


def test_progressive_distillation_round_from_a_flow_run(tmp_path, flow_run):
    """One round of progressive distillation through the config: the student starts as the teacher
    (init_from), learns two teacher DDIM steps in one, and samples with its halved DDIM grid."""
    edits = {"loss.name": "progressive_distillation", "loss.options": {"num_student_steps": 2},
             "teacher.workdir": flow_run, "train.init_from": flow_run, "sample.sampler": "ddim",
             "sample.num_steps": 2}  # fmt: skip
    summary = train_and_evaluate(tiny(checkerboard_fm, **edits), str(tmp_path / "pd"))
    assert summary["nfe"] == 2 and np.isfinite(summary["loss"])


def test_shortcut_model_trains_from_scratch_and_from_a_teacher_and_samples_in_jumps(tmp_path, flow_run):
    for name, edits in (("scratch", {}), ("teacher", {"teacher.workdir": flow_run})):
        cfg = tiny(checkerboard_meanflow, **{"loss.name": "shortcut", "loss.options": {"max_steps": 8},
                                             "sample.num_steps": 2, **edits})  # fmt: skip
        summary = train_and_evaluate(cfg, str(tmp_path / name))
        assert summary["nfe"] == 2 and np.isfinite(summary["loss"])


def test_reflow_and_pair_distillation_train_on_couplings_written_by_sample(tmp_path, flow_run):
    """`sample --couplings` writes (noise, sample) pairs: the noise is the prior draw of the seed, the
    samples those of the .npz, and they do not depend on --batch; --waypoints 1 keeps the solve's
    state at t = ½ (the state after 2 of the 4 steps); a reflow run (started from the teacher) and a
    trajectory distillation of it on the whole jump and both halves (num_steps (1, 2); a two-time
    network, fine-tuned from the reflow run, on the waypoints) train on them; couplings of another
    process are refused before training."""
    from diffjax.reflow import load_couplings

    pairs_file = str(tmp_path / "pairs.npz")
    run("sample", "--workdir", flow_run, "--sampler", "heun", "--steps", "4", "--num", "40", "--batch", "16",
        "--couplings", pairs_file, "--waypoints", "1", "--out", str(tmp_path / "s16"))  # fmt: skip
    run("sample", "--workdir", flow_run, "--sampler", "heun", "--steps", "4", "--num", "40", "--batch", "40",
        "--out", str(tmp_path / "s40"))  # fmt: skip
    pairs, trained = load_couplings(pairs_file), dj.load_model(flow_run)
    k_prior, _ = jax.random.split(jax.random.key(0))
    np.testing.assert_array_equal(pairs.noise, trained.process.prior_sample(k_prior, (40, 2)))
    np.testing.assert_array_equal(pairs.data, np.load(tmp_path / "s16.npz")["samples"])
    np.testing.assert_allclose(pairs.data, np.load(tmp_path / "s40.npz")["samples"], rtol=1e-5, atol=1e-5)
    assert pairs.header["sampler"] == "heun" and pairs.header["nfe"] == 8  # 4 full Heun steps (velocity)
    assert pairs.header["process"] == trained.record["process"]
    half = dj.sample("heun", trained.model, trained.process, jax.random.key(1), num_steps=4,
                     x_init=pairs.noise, save_trajectory=True).trajectory[2]  # fmt: skip
    assert pairs.waypoint_times == (0.5,)
    np.testing.assert_allclose(pairs.waypoints[:, 0], half, rtol=1e-5, atol=1e-5)
    bad = str(tmp_path / "bad.npz")  # 2 waypoints need steps divisible by 3: refused before sampling
    out = run("sample", "--workdir", flow_run, "--sampler", "heun", "--steps", "4", "--num", "8",
              "--couplings", bad, "--waypoints", "2", expect=2)  # fmt: skip
    assert "--waypoints 2" in out and "multiple of 3" in out and "Traceback" not in out
    assert not os.path.exists(bad)

    reflow = {"loss.name": "reflow", "data.couplings": pairs_file, "train.init_from": flow_run,
              "sample.sampler": "euler", "sample.num_steps": 1}  # fmt: skip
    summary = train_and_evaluate(tiny(checkerboard_fm, **reflow), str(tmp_path / "rf"))
    assert summary["nfe"] == 1 and np.isfinite(summary["loss"])
    distil = {"loss.name": "pair_distillation", "data.couplings": pairs_file,
              "loss.options": {"num_steps": (1, 2)}, "model.kwargs.second_time": True,
              "train.init_from": str(tmp_path / "rf"), "sample.sampler": "flow_map",
              "sample.num_steps": 2}  # fmt: skip
    summary = train_and_evaluate(tiny(checkerboard_meanflow, **distil), str(tmp_path / "pd"))
    assert summary["nfe"] == 2 and np.isfinite(summary["loss"])
    with pytest.raises(ConfigError, match="made on the process"):
        train_and_evaluate(tiny(checkerboard_fm, **reflow, **{"process.name": "vp"}), str(tmp_path / "vp"))
    with pytest.raises(ConfigError, match="is not a file"):
        train_and_evaluate(tiny(checkerboard_fm, **dict(reflow, **{"data.couplings": "none.npz"})),
                           str(tmp_path / "missing"))  # fmt: skip


def test_ict_curriculum_grows_the_levels_inside_the_compiled_step():
    """loss.options.curriculum = [s0, s1]: the built loss takes the train step and, compiled once, equals
    `consistency_training_loss` with iCT's eq. 11 level count N(step) = `ict_num_levels(step, K, s0, s1)`
    given concretely (no padding), at steps of every stage (float32 rounding)."""
    import jax.numpy as jnp
    from flax import nnx

    from diffjax.consistency import consistency_training_loss, ict_num_levels
    from diffjax.models import build_model
    from diffjax.training.step import takes_step
    from experiments.builders import build_loss, network_spec, process_spec, wrap_network

    cfg = tiny(checkerboard_ict, num_steps=40, **{"loss.options": {"curriculum": [2, 16]}})
    validate_config(cfg)
    process = dj.build_process(process_spec(cfg))
    loss = build_loss(cfg, process)
    assert takes_step(loss)
    graphdef, params = nnx.split(build_model(network_spec(cfg), 0))
    wrap = wrap_network(cfg, process)
    x0 = jax.random.normal(jax.random.key(1), (64, 2))
    key = jax.random.key(2)
    traced = jax.jit(lambda p, step: loss(wrap(nnx.merge(graphdef, p)), x0, key, step=step))
    for step in (0, 9, 10, 25, 39, 80):
        levels = ict_num_levels(step, 40, 2, 16)
        direct = consistency_training_loss(wrap(nnx.merge(graphdef, params)), x0, key, process=process,
                                           num_levels=levels)  # fmt: skip
        assert np.isclose(float(traced(params, jnp.int32(step))), float(direct), rtol=1e-5), (step, levels)
    assert traced._cache_size() == 1
    assert [ict_num_levels(k, 40, 2, 16) for k in (0, 10, 20, 30, 39)] == [3, 5, 9, 17, 17]


@pytest.mark.parametrize("edit, match", [
    (dict(module=checkerboard_meanflow, **{"model.kwargs.second_time": False}), "second_time=True"),
    (dict(module=checkerboard_fm, **{"model.kwargs.second_time": True}), "MeanFlow network"),
    (dict(module=checkerboard_ict, **{"model.preconditioning": "none"}), "go together"),
    (dict(module=checkerboard_ict, **{"sample.sampler": "heun"}), "sample.sampler='consistency'"),
    (dict(module=checkerboard_ict, **{"loss.name": "consistency_distillation"}), "teacher.workdir"),
    (dict(module=checkerboard_ict, **{"loss.learned_weighting": True}), "log_uncertainty"),
    (dict(module=checkerboard_ict, **{"model.noise_input": "tau"}), "noise_input"),
    (dict(module=checkerboard_fm, **{"model.noise_input": "trig"}), "consistency"),
    (dict(module=checkerboard_fm, **{"sample.sampler": "flow_map"}), "second_time=True"),
    (dict(module=checkerboard_fm, **{"loss.options": {"ratio": 0.5}}), "options of a few-step loss"),
    (dict(module=checkerboard_ict, **{"loss.options": {"curriculum": True, "num_levels": 41}}), "fixed"),
    (dict(module=checkerboard_ict, **{"loss.options": {"curriculum": [5, 2]}}), "1 <= s0 <= s1"),
    (dict(module=checkerboard_ict, **{"loss.options": {"curriculum": "yes"}}), "1 <= s0 <= s1"),
    (dict(module=checkerboard_fm, **{"loss.name": "progressive_distillation", "teacher.workdir": "x"}),
     "num_student_steps"),
    (dict(module=checkerboard_fm, **{"loss.name": "reflow"}), "trains on data.couplings"),
    (dict(module=checkerboard_fm, **{"loss.name": "shortcut"}), "second_time=True"),
    (dict(module=checkerboard_fm, **{"data.couplings": "pairs.npz"}), "trains on data.couplings"),
    (dict(module=checkerboard_fm, **{"loss.name": "pair_distillation", "data.couplings": "pairs.npz"}),
     "second_time=True"),
])  # fmt: skip
def test_few_step_configs_are_checked_before_any_work(edit, match):
    module = edit.pop("module")
    cfg = tiny(module, **edit)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_few_step_configs_validate():
    from experiments.configs import checkerboard_scm

    for module in (checkerboard_meanflow, checkerboard_ict, checkerboard_scm):
        validate_config(module.get_config())
    from experiments.configs import (
        mnist_consistency,
        mnist_meanflow,
        mnist_pair_distillation,
        mnist_progressive,
        mnist_reflow,
        mnist_shortcut,
        mnist_trajectory_distillation,
    )

    for variant in mnist_meanflow.VARIANTS:
        validate_config(mnist_meanflow.get_config(variant))
    smooth = mnist_meanflow.get_config("smooth").model.kwargs
    assert smooth["time_scale"] == 1.0 and smooth["second_time"]
    with pytest.raises(ValueError, match="variant must be one of"):
        mnist_meanflow.get_config("fast")
    validate_config(mnist_progressive.get_config())
    validate_config(mnist_reflow.get_config())
    validate_config(mnist_shortcut.get_config())
    validate_config(mnist_pair_distillation.get_config())
    validate_config(mnist_trajectory_distillation.get_config())
    for variant in ("cd", "ict", "scd", "sct"):
        validate_config(mnist_consistency.get_config(variant))


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")  # fmt: skip
def test_class_conditional_meanflow_with_guidance_in_training_trains_and_samples_in_one_jump(tmp_path):
    """`mnist_meanflow.py:cfg` (tiny): the train step hands the loss the network under ∅ (without it
    `meanflow_loss` refuses guidance_scale != 1, so the option cannot be silently dropped), the run trains
    and samples its labelled preview in one evaluation (w = 1 at sampling: the guidance is in the network).
    The formula is checked against the exact guided flow map in test_meanflow, the ∅ binding in
    test_training."""
    from experiments.configs import mnist_meanflow

    cfg = mnist_meanflow.get_config("cfg")
    cfg.data.update(data_dir=MNIST, num_examples=256)
    cfg.train.update(num_steps=2, warmup_steps=1, batch_size=16, checkpoint_every=2)
    cfg.model.kwargs.update(channels=8, num_res_blocks=1)
    cfg.sample.update(num_samples=4)
    summary = train_and_evaluate(cfg, str(tmp_path / "mf_cfg"))
    assert summary["nfe"] == 1 and np.isfinite(summary["loss"]), summary
    assert dj.load_model(str(tmp_path / "mf_cfg")).record["num_classes"] == 10
