# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Sampling an MNIST model: solvers, step counts and guidance
#
# A trained model is a function $(x, t[, y]) \mapsto$ prediction; every solver of `dj.sample`
# integrates the same probability-flow ODE (or the reverse SDE) of its process through the pair
# $(\hat x_0, \hat\varepsilon)$ it implies. For the flow-matching configs
# (`experiments/configs/mnist_fm.py`, `mnist_cfg.py`) the process is the CondOT path
# $x_t = t\,x_1 + (1-t)\,\varepsilon$ and the network predicts the velocity
# $u_\theta(x, t) \approx \mathbb E[x_1 - \varepsilon \mid x_t = x]$.
#
# **Which model.** If `$DIFFJAX_MNIST_WORKDIR` names a work directory written by `experiments.train`,
# its newest checkpoint is loaded with `dj.load_model(workdir)` (the network with its EMA parameters,
# its process and its number of classes, all from the run record saved with the checkpoint).
# Otherwise the class-conditional network shipped with the package is loaded with
# `dj.load_pretrained("mnist_cfg")` (the same `TrainedModel`; no training, no download), so every
# cell shows real digits and classifier-free guidance. With `DIFFJAX_NB_QUICK=1` (the test suite) a
# tiny class-conditional model — a residual MLP on the flattened $28\times28$ images, the `mnist_cfg`
# setup shrunk — is trained here for a few dozen steps with the library alone (`diffjax.models`,
# `diffjax.training`, `diffjax.data`) into a temporary work directory and loaded the same way: its
# samples are blobs, not digits, but every cell runs in seconds. Train your own from the repository
# root with
#
#     python -m experiments.train --config experiments/configs/mnist_cfg.py \
#         --workdir outputs/mnist_cfg --config.data.data_dir=../shared/data/mnist
#
# and point `DIFFJAX_MNIST_WORKDIR` at it. The MNIST IDX files are looked up in
# `$DIFFJAX_DATA_DIR`, else `../shared/data/mnist` next to the repository.
# `DIFFJAX_NB_QUICK=1` shrinks everything (the test suite sets it).

# %%
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import diffjax as dj
from diffjax.data import DatasetNotFoundError, batches, load_dataset
from diffjax.models import build_model, count_params
from diffjax.training import (
    TrainConfig,
    create_train_state,
    make_optimizer,
    make_train_step,
    model_loss,
    run_record,
    train,
)
from diffjax.viz import image_grid

# the repository root: the first parent of the working directory holding the diffjax package
ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "diffjax" / "__init__.py").exists()),
            Path.cwd())  # fmt: skip
QUICK = os.environ.get("DIFFJAX_NB_QUICK", "0") == "1"
WORKDIR = os.environ.get("DIFFJAX_MNIST_WORKDIR")  # else the pretrained mnist_cfg (QUICK: a tiny model)
DATA_DIR = Path(os.environ.get("DIFFJAX_DATA_DIR", ROOT.parent / "shared" / "data" / "mnist"))
FALLBACK_STEPS = 40  # training steps of the tiny in-notebook model
N_SAMPLES = 20 if QUICK else 40  # images per grid (labels cycle through 0..9)
IMAGE_SHAPE = (28, 28, 1)


def as_images(x):
    """Model samples, (N, 28, 28, 1) from a U-Net or (N, 784) from an MLP, as (N, 28, 28, 1)."""
    return np.asarray(x).reshape(-1, *IMAGE_SHAPE)


def show(images, title, ncol=10):
    """An image grid (diffjax.viz.image_grid) of images in [-1, 1], (N, 28, 28, 1)."""
    plt.figure(figsize=(ncol * 0.6, 0.6 * int(np.ceil(len(images) / ncol)) + 0.4))
    plt.imshow(image_grid(as_images(images), ncol)[..., 0], cmap="gray", vmin=0, vmax=255)
    plt.title(title, fontsize=9)
    plt.axis("off")
    plt.show()


