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
# A trained model is a function $(x, t[, y]) \mapsto$ prediction; every sampler in
# `diffjax.samplers` integrates the same probability-flow ODE (or the reverse SDE) of its process
# through the pair $(\hat x_0, \hat\varepsilon)$ it implies. For the flow-matching configs
# (`experiments/configs/mnist_fm.py`, `mnist_cfg.py`) the process is the CondOT path
# $x_t = t\,x_1 + (1-t)\,\varepsilon$ and the network predicts the velocity
# $u_\theta(x, t) \approx \mathbb E[x_1 - \varepsilon \mid x_t = x]$.
#
# **Which model.** If a work directory written by `experiments/train.py` exists —
# `$DIFFJAX_MNIST_WORKDIR`, else `outputs/mnist_fm` — its newest checkpoint is loaded with
# `experiments/sample.py`'s `load` (EMA parameters). Otherwise a tiny *class-conditional*
# model (the `mnist_cfg` config, shrunk) is trained here for a few dozen steps with the same
# builders as `train.py`: its samples are blobs, not digits, but every cell runs, and
# classifier-free guidance is always shown. (With `DIFFJAX_NB_QUICK=1` the fallback network is a
# residual MLP on the flattened $28\times28$ images instead of the U-Net, whose training step takes
# 30–60 s to compile on 2 CPU cores.) Train a real one with
#
#     python experiments/train.py --config experiments/configs/mnist_cfg.py \
#         --workdir outputs/mnist_cfg --config.data.data_dir=../shared/data/mnist
#
# and point `DIFFJAX_MNIST_WORKDIR` at it. The MNIST IDX files are looked up in
# `$DIFFJAX_DATA_DIR`, else `../shared/data/mnist` next to the repository.
# `DIFFJAX_NB_QUICK=1` shrinks everything (the test suite sets it).

# %%
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

# the repository root: the first parent of the working directory holding experiments/builders.py
ROOT = next(
    p for p in [Path.cwd(), *Path.cwd().parents] if (p / "experiments/builders.py").exists()
)
sys.path[:0] = [str(ROOT / "experiments"), str(ROOT / "experiments" / "configs")]

import mnist_cfg  # noqa: E402  (experiments/configs)
from builders import build_loss_fn, build_model, build_process, generate, load, make_apply  # noqa: E402
from builders import num_classes as config_num_classes  # noqa: E402
from flax import nnx  # noqa: E402

from diffjax.data import DatasetNotFoundError, batches, load_dataset  # noqa: E402
from diffjax.guidance import cfg_model  # noqa: E402
from diffjax.models import count_params  # noqa: E402
from diffjax.parameterization import clip_denoised  # noqa: E402
from diffjax.processes.ddpm import DDPMChain  # noqa: E402
from diffjax.samplers import sample  # noqa: E402
from diffjax.training import create_train_state, make_optimizer, make_train_step  # noqa: E402
from diffjax.viz import image_grid  # noqa: E402

QUICK = os.environ.get("DIFFJAX_NB_QUICK", "0") == "1"
WORKDIR = Path(os.environ.get("DIFFJAX_MNIST_WORKDIR", ROOT / "outputs" / "mnist_fm"))
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
        "holding train-images-idx3-ubyte.gz etc. Without data and without a checkpoint the "
        "fallback model below stays untrained: the notebook runs, its samples are noise."
    )

# %% [markdown]
# ## The model: a checkpoint, or a tiny one trained here
#
# The fallback reuses `experiments/builders.py` exactly as `train.py` does: `build_model`,
# `build_process` and `build_loss_fn` (CFM loss with 10% label dropout, so the same network is
# also the unconditional model of classifier-free guidance), then `make_train_step`.

# %%
try:
    cfg, graphdef, params, step = load(str(WORKDIR))
    print(f"loaded {WORKDIR} at step {step}")
except FileNotFoundError as err:
    print(f"No checkpoint ({err}); training a tiny class-conditional model for "
          f"{FALLBACK_STEPS} steps instead.")  # fmt: skip
    cfg = mnist_cfg.get_config()
    cfg.model.kwargs.channels = 8
    cfg.model.kwargs.num_groups = 4
    if QUICK:  # the same config with a small residual MLP on flattened images (fast to compile)
        cfg.model.kind = "mlp"
        cfg.model.kwargs = dict(dim=int(np.prod(IMAGE_SHAPE)), width=256, depth=2, num_classes=10)
    cfg.train.batch_size = 32
    cfg.train.num_steps = FALLBACK_STEPS
    cfg.train.warmup_steps = 5
    cfg.train.ema_decay = 0.8  # a short run: average only its last few steps
    graphdef, params = nnx.split(build_model(cfg, cfg.seed))
    optimizer, schedule = make_optimizer(cfg.train.learning_rate,
                                         warmup_steps=cfg.train.warmup_steps,
                                         total_steps=cfg.train.num_steps)  # fmt: skip
    loss_fn = build_loss_fn(cfg, graphdef, build_process(cfg))
    train_step = jax.jit(make_train_step(loss_fn, optimizer, ema_decay=cfg.train.ema_decay,
                                         schedule=schedule))  # fmt: skip
    state = create_train_state(params, optimizer, jax.random.key(cfg.seed))
    if data is not None:
        start, losses = time.perf_counter(), []
        x_train = data.reshape(len(data), -1) if cfg.model.kind == "mlp" else data
        batch_iter = batches(x_train, labels, cfg.train.batch_size, seed=cfg.seed)
        for _, batch in zip(range(FALLBACK_STEPS), batch_iter, strict=False):
            state, metrics = train_step(state, batch)
            losses.append(float(metrics["loss"]))
        print(
            f"{FALLBACK_STEPS} steps in {time.perf_counter() - start:.1f} s; loss "
            f"{np.mean(losses[:5]):.3f} (first 5) -> {np.mean(losses[-5:]):.3f} (last 5)"
        )
    params, step = state.ema_params, int(state.step)

