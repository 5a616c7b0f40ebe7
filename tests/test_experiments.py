"""The experiments package end to end: `train_and_evaluate` in-process (train, resume, the run
contract), and the command lines `python -m experiments.{train,sample,evaluate,evaluate_2d}` as users
run them."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from diffjax.training import RunMismatchError
from experiments.builders import ConfigError, parse_sampler_spec, validate_config
from experiments.configs import checkerboard_fm, mnist_cfg, mnist_fm
from experiments.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")


def run(module, *args, timeout=600, expect=0):
    proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def small_checkerboard(num_steps):
    cfg = checkerboard_fm.get_config()
    cfg.train.num_steps, cfg.train.warmup_steps = num_steps, 10
    cfg.train.checkpoint_every, cfg.train.log_every = 400, 50
    cfg.model.kwargs.width = 128
    cfg.sample.num_samples, cfg.sample.num_steps = 500, 8
    return cfg


def test_checkerboard_trains_resumes_and_samples(tmp_path):
    workdir = str(tmp_path / "fm")
    summary = train_and_evaluate(small_checkerboard(800), workdir)
    assert summary["on_squares"] > 0.6  # N(0, I) noise gives ~40%; the data give 100%
    # rerunning with more steps resumes from the last checkpoint (step 800), not from scratch
    summary = train_and_evaluate(small_checkerboard(900), workdir)
    assert summary["start_step"] == 800 and summary["step"] == 900
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == sorted(steps) and steps[-1] == 900
    assert os.path.exists(os.path.join(workdir, "samples.png"))
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["train"]["num_steps"] == 800  # the config of the run that created the work directory

    # a changed network is refused by field, and the checkpoints stay usable
    changed = small_checkerboard(1000)
    changed.model.kwargs.width = 64
    with pytest.raises(RunMismatchError, match=r"model\.width: 128 → 64"):
        train_and_evaluate(changed, workdir)
    out = run("sample", "--workdir", workdir, "--sampler", "dpm_solver_pp", "--steps", "10", "--num", "256")
    assert "step 900" in out
    samples = np.load(os.path.join(workdir, "sample_dpm_solver_pp_10.npz"))["samples"]
    assert samples.shape == (256, 2) and np.all(np.isfinite(samples))
    out = run("sample", "--workdir", workdir, "--labels", "1,2", expect=2)
    assert "not class-conditional" in out and "Traceback" not in out

    # evaluation against the data's generator: distances with floors, exact NLL vs −log p_data = log 6
    results = str(tmp_path / "results_2d.json")
    run("evaluate_2d", "--workdirs", workdir, "--samplers", "euler:8,heun:4", "--num", "500",
        "--nll_examples", "64", "--out", results)  # fmt: skip
    rows = [json.loads(line) for line in open(results)]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("euler", 8), ("heun", 8)]  # velocity: full Heun
    for r in rows:
        assert r["train_steps"] == 900 and r["on_support"] > 0.6 and 0 < r["sliced_w2_floor"] < 0.2
        assert r["data_nll_nats"] == pytest.approx(np.log(6.0), rel=1e-6)
        assert r["kl_nats"] > -3 * r["kl_se"]  # Gibbs: E[log p_data − log p_model] = KL ≥ 0


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.loss.update(weigthing="eps"), r"unknown config keys \['loss.weigthing'\]"),
    (lambda c: c.sample.update(sampler="dpm"), "Unknown sampler 'dpm'"),
    (lambda c: c.sample.update(sampler="dpm_solver_pp", options={"order": 5}), "order must be 1, 2 or 3"),
    (lambda c: c.sample.update(options={"order": 2}), "sampler 'heun': invalid options"),
    (lambda c: c.train.update(sample_every=-1), "sample_every must be an integer >= 0"),
    (lambda c: c.loss.update(weighting="snr"), "loss.weighting 'snr'"),
    (lambda c: c.model.kwargs.update(widht=3), "invalid config fields|unexpected keyword"),
    (lambda c: c.train.update(label_dropout=0.1), "needs a class-conditional model"),
    (lambda c: c.process.update(name="learned"), "process.name='learned' .* set loss.name='vdm'"),
    (lambda c: c.loss.update(name="vdm", weighting="eps"), "loss.name='vdm' is the ELBO itself"),
    (lambda c: (c.process.update(name="learned", kwargs={"gamma_min": 3.0, "gamma_max": 1.0}),
                c.loss.update(name="vdm")), "need gamma_min < gamma_max"),
])  # fmt: skip
def test_configs_are_validated_before_any_work(edit, match):
    cfg = checkerboard_fm.get_config()
    cfg.unlock()
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_every_config_validates_and_the_cli_lists_its_use():
    names = ("base", "checkerboard_fm", "mnist_ddpm", "mnist_fm", "mnist_cfg", "mnist_vp", "mnist_edm",
             "cifar10", "mnist_dit", "mnist_latent_dit", "mnist_vdm", "mnist_vdm:vp", "mnist_fm:autoguide")
    for name in names:
        name, *variant = name.split(":")
        module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
        validate_config(module.get_config(*variant))
    # the autoguided flow differs from mnist_fm in its time law and what the run keeps, nothing else
    plain, autoguide = mnist_fm.get_config().to_dict(), mnist_fm.get_config("autoguide").to_dict()
    diff = {(section, key) for section, fields in autoguide.items() if isinstance(fields, dict)
            for key in fields if fields[key] != plain[section].get(key)}  # fmt: skip
    assert diff == {("loss", "time"), ("train", "posthoc_ema"), ("train", "snapshot_every"),
                    ("train", "checkpoint_every"), ("train", "keep")}, diff
    with pytest.raises(ValueError, match="variant must be"):
        mnist_fm.get_config("logit")
    assert "--workdir" in run("train", "--help", expect=1)  # absl's help exits with status 1


def test_every_ablation_row_validates_and_changes_only_its_ingredient():
    """`experiments.ablation`: every row is a valid config (two rows once were not: `ConfigDict.update`
    merged their new keyword dicts into EDM's), all rows share the budget (steps, batch, optimiser,
    EMA, seed) and the U-Net but its time-feature scale, and each EDM variant differs from the EDM
    row in its named ingredient only."""
    from absl import flags

    from experiments import ablation

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["ablation"])
    rows = {name: ablation.row_config(name) for name in ablation.ROWS}
    for cfg in rows.values():
        validate_config(cfg)

    def budget(c):
        unet = {k: v for k, v in c.model.kwargs.to_dict().items() if k != "time_scale"}
        return c.seed, c.train.num_steps, c.train.batch_size, c.train.learning_rate, c.train.ema_decay, unet

    assert len({json.dumps(budget(c), sort_keys=True, default=str) for c in rows.values()}) == 1
    edm = rows["edm"].to_dict()
    changed = {"no_precond": {("model", "preconditioning"), ("model", "kwargs")},
               "uniform_noise": {("loss", "time"), ("loss", "time_kwargs"), ("loss", "t_eps")},
               "min_snr": {("loss", "weighting"), ("loss", "weighting_kwargs")},
               "learned_weighting": {("loss", "learned_weighting")}}  # fmt: skip
    for name, keys in changed.items():
        row = rows[name].to_dict()
        diff = {(section, key) for section, fields in row.items() if isinstance(fields, dict)
                for key in fields if fields[key] != edm[section][key]}  # fmt: skip
        assert diff == keys, (name, diff)
    assert dict(rows["min_snr"].loss.weighting_kwargs) == {"gamma": 5.0}
    assert rows["uniform_noise"].loss.time == "uniform" and not rows["uniform_noise"].loss.time_kwargs
    assert (rows["fm"].loss.time, rows["fm_logit_normal"].loss.time) == ("uniform", "logit_normal")


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")
def test_mnist_class_conditional_tiny_run_with_guided_sampling(tmp_path):
    workdir = str(tmp_path / "mnist")
    cfg = mnist_cfg.get_config()
    cfg.data.data_dir, cfg.data.num_examples = MNIST, 256
    cfg.train.update(num_steps=3, warmup_steps=1, batch_size=16, checkpoint_every=3, sample_every=0)
    cfg.model.kwargs.update(channels=8, num_res_blocks=1)
    cfg.sample.update(num_steps=2, num_samples=10)
    train_and_evaluate(cfg, workdir)
    out = run("sample", "--workdir", workdir, "--sampler", "euler", "--steps", "2",
              "--guidance", "3.0", "--labels", "0,1,2,3,4,5,6,7,8,9", "--num", "10")
    assert "step 3" in out
    data = np.load(os.path.join(workdir, "sample_euler_2.npz"))
    assert data["samples"].shape == (10, 28, 28, 1)
    assert list(data["labels"]) == list(range(10))
    assert os.path.getsize(os.path.join(workdir, "sample_euler_2.png")) > 0
    out = run("sample", "--workdir", workdir, "--labels", "3,10", expect=2)
    assert "outside the classes 0..9" in out and "Traceback" not in out
    results = str(tmp_path / "results.json")
    out = run("evaluate", "--workdirs", workdir, "--samplers", "euler:2,euler:2:0,deis:2:order=1", "--num", "20",  # noqa: E501
              "--bpd_examples", "2", "--bpd_solver", "heun", "--bpd_steps", "2", "--data_dir", MNIST,
              "--classifier_steps", "20",
              "--cache_dir", str(tmp_path / "cache"), "--out", results)  # fmt: skip
    rows = [json.loads(line) for line in open(results)]
    scales = [("euler", 2.0), ("euler", 0.0), ("deis", 0.0)]
    assert [(r["sampler"], r["guidance_scale"]) for r in rows] == scales
    assert [r.get("options") for r in rows] == [None, None, {"order": 1}]  # the spec's solver options
    for r in rows:
        assert r["train_steps"] == 3 and np.isfinite(r["fd_mnist"]) and r["fd_mnist"] > 0
        assert 0 <= r["conditional_accuracy"] <= 1 and sum(r["class_histogram"]) == pytest.approx(1, abs=0.01)
        assert 0 < r["bits_per_dim"] < 20
        assert r["elbo_bits_per_dim"] > 0 and r["ema"] == "decay 0.995"  # the ELBO column and the EMA used
    assert "| mnist | decay 0.995 | euler |" in out
    assert 0 <= rows[0]["class_tv"] <= 1
    table = run("evaluate", "--table", results)
    assert table.count("| mnist | decay 0.995 | euler |") == 2  # one row per guidance scale
    assert "| mnist | decay 0.995 | deis (order=1) |" in table


def test_command_line_adds_keys_to_free_form_dicts_and_names_a_misspelled_field(tmp_path):
    """`--config.model.kwargs.dtype=bfloat16`: a key the config's network fields do not list is added
    (ml_collections alone refuses it), typed like a sampler option; a key the config has stays
    ml_collections' override; a misspelled field is one line naming it, not a traceback."""
    from experiments.builders import _option_value, _split_free_form_additions

    config = "experiments/configs/mnist_fm.py"
    new, old = "--config.model.kwargs.dtype=bfloat16", "--config.model.kwargs.channels=8"
    argv = ["train", f"--config={config}", new, old, "--config.loss.options.mean=-0.4",
            "--config.train.num_steps=3", "--config.model.kwargz.dtype=x"]  # fmt: skip
    kept, added = _split_free_form_additions(argv)
    assert added == [("model.kwargs", "dtype", "bfloat16"), ("loss.options", "mean", "-0.4")]
    assert kept == [argv[0], argv[1], argv[3], argv[5], argv[6]]
    assert _split_free_form_additions(["train", "--config", config, argv[2]])[1] == added[:1]
    assert _split_free_form_additions(["train", argv[2]]) == (["train", argv[2]], [])  # no --config: absl's
    missing = ["train", "--config=experiments/configs/missing.py", new]  # absl reports the file
    assert _split_free_form_additions(missing) == (missing, [])
    texts = ("bfloat16", "-0.4", "8", "(1, 2)", "true")
    assert [_option_value(t) for t in texts] == ["bfloat16", -0.4, 8, (1, 2), True]
    workdir = str(tmp_path / "w")
    out = run("train", "--config", config, "--workdir", workdir, "--config.model.kwargs.dtyp=x", expect=2)
    assert "unexpected keyword argument 'dtyp'" in out  # the added key reached the network's config
    for word, message in [("--config.model.kwargz.dtype=x", 'model.kwargz.dtype (did you mean "kwargs"'),
                          ("--config.train.num_stepz=3", 'train.num_stepz (did you mean "num_steps"')]:
        out = run("train", "--config", config, "--workdir", workdir, word, expect=2)
        assert f"unknown config field {message}" in out and "Traceback" not in out
    assert not os.path.exists(workdir)