# %% [markdown]
# ## Data (for reference, and for the fallback training)

# %%
try:
    data, labels = load_dataset("mnist", "train", DATA_DIR, source="idx",
                                num_examples=2048 if QUICK else 8192)  # fmt: skip
    print(f"MNIST from {DATA_DIR}: {data.shape}, pixel range [{data.min()}, {data.max()}]")
    show(data[np.argsort(labels[:N_SAMPLES], kind="stable")], "training data")
except DatasetNotFoundError as err:
    data = labels = None
    print(
        f"MNIST IDX files not found ({err.reason}).\nSet DIFFJAX_DATA_DIR to the directory "
        "holding train-images-idx3-ubyte.gz etc. (The pretrained model needs no data; the quick "
        "fallback model below then stays untrained: the notebook runs, its samples are noise.)"
    )

# %% [markdown]
# ## The model: a checkpoint, the pretrained one, or a tiny one trained here
#
# `dj.load_model(workdir)` (and `dj.load_pretrained(name)`) returns a
# `TrainedModel(model, process, step, record, num_classes)`: `model` is the NNX network with the
# EMA parameters; it declares its prediction type (`model.prediction`), so the samplers need no
# `prediction=`.

# %%
if WORKDIR:
    trained = dj.load_model(WORKDIR)
    print(f"loaded {WORKDIR} at step {trained.step}")
elif not QUICK:
    trained = dj.load_pretrained("mnist_cfg")
    print("loaded the pretrained mnist_cfg:", dj.pretrained_card("mnist_cfg")["description"])
else:
    trained = None
    print(f"DIFFJAX_NB_QUICK=1: training a tiny class-conditional model for {FALLBACK_STEPS} steps.")

# %% [markdown]
# The fallback, with the library only, wired as `experiments.train` does: the network from a spec
# (`build_model`), the CFM loss on the CondOT path with 10% label dropout (`model_loss(...,
# p_uncond=0.1)`: the same network is also the unconditional model of classifier-free guidance),
# `make_train_step`, and the training loop `train`, which writes checkpoints with a *run record*
# (`run_record`: the model, process and optimizer specs, the data shape and the number of
# classes) to a temporary work directory. `dj.load_model` then rebuilds the network from that
# record, exactly as for a checkpoint of `experiments.train`.

# %%
if trained is None:
    model_spec = dict(kind="mlp", prediction="velocity", dim=int(np.prod(IMAGE_SHAPE)), width=256, depth=2,
                      num_classes=10)  # fmt: skip
    process_spec = {"name": "condot"}
    optimizer_spec = dict(learning_rate=2e-3, warmup_steps=5, total_steps=FALLBACK_STEPS)
    seed, batch_size = 0, 32
    data_shape = (int(np.prod(IMAGE_SHAPE)),)

    graphdef, params = nnx.split(build_model(model_spec, seed))
    optimizer, schedule = make_optimizer(**optimizer_spec)
    loss_fn = model_loss(graphdef, functools.partial(dj.cfm_loss, process=dj.build_process(process_spec)),
                         num_classes=10, p_uncond=0.1)  # fmt: skip
    # a short run: the EMA averages only its last few steps
    train_step = make_train_step(loss_fn, optimizer, ema_decay=0.8, schedule=schedule)
    state = create_train_state(params, optimizer, jax.random.key(seed))
    train_steps = FALLBACK_STEPS if data is not None else 0  # without data: the initial network
    x_train = None if data is None else data.reshape(len(data), *data_shape)

    def batch_iter(start_step):
        """The batches of steps start_step, start_step + 1, ... (a pure function of the step)."""
        if x_train is None:
            return iter(())
        return batches(x_train, labels, batch_size, seed=seed, start_step=start_step)

    with tempfile.TemporaryDirectory(prefix="diffjax_nb03_") as fallback_dir:
        record = run_record(model_spec, process_spec, optimizer_spec, data_shape, num_classes=10)
        config = TrainConfig(fallback_dir, train_steps, log_every=1, metadata={"run": record})
        start = time.perf_counter()
        train(config, train_step, state, batch_iter)
        if train_steps:
            with open(os.path.join(fallback_dir, "metrics.jsonl")) as f:
                losses = [json.loads(line)["loss"] for line in f]
            print(
                f"{train_steps} steps in {time.perf_counter() - start:.1f} s; loss "
                f"{np.mean(losses[:5]):.3f} (first 5) -> {np.mean(losses[-5:]):.3f} (last 5)"
            )
        trained = dj.load_model(fallback_dir)  # read before the directory is removed