process = build_process(cfg)
n_cls = config_num_classes(cfg)
apply = make_apply(graphdef)
kind = cfg.model.output
print(f"{cfg.model.kind} with {count_params(params):,} parameters predicting {kind!r} on "
      f"{type(process).__name__}; classes: {n_cls}")  # fmt: skip

# %% [markdown]
# ## Samples with the configured sampler
#
# `builders.generate` draws with the sampler, step count and guidance scale of the config
# (labels $0, 1, \dots, 9, 0, \dots$ for a class-conditional model).

# %%
if QUICK:
    cfg.sample.num_steps = 4
res = generate(cfg, graphdef, params, process, jax.random.key(0), N_SAMPLES)
show(res.samples, f"{cfg.sample.sampler}, {cfg.sample.num_steps} steps ({res.nfe} evaluations)")
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
# doubled batch of classifier-free guidance). The network and its parameters enter the samplers
# as a `jax.tree_util.Partial`, so new parameters or guidance scales do not recompile. (On the
# discrete DDPM chain of `mnist_ddpm.py` only DDIM, DPM-Solver++ and ancestral sampling apply.)

# %%
sample_labels = jnp.arange(N_SAMPLES) % 10
guidance = cfg.sample.get("guidance_scale", 1.0)


def guided(params, w, y, x, t):
    """Classifier-free guidance (1 - w) pred(x, t, null) + w pred(x, t, y); null = n_cls."""
    return cfg_model(lambda x_, t_, y_: apply(params, x_, t_, y_), y, w, n_cls)(x, t)


def model_fn(w=guidance):
    if n_cls is None:
        return jax.tree_util.Partial(apply, params)
    return jax.tree_util.Partial(guided, params, jnp.asarray(w, jnp.float32), sample_labels)


shape = res.samples.shape  # (N_SAMPLES, 28, 28, 1) for a U-Net, (N_SAMPLES, 784) for an MLP
runs = [("euler", 4), ("heun", 2), ("dpm_solver_pp", 4), ("euler_maruyama", 4)] if QUICK else [
    ("euler", 5), ("euler", 20), ("heun", 5), ("heun", 10), ("dpm_solver_pp", 5),
    ("dpm_solver_pp", 10), ("ddim", 10), ("euler_maruyama", 20), ("euler_maruyama", 50),
]  # fmt: skip
if isinstance(process, DDPMChain):  # the discrete chain has no dα/dt, g²: no ODE/SDE integrators
    runs = [(n, s) for n, s in runs if n in ("ddim", "dpm_solver_pp")] + [("ancestral", 20)]
key = jax.random.key(1)
for name, steps in runs:
    start = time.perf_counter()
    out = sample(name, model_fn(), process, key, shape, steps, prediction=kind)
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
# sample with it by default (`cfg.sample.clip_denoised`). Top row raw, bottom row clipped, same noise:

# %%
steps = 4 if QUICK else 10
raw = sample("dpm_solver_pp", model_fn(), process, key, shape, steps, prediction=kind)
clipped = sample("dpm_solver_pp", clip_denoised(model_fn(), process, kind), process, key, shape, steps,
                 prediction=kind)  # fmt: skip
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
        f"The model in {WORKDIR} is unconditional (no num_classes in its config): no guidance. "
        "Train experiments/configs/mnist_cfg.py for a class-conditional one."
    )
else:
    ws = [0.0, 1.0, 3.0] if QUICK else [0.0, 1.0, 2.0, 4.0]
    steps = 4 if QUICK else 10
    rows = []
    for w in ws:
        out = sample("dpm_solver_pp", model_fn(w), process, key, shape, steps, prediction=kind)
        rows.append(as_images(out.samples)[:10])
    show(np.concatenate(rows), f"CFG rows: w = {ws} (dpm_solver_pp, {steps} steps)")
    for w, row in zip(ws, rows, strict=True):
        print(f"w = {w:3.1f}: pixel mean {row.mean():+.3f}, std {row.std():.3f}, mean |x_w - x_1| "
              f"= {np.abs(row - rows[ws.index(1.0)]).mean():.3f}")  # fmt: skip
    assert np.all(np.isfinite(np.concatenate(rows)))