def test_a_sampler_spec_names_steps_guidance_and_the_solvers_options():
    """name[:steps[:w]][:key=value...]: values typed (int, float, bool, string), checked by building the
    solver; the options update the config's own sampler's options and replace another's."""
    spec = parse_sampler_spec("deis:10:order=3:interpolate_in=log_snr")
    assert spec == ("deis", 10, None, {"order": 3, "interpolate_in": "log_snr"})
    assert parse_sampler_spec("dpm_solver_pp:20:4:order=2") == ("dpm_solver_pp", 20, 4.0, {"order": 2})
    assert parse_sampler_spec("heun") == ("heun", None, None, {})
    cfg = mnist_cfg.get_config()
    cfg.sample.update(sampler="heun", options={"stale": 1})
    parse_sampler_spec("dpm_solver_pp:10:order=3").apply(cfg)  # another sampler: replaced
    assert (cfg.sample.sampler, cfg.sample.num_steps) == ("dpm_solver_pp", 10)
    assert dict(cfg.sample.options) == {"order": 3}
    w = cfg.sample.guidance_scale
    parse_sampler_spec("dpm_solver_pp:12:lower_order_final=false").apply(cfg)  # the same one: updated
    assert dict(cfg.sample.options) == {"order": 3, "lower_order_final": False}
    assert (cfg.sample.num_steps, cfg.sample.guidance_scale) == (12, w)
    validate_config(cfg)
    for bad, match in [("deis:order=3:10", "is not name"), ("deis:10:=3", "is not name"),
                       ("deis:10:1:2", "is not name"), ("deis:10:order=7", "order must be"),
                       ("deis:10:bogus=1", "bogus"), ("deis:10:order=3:order=2", "twice"),
                       ("consistency:2:order=1", "takes no options")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_sampler_spec(bad)


def tiny_checkerboard(num_steps, **edits):
    cfg = small_checkerboard(num_steps)
    cfg.train.update(warmup_steps=2, checkpoint_every=num_steps, log_every=num_steps, batch_size=64)
    cfg.model.kwargs.update(width=32, depth=1)
    cfg.sample.update(num_samples=16, num_steps=2)
    for path, value in edits.items():
        *parents, key = path.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[key] = value
    return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 20-step checkerboard run, trained once and copied by the tests that resume or reuse it."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    train_and_evaluate(tiny_checkerboard(20), workdir)
    return workdir


@pytest.mark.parametrize("edit, outcome", [
    ({"model.kwargs.width": 48}, r"model\.width: 32 → 48"),
    ({"model.prediction": "x0"}, r"model\.prediction: 'velocity' → 'x0'"),
    ({"process.name": "cosine_path"}, r"process\.name: 'condot' → 'cosine_path'"),
    ({"train.batch_size": 32}, r"train\.batch_size: 64 → 32"),
    ({"seed": 3}, r"seed: 0 → 3"),
    ({"train.posthoc_ema": (0.05, 0.1)}, r"posthoc_ema: None → \[0.05, 0.1\]"),
])  # fmt: skip
def test_resume_contract(tmp_path, capsys, finished_run, edit, outcome):
    """Resuming with a changed network, prediction or process is refused by field and leaves the
    checkpoints as they were; a changed batch size or seed is accepted and logged. In every case the
    checkpoints stay loadable (`dj.load_model`, as experiments.sample uses)."""
    import diffjax as dj

    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    changed = tiny_checkerboard(30, **edit)
    capsys.readouterr()
    if any(field in next(iter(edit)) for field in ("model", "process", "posthoc")):
        with pytest.raises(RunMismatchError, match=outcome):
            train_and_evaluate(changed, workdir)
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # untouched
        assert dj.load_model(workdir).step == 20
    else:
        summary = train_and_evaluate(changed, workdir)
        out = capsys.readouterr().out
        assert "resuming at step 20 with changed settings" in out and re.search(outcome, out), out
        assert summary["start_step"] == 20 and summary["step"] == 30
        assert dj.load_model(workdir).step == 30
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 20


def test_fine_tuning_starts_from_another_runs_parameters_where_shapes_fit(tmp_path, capsys, finished_run):
    """The remedy the resume contract offers: a new work directory started from a finished run's EMA
    parameters (here with another prediction type); a network whose shapes differ is refused by name."""
    import diffjax as dj

    source = finished_run
    tuned = tiny_checkerboard(5, **{"model.prediction": "x0", "train.init_from": source})
    train_and_evaluate(tuned, str(tmp_path / "tuned"))
    assert f"starting from the EMA parameters of {source}" in capsys.readouterr().out
    assert dj.load_model(str(tmp_path / "tuned")).model.prediction == "x0"
    wider = tiny_checkerboard(5, **{"model.kwargs.width": 48, "train.init_from": source})
    with pytest.raises(ConfigError, match=r"(?s)do not fit this one:\n.*\(2, 32\) → \(2, 48\)"):
        train_and_evaluate(wider, str(tmp_path / "wider"))


def test_edm_recipe_with_post_hoc_ema_trains_loads_and_reconstructs(tmp_path):
    """The EDM pieces through the experiment: a preconditioned x0-network, log-normal noise levels, EDM's
    weighting with the learned uncertainty on top, two tracked power-function EMAs with snapshots;
    `load_model` returns the preconditioned denoiser, and the post-hoc EMA of a tracked width at the
    last snapshot is that EMA exactly."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import diffjax as dj
    from diffjax.training.posthoc_ema import SnapshotStore

    workdir = str(tmp_path / "edm")
    cfg = tiny_checkerboard(20, **{"model.prediction": "x0", "model.preconditioning": "edm",
                                   "model.sigma_data": 0.6, "process.name": "ve", "loss.name": "dsm",
                                   "loss.weighting": "edm", "loss.weighting_kwargs": {"sigma_data": 0.6},
                                   "loss.time": "lognormal", "loss.t_eps": 0.0,
                                   "loss.learned_weighting": True, "train.posthoc_ema": (0.05, 0.1),
                                   "train.snapshot_every": 5, "sample.grid": "edm"})  # fmt: skip
    summary = train_and_evaluate(cfg, workdir)
    assert np.isfinite(summary["loss"])
    snapshots = os.path.join(workdir, "ema_snapshots")
    assert sorted(int(s) for s in os.listdir(snapshots) if s.isdigit()) == [5, 10, 15, 20]
    trained = dj.load_model(workdir)
    assert isinstance(trained.model, dj.Preconditioned) and trained.model.sigma_data == 0.6
    uncertainty = trained.model.network.uncertainty  # EDM2's learned weighting, trained with the network
    assert float(jnp.abs(uncertainty.linear.kernel.value).max()) > 0  # moved from its zero initialisation
    tracked = dj.load_model(workdir, sigma_rel=0.1)
    assert tracked.residual < 1e-6 and tracked.step == 20
    assert 0 < dj.load_model(workdir, sigma_rel=0.07).residual < 0.1
    params = nnx.state(tracked.model.network, nnx.Param)
    store = SnapshotStore(snapshots)
    snapshot = store.load(20, (params, params))[1]
    store.close()
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(snapshot), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    out = dj.sample("heun", trained.model, trained.process, jax.random.key(0), (8, 2), 4, grid="edm")
    assert out.samples.shape == (8, 2) and bool(jnp.all(jnp.isfinite(out.samples)))


def test_train_help_lists_every_config_field_and_sampler():
    from experiments.configs import base

    out = run("train", "--help", expect=1)  # absl exits with status 1 after --help
    for section, fields in base.get_config().items():
        for key in getattr(fields, "keys", lambda: [])():
            assert f"  {section}.{key} = " in out, f"{section}.{key}"
    assert "  train.batch_size = 512" in out and "dpm_solver_pp, unipc" in out and "flow_map" in out


def test_an_earlier_checkpoint_loads_and_guides_its_run(tmp_path):
    """`load_model(step=)` / 'WORKDIR@STEP' restore a kept earlier checkpoint (a missing step is refused
    with the steps kept); autoguidance by it (`generate(..., bad_model=)`) is D_bad + w·(D − D_bad): one
    Euler step on CondOT matches the hand-written update, w = 1 gives the unguided samples."""
    import jax
    import jax.numpy as jnp

    import diffjax as dj
    from experiments.builders import check_guide, generate, load_run, source_record
    from experiments.tables import markdown_table

    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_checkerboard(10, **{"train.checkpoint_every": 5, "train.keep": 3}), workdir)
    latest, early = dj.load_model(workdir), dj.load_model(workdir, step=5)
    assert (latest.step, early.step) == (10, 5)
    cfg, same = load_run(workdir + "@10")
    leaves = lambda m: jax.tree_util.tree_leaves(nnx_params(m.model))  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(latest), leaves(same), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(latest), leaves(early), strict=True))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7; it keeps steps \[5, 10\]"):
        dj.load_model(workdir, step=7)
    with pytest.raises(ConfigError, match="no checkpoint of step 7"):
        source_record(workdir + "@7")

    x1 = latest.process.prior_sample(jax.random.key(0), (64, 2))
    cfg.sample.update(sampler="euler", num_steps=1, guidance_scale=2.5)
    guided = generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1,
                      bad_model=early.model).samples  # fmt: skip
    t = jnp.full((64,), latest.process.t_noise)
    v_good, v_bad = latest.model(x1, t), early.model(x1, t)
    dt = latest.process.t_data - latest.process.t_noise
    by_hand = x1 + dt * (v_bad + 2.5 * (v_good - v_bad))
    np.testing.assert_allclose(guided, by_hand, atol=1e-5)
    assert float(jnp.abs(guided - (x1 + dt * v_good)).max()) > 1e-3  # the guidance did something
    cfg.sample.update(num_steps=4, guidance_scale=1.0)
    plain = generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1).samples
    at_one = generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1,
                      bad_model=early.model).samples  # fmt: skip
    np.testing.assert_allclose(at_one, plain, atol=1e-5)
    cfg.sample.guidance_scale = 2.5  # sample.guidance_interval: (0, ∞] is the guidance, an empty one none
    full = generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1,
                    bad_model=early.model).samples  # fmt: skip
    for interval, expected in (((0.0, float("inf")), full), ((0.5, 0.5), plain)):
        cfg.sample.guidance_interval = interval
        got = generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1,
                       bad_model=early.model).samples  # fmt: skip
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(jnp.abs(full - plain).max()) > 1e-3
    with pytest.raises(ConfigError, match="neither class-conditional nor autoguided"):
        generate(cfg, latest.model, latest.process, jax.random.key(1), 64, (2,), x_init=x1)
    cfg.sample.guidance_interval = ()

    run("sample", "--workdir", workdir, "--guide_by", workdir + "@5", "--sampler", "euler:1:2.5",
        "--num", "64", "--out", str(tmp_path / "guided"))  # fmt: skip
    x1 = latest.process.prior_sample(jax.random.split(jax.random.key(0))[0], (64, 2))  # sample.py's noise
    v_good, v_bad = latest.model(x1, t), early.model(x1, t)
    by_hand = x1 + dt * (v_bad + 2.5 * (v_good - v_bad))
    np.testing.assert_allclose(np.load(str(tmp_path / "guided.npz"))["samples"], by_hand, atol=1e-5)
    row = dict(model="run", ema="decay 0.999", sampler="euler", nfe=2, guidance_scale=2.5, fd_mnist=50.0,
               train_steps=10, guided_by=workdir + "@5")  # fmt: skip
    assert f"| run | decay 0.999 | euler, autoguided by {workdir}@5 | 2 | 2.5 |" in markdown_table([row])

    other = str(tmp_path / "other")  # another process: not a weaker version of this model
    train_and_evaluate(tiny_checkerboard(3, **{"process.name": "cosine_path"}), other)
    with pytest.raises(ConfigError, match=r"--guide_by .*other: its process .* differs"):
        check_guide(workdir, source_record(workdir), other)


def nnx_params(module):
    from flax import nnx

    return nnx.state(module.network if hasattr(module, "network") else module, nnx.Param)


def test_vdm_trains_its_schedule_with_the_network_and_samples_through_it(tmp_path):
    """process.name='learned' + loss.name='vdm' on the checkerboard: the run samples on the squares;
    the loaded model's process is its own trained schedule (endpoints kept: learn_endpoints=False); and,
    because the network sees the schedule's normalised γ rather than t, its expected diffusion loss is the
    same under a very different shape with the same endpoints (VDM eq. 13) — fed t instead, it is not."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    import diffjax as dj
    from diffjax.likelihood import continuous_elbo
    from experiments.builders import training_data

    cfg = small_checkerboard(800)
    cfg.model.prediction = "eps"
    cfg.process = {"name": "learned",
                   "kwargs": {"gamma_min": -10.0, "gamma_max": 6.0, "hidden": 16, "learn_endpoints": False}}
    cfg.loss.update(name="vdm")
    cfg.sample.update(sampler="dpm_solver_pp", num_steps=10)
    summary = train_and_evaluate(cfg, str(tmp_path / "vdm"))
    assert summary["on_squares"] > 0.6
    trained = dj.load_model(str(tmp_path / "vdm"))
    learned, initial = trained.process, dj.LearnedSchedule.create(-10.0, 6.0, 16)
    assert isinstance(learned, dj.LearnedSchedule)
    assert float(learned.gamma(0.0)) == -10.0 and float(learned.gamma(1.0)) == 6.0
    assert abs(float(learned.gamma(0.5)) - float(initial.gamma(0.5))) > 1e-3  # the shape trained
    path = dj.save_pretrained(trained, str(tmp_path / "vdm.npz"), storage_dtype="float32")
    shipped = dj.load_pretrained(path)
    assert float(shipped.process.gamma(0.5)) == float(learned.gamma(0.5))  # a pretrained copy carries it too
    other = dataclasses.replace(learned, linear=jnp.asarray(-6.0), out_weight=jnp.linspace(-3.0, 3.0, 16),
                                in_weight=jnp.full((16,), 4.0), in_bias=jnp.linspace(-1.0, -5.0, 16))
    assert abs(float(other.gamma(0.5)) - float(learned.gamma(0.5))) > 2.0  # a very different shape
    data, network = jnp.asarray(training_data(cfg)[0][:20_000]), trained.model.network

    def diffusion_loss(process, seed, time_input):
        model = lambda x, t: network(x, time_input(process, t))  # noqa: E731
        values = continuous_elbo(model, process, data, jax.random.key(seed), num_times=1, prediction="eps")
        values = np.asarray(values.diffusion)
        return values.mean(), values.std() / np.sqrt(values.size)

    (m0, s0), (m1, s1) = (diffusion_loss(p, seed, lambda p, t: p.unit_gamma(t)) for p, seed in
                          ((learned, 5), (other, 6)))  # fmt: skip
    assert abs(m0 - m1) < 4 * np.hypot(s0, s1), (m0, s0, m1, s1)
    m2, s2 = diffusion_loss(other, 6, lambda p, t: t)  # the same weights read as a function of t
    assert abs(m2 - m0) > 4 * np.hypot(s0, s2), (m0, m2)