process, n_cls = trained.process, trained.num_classes
prediction = trained.model.prediction
print(f"{trained.record['model']['kind']} with {count_params(trained.model):,} parameters predicting "
      f"{prediction!r} on {type(process).__name__}; classes: {n_cls}")  # fmt: skip

# %% [markdown]
# ## Samples
#
# Load, guide, sample: for a class-conditional model `dj.cfg_model` wraps the network into
# classifier-free guidance at scale $w$ with the labels $0, 1, \dots, 9, 0, \dots$ bound (the null
# label is `num_classes`); `dj.sample` draws with Heun's method.

# %%
sample_labels = jnp.arange(N_SAMPLES) % 10
guidance = 2.0  # the guidance scale of experiments/configs/mnist_cfg.py
num_steps = 4 if QUICK else 20
shape = (N_SAMPLES, *trained.record["data_shape"])  # (N, 28, 28, 1) for a U-Net, (N, 784) for an MLP
model = trained.model if n_cls is None else dj.cfg_model(trained.model, sample_labels, guidance, n_cls)
res = dj.sample("heun", model, process, jax.random.key(0), shape, num_steps)
show(res.samples, f"heun, {num_steps} steps ({res.nfe} evaluations)")
print(
    f"samples: mean pixel {float(res.samples.mean()):.3f}, std {float(res.samples.std()):.3f}"
    + ("" if data is None else f"  (data: {data.mean():.3f}, {data.std():.3f})")
)
assert bool(jnp.all(jnp.isfinite(res.samples)))

# %% [markdown]
# ## Solvers and step counts
#
# The same network, prior noise and labels, integrated by different solvers. Deterministic ones
# (Euler, Heun, DPM-Solver++(2M), DDIM with $\eta = 0$) solve the probability-flow ODE
# $dx/dt = \dot\alpha_t\hat x_0 + \dot\sigma_t\hat\varepsilon$; Euler–Maruyama and DDIM with
# $\eta > 0$ simulate a reverse SDE with the same marginals. "evals" counts network evaluations
# per image (Heun uses two per step; a class-conditional model is evaluated once per step on the
# doubled batch of classifier-free guidance). The network (an NNX module) and the guidance wrapper
# of `dj.cfg_model` (labels and $w$ are array leaves) are pytrees whose arrays the samplers trace,
# so new parameters or guidance scales do not recompile. (On the discrete DDPM chain of
# `mnist_ddpm.py` only DDIM, DPM-Solver++ and ancestral sampling apply.)


# %%
def model_fn(w=guidance):
    """The network, with classifier-free guidance at scale w for a class-conditional one."""
    if n_cls is None:
        return trained.model
    return dj.cfg_model(trained.model, sample_labels, w, n_cls)


runs = [("euler", 4), ("heun", 2), ("dpm_solver_pp", 4), ("euler_maruyama", 4)] if QUICK else [
    ("euler", 5), ("euler", 20), ("heun", 5), ("heun", 10), ("dpm_solver_pp", 5),
    ("dpm_solver_pp", 10), ("ddim", 10), ("euler_maruyama", 20), ("euler_maruyama", 50),
]  # fmt: skip
if not process.has_rates:  # the discrete chain has no dα/dt, g²: no ODE/SDE integrators
    runs = [(n, s) for n, s in runs if n in ("ddim", "dpm_solver_pp")] + [("ancestral", 20)]
