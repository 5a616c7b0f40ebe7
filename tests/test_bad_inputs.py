# ruff: noqa: E501  (a table: one bad input a row reads better than wrapped)
"""Every wrong input a user is likely to make gets a clear error before any compute: a table of them
across the math API, models, data, configs and checkpoints. Each row asserts the error's type, that
its message names the offending value and a remedy, and that it is raised by diffjax or experiments
(the last frame of the traceback is ours, not a dependency's). Command lines must end with status 2
and one line, no traceback."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax.data import DatasetNotFoundError, load_dataset
from diffjax.models import ResidualMLP, ResidualMLPConfig, UNet, UNetConfig, build_model
from diffjax.training import (
    Checkpointer,
    TrainConfig,
    make_data_mesh,
    make_optimizer,
    make_train_step,
    maybe_initialize_distributed,
    shard_batch,
)
from experiments.builders import ConfigError, validate_config
from experiments.configs import checkerboard_fm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.key(0)
VP, OT, CHAIN = dj.VPSDE(), dj.CondOTPath(), dj.DDPMChain.linear(10)
MIX = dj.ring_mixture(4)
EPS = MIX.model(VP, "eps")
X = jnp.ones((8, 2))
T = jnp.full((8,), 0.5)


def wrong_shape(x, t):
    return x[:, :1]


def undeclared(x, t):
    return x


def mlp(**kw):
    return ResidualMLP(ResidualMLPConfig(dim=2, width=8, depth=1, **kw), rngs=nnx.Rngs(0))


def config(**edits):
    cfg = checkerboard_fm.get_config()
    cfg.unlock()
    for path, value in edits.items():
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return lambda: validate_config(cfg)


# (name, call, exception, message must contain (regex, naming the value), remedy (regex))
CASES = [
    # processes
    ("negative beta", lambda: dj.VPSDE(beta_min=-1.0), ValueError, r"beta_min must be > 0, got -1", r"> 0"),
    ("beta order", lambda: dj.VPSDE(beta_min=5.0, beta_max=1.0), ValueError, r"beta_min=5.0, beta_max=1.0",
     r"need beta_min < beta_max"),
    ("VE sigma 0", lambda: dj.VESDE(sigma_min=0.0), ValueError, r"sigma_min must be > 0, got 0", r"> 0"),
    ("CondOT sigma_min", lambda: dj.CondOTPath(sigma_min=1.5), ValueError, r"got 1.5", r"\[0, 1\)"),
    ("chain steps", lambda: dj.DDPMChain.linear(0), ValueError, r"got 0", r"positive integer"),
    ("chain betas", lambda: dj.DDPMChain(jnp.array([0.5, 1.5])), ValueError, r"1.5", r"DDPMChain.linear/cosine"),
    ("time outside", lambda: VP.coefficients(2.0), ValueError, r"\[2, 2\]", r"data at t=0 and noise at t=T"),
    ("chain time", lambda: CHAIN.sigma(2.5), ValueError, r"2.5", r"integer step"),
    ("t_eps", lambda: VP.data_end(2.0), ValueError, r"got 2.0", r"\[0, 1.0\)"),
    # conversions
    ("prediction name", lambda: dj.convert(X, X, T, VP, "noise", "eps"), ValueError, r"'noise'",
     r"choose one of"),
    ("chain velocity", lambda: dj.convert(X, X, 3, CHAIN, "eps", "velocity"), ValueError, r"'velocity'",
     r"use 'eps', 'x0', 'score' or 'v'"),
    # sampling
    ("sampler name", lambda: dj.sample("dpm", EPS, VP, KEY, (8, 2), 4), ValueError, r"'dpm'", r"choose one of"),
    ("sampler option", lambda: dj.sample("ddim", EPS, VP, KEY, (8, 2), 4, eta=2.0), ValueError, r"got 2.0",
     r"\[0, 1\]"),
    ("unknown option", lambda: dj.sample("heun", EPS, VP, KEY, (8, 2), 4, order=2), ValueError, r"'order'",
     r"invalid options"),
    ("ODE on chain", lambda: dj.sample("euler", EPS, CHAIN, KEY, (8, 2), 4), ValueError, r"DDPMChain",
     r"Use 'ancestral', 'ddim', 'dpm_solver_pp', 'unipc' or 'deis'"),
    ("zero steps", lambda: dj.sample("heun", EPS, VP, KEY, (8, 2), 0), ValueError, r"got 0", r"positive integer"),
    ("grid name", lambda: dj.sample("heun", EPS, VP, KEY, (8, 2), 4, grid="cosine"), ValueError, r"'cosine'",
     r"choose one of"),
    ("int key", lambda: dj.sample("heun", EPS, VP, 0, (8, 2), 4), TypeError, r"int 0", r"jax.random.key\(0\)"),
    ("output shape", lambda: dj.sample("heun", wrong_shape, VP, KEY, (8, 2), 4, prediction="eps"), ValueError,
     r"\(8, 1\) for x of shape \(8, 2\)", r"must have the shape of its input"),
    ("no prediction", lambda: dj.sample("heun", undeclared, VP, KEY, (8, 2), 4), ValueError,
     r"does not declare", r"pass prediction="),
    ("adaptive to t=0", lambda: dj.sample("tsit5", EPS, VP, KEY, (8, 2), t_eps=0.0), ValueError,
     r"VPSDE", r"use t_eps > 0"),
    ("grid direction", lambda: dj.sample("euler", EPS, VP, KEY, (8, 2), 2, grid=jnp.array([0.001, 0.5, 1.0])),
     ValueError, r"grid", r"from the noise to the data end"),
    ("adaptive trajectory", lambda: dj.sample("tsit5", EPS, VP, KEY, (8, 2), save_trajectory=True),
     ValueError, r"adaptive", r"save_trajectory=False"),
    ("solver object + options", lambda: dj.make_solver(dj.Heun(), order=2), ValueError, r"\['order'\]",
     r"set them on the object"),
    # integrator
    ("non-monotone grid", lambda: dj.integrate(dj.Euler(), dj.solvers.ODE(lambda y, t: -y), X,
                                                jnp.array([0.0, 0.5, 0.2])), ValueError, r"ts",
     r"strictly increasing or strictly decreasing"),
    ("save_every", lambda: dj.integrate(dj.Euler(), dj.solvers.ODE(lambda y, t: -y), X, jnp.linspace(0, 1, 5),
                                        save_every=3), ValueError, r"got 3", r"dividing the 4 steps"),
    # losses
    ("loss output shape", lambda: dj.dsm_loss(wrong_shape, X, KEY, process=VP), ValueError,
     r"\(8, 1\) for x of shape \(8, 2\)", r"must have the shape"),
    ("integer data", lambda: dj.dsm_loss(EPS, jnp.ones((8, 2), jnp.int32), KEY, process=VP), ValueError,
     r"int32", r"scale the data first"),
    ("empty batch", lambda: dj.dsm_loss(EPS, jnp.ones((0, 2)), KEY, process=VP), ValueError, r"\(0, 2\)",
     r"non-empty batch"),
    ("weighting", lambda: dj.cfm_loss(MIX.model(OT, "velocity"), X, KEY, process=OT, weighting="snr"),
     ValueError, r"'snr'", r"use one of"),
    ("loss int key", lambda: dj.dsm_loss(EPS, X, 3, process=VP), TypeError, r"int 3", r"jax.random.key"),
    # likelihood
    ("stochastic likelihood", lambda: dj.log_likelihood(EPS, VP, X, solver="euler_maruyama"), ValueError,
     r"EulerMaruyama", r"deterministic ODE solver"),
    ("hutchinson key", lambda: dj.log_likelihood(EPS, VP, X, divergence="hutchinson"), ValueError,
     r"hutchinson", r"needs a PRNG `key`"),
    ("chain likelihood", lambda: dj.log_likelihood(MIX.model(CHAIN, "eps"), CHAIN, X), ValueError,
     r"DDPMChain", r"use variational_bound"),
    ("unbatched x", lambda: dj.log_likelihood(EPS, VP, jnp.ones(3)), ValueError, r"\(3,\)", r"\(batch, \*event\)"),
    # guidance
    ("label range", lambda: dj.cfg_model(lambda x, t, y: x, jnp.array([0, 12]), 2.0, 10), ValueError,
     r"\[0, 12\]", r"must lie in \[0, 10\)"),
    ("float labels", lambda: dj.cfg_model(lambda x, t, y: x, jnp.array([0.5]), 2.0, 10), ValueError,
     r"float32", r"must be integers"),
    # oracle
    ("mixture means", lambda: dj.GaussianMixture.create(np.ones(3)), ValueError, r"\(3,\)", r"\(K, D\)"),
    ("mixture weights", lambda: dj.GaussianMixture.create(np.ones((2, 2)), weights=[0.2, 0.3]), ValueError,
     r"0.2", r"sum to 1"),
    # models
    ("model prediction", lambda: UNetConfig(prediction="noise"), ValueError, r"'noise'", r"must be one of"),
    ("image size", lambda: UNet(UNetConfig(image_size=8, channels=8, channel_mults=(1,), num_groups=4,
                                           attention_resolutions=()), rngs=nnx.Rngs(0))(jnp.ones((2, 9, 9, 1)),
                                                                                        jnp.ones(2)),
     ValueError, r"\(2, 9, 9, 1\)", r"set image_size / in_channels"),
    ("labels unconditional", lambda: mlp()(X, T, jnp.zeros(8, jnp.int32)), ValueError, r"labels y",
     r"set num_classes"),
    ("float labels model", lambda: mlp(num_classes=3)(X, T, jnp.zeros(8)), ValueError, r"float32",
     r"y.astype\(int\)"),
    ("model kind", lambda: build_model({"kind": "transformer"}), ValueError, r"'transformer'", r"choose one of"),
    ("model field", lambda: build_model({"kind": "mlp", "widht": 3}), ValueError, r"widht",
     r"invalid config fields"),
    ("process name", lambda: dj.build_process({"name": "vpp"}), ValueError, r"'vpp'", r"choose one of"),
    # data
    ("mnist files", lambda: load_dataset("mnist", data_dir="/nonexistent", source="idx"), DatasetNotFoundError,
     r"/nonexistent", r"DIFFJAX_DATA_DIR|data_dir"),
    # configs
    ("config key", config(**{"loss.weigthing": "eps"}), ConfigError, r"loss.weigthing", r"configs/base.py"),
    ("config warmup", config(**{"train.warmup_steps": 10_000}), ConfigError, r"got 10000", r"\[0, num_steps"),
    ("config dropout", config(**{"train.label_dropout": 0.2}), ConfigError, r"label_dropout",
     r"class-conditional model"),
    ("config sampler", config(**{"sample.sampler": "dpm"}), ConfigError, r"'dpm'", r"choose one of"),
    ("config steps", config(**{"sample.num_steps": 0}), ConfigError, r"got 0", r">= 1"),
    # training
    ("train config", lambda: TrainConfig("w", -1), ValueError, r"-1", r"num_steps >= 0"),
    ("learning rate", lambda: make_optimizer(0.0), ValueError, r"0.0", r"learning_rate > 0"),
    ("ema decay", lambda: make_train_step(lambda p, b, k: 0.0, make_optimizer(1e-3)[0], ema_decay=1.0),
     ValueError, r"got 1.0", r"\[0, 1\)"),
    ("checkpoint period", lambda: Checkpointer("/tmp/diffjax_bad_ckpt", save_every=0), ValueError, r"0",
     r"save_every >= 1"),
    ("load without checkpoints", lambda: dj.load_model("/nonexistent_workdir"), FileNotFoundError,
     r"/nonexistent_workdir", r"train a model there first"),
    ("shard batch", lambda: shard_batch(np.ones(()), make_data_mesh()), ValueError, r"shape \(\)",
     r"divisible by"),
    ("coordinator", lambda: maybe_initialize_distributed("127.0.0.1:9", 2, 1, timeout_s=1.0), TimeoutError,
     r"127.0.0.1:9", r"Start process 0"),
]  # fmt: skip


@pytest.mark.parametrize("name, call, error, value, remedy", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_from_diffjax(name, call, error, value, remedy, monkeypatch):
    monkeypatch.setattr(sys.modules["diffjax.training.parallel"].jax.distributed, "initialize",
                        lambda **kw: pytest.fail("initialize must not be reached"))  # fmt: skip
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert re.search(value, message), (value, message)
    assert re.search(remedy, message), (remedy, message)
    last = str(info.traceback[-1].path)
    assert f"{os.sep}diffjax{os.sep}" in last or f"{os.sep}experiments{os.sep}" in last, last


def test_the_table_covers_forty_inputs():
    assert len(CASES) + len(CLI) >= 40


def cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


CLI = [
    ("sample missing workdir", ("experiments.sample", "--workdir", "/nonexistent"), r"/nonexistent",
     r"train a model there first"),
    ("sample zero steps", ("experiments.sample", "--workdir", "/nonexistent", "--steps", "0"), r"got 0", r">= 1"),
    ("sample bad sampler", ("experiments.sample", "--workdir", "/x", "--sampler", "dpm"), r"'dpm'", r"one of"),
    ("train unknown override", ("experiments.train", "--config", "experiments/configs/checkerboard_fm.py",
                                "--workdir", "/tmp/x", "--config.train.lr=1"), r"train.lr", r"configs/base.py"),
    ("train missing config", ("experiments.train", "--config", "experiments/configs/nope.py", "--workdir",
                              "/tmp/x"), r"nope.py", r"No such file"),
    ("train workdir is a file", ("experiments.train", "--config", "experiments/configs/checkerboard_fm.py",
                                 "--workdir", "README.md", "--config.train.warmup_steps=0"), r"README.md",
     r"give a directory"),
    ("train bad value", ("experiments.train", "--config", "experiments/configs/checkerboard_fm.py",
                         "--workdir", "/tmp/x", "--config.train.num_steps=abc"), r"abc", r"num_steps"),
    ("evaluate missing workdir", ("experiments.evaluate_2d", "--workdirs", "/nonexistent"), r"/nonexistent",
     r"train a model there first"),
]  # fmt: skip


@pytest.mark.parametrize("name, args, value, remedy", CLI, ids=[c[0] for c in CLI])
def test_command_lines_report_mistakes_in_one_line(name, args, value, remedy):
    proc = cli(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(value, proc.stderr) and re.search(remedy, proc.stderr), proc.stderr[-2000:]


def test_float32_states_sample_with_float64_enabled_and_integer_states_become_floats():
    """With x64 on, float32 states (and the float32 DDPM chain) keep their dtype through every solver
    instead of failing on a scan carry; integer x_init is sampled as floats, not cast back each step."""
    from conftest import x64

    with x64():
        chain = dj.DDPMChain.linear(100)
        assert dj.sample("dpm_solver_pp", MIX.model(chain, "eps"), chain, KEY, (8, 2), 10, order=3).samples.dtype
        x32 = jnp.ones((8, 2), jnp.float32)
        for name in dj.SOLVERS:
            res = dj.sample(name, MIX.model(VP, "eps"), VP, KEY, None, 4, x_init=x32)
            assert res.samples.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(res.samples))), name
    res = dj.sample("euler", MIX.model(VP, "eps"), VP, KEY, None, 4, x_init=jnp.ones((8, 2), jnp.int32))
    assert jnp.issubdtype(res.samples.dtype, jnp.floating)
    # integer pixels in, float predictions out
    net = UNet(UNetConfig(image_size=8, channels=8, channel_mults=(1,), num_groups=4, attention_resolutions=()),
               rngs=nnx.Rngs(0))  # fmt: skip
    assert net(jnp.ones((2, 8, 8, 1), jnp.uint8), jnp.ones(2)).dtype == jnp.float32