key = jax.random.key(1)
for name, steps in runs:
    start = time.perf_counter()
    out = dj.sample(name, model_fn(), process, key, shape, steps)
    images = as_images(out.samples)
    assert np.all(np.isfinite(images))
    show(images[:10], f"{name}, {steps} steps ({out.nfe} evals)")
    print(f"{name:>15} {steps:3d} steps, {out.nfe:3d} evals: {time.perf_counter() - start:5.1f} s "
          f"(incl. compilation); pixel mean {images.mean():+.3f}")  # fmt: skip

# %% [markdown]
# ## Clipping the denoised estimate
#
# Pixels live in $[-1, 1]$, so the exact $E[x_0 \mid x_t]$ does too; a network's $\hat x_0$ need
# not. `clip_denoised` projects $\hat x_0$ onto the data range at every step and re-derives
# $\hat\varepsilon = (x - \alpha\hat x_0)/\sigma$, so every sampler sees a consistent pair (Ho et
# al.'s `clip_denoised`). On the CPU-sized ε-prediction models it removes much of the background
# speckle (FD-MNIST 203 → 115 for DDPM with DPM-Solver++, 20 steps: see the README); the image configs
# sample with it by default (`cfg.sample.clip_denoised`). `dj.clip_denoised` returns a plain model
# function, so its prediction type is passed to the sampler. Top row raw, bottom row clipped, same
# noise:

# %%
steps = 4 if QUICK else 10
raw = dj.sample("dpm_solver_pp", model_fn(), process, key, shape, steps)
clipped = dj.sample("dpm_solver_pp", dj.clip_denoised(model_fn(), process, prediction), process, key,
                    shape, steps, prediction=prediction)  # fmt: skip
show(np.concatenate([as_images(raw.samples)[:10], as_images(clipped.samples)[:10]]),
     f"dpm_solver_pp, {steps} steps: raw x̂0 (top) vs clipped x̂0 (bottom)")  # fmt: skip
for name, out in [("raw", raw), ("clipped", clipped)]:
    x = np.asarray(out.samples)
    assert np.all(np.isfinite(x))
    print(f"{name:>8}: {100 * np.mean(np.abs(x) > 1):.2f}% of pixels outside [-1, 1], "
          f"pixel std {x.std():.3f}")  # fmt: skip

# %% [markdown]
# ## Classifier-free guidance across $w$
#
# $$\hat u_w(x, t, y) = (1-w)\,u_\theta(x, t, \varnothing) + w\,u_\theta(x, t, y):$$
#
# $w = 0$ is the unconditional model (the label is ignored), $w = 1$ the conditional one, and
# $w > 1$ trades diversity for class fidelity. Each row below is one $w$ for the labels
# $0, \dots, 9$ from the same noise.

# %%
if n_cls is None:
    print(
        f"The model in {WORKDIR} is unconditional (no num_classes in its run record): no guidance. "
        "Train experiments/configs/mnist_cfg.py for a class-conditional one."
    )
else:
    ws = [0.0, 1.0, 3.0] if QUICK else [0.0, 1.0, 2.0, 4.0]
    steps = 4 if QUICK else 10
    rows = []
    for w in ws:
        out = dj.sample("dpm_solver_pp", model_fn(w), process, key, shape, steps)
        rows.append(as_images(out.samples)[:10])
    show(np.concatenate(rows), f"CFG rows: w = {ws} (dpm_solver_pp, {steps} steps)")
    for w, row in zip(ws, rows, strict=True):
        print(f"w = {w:3.1f}: pixel mean {row.mean():+.3f}, std {row.std():.3f}, mean |x_w - x_1| "
              f"= {np.abs(row - rows[ws.index(1.0)]).mean():.3f}")  # fmt: skip
    assert np.all(np.isfinite(np.concatenate(rows)))
