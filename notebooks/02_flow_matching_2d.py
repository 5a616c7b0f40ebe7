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
# # 02 · Flow matching on a 2D checkerboard
#
# Train a velocity field $u_\theta(x, t)$ by conditional flow matching on the CondOT path
# (rectified flow; noise at $t = 0$, data at $t = 1$):
#
# $$x_t = t\,x_1 + (1-t)\,x_0,\quad x_0\sim\mathcal N(0, I),\ x_1\sim p_{\rm data},\qquad
# \mathcal L(\theta) = \mathbb E_{t, x_0, x_1}\,\big\|u_\theta(x_t, t) - (x_1 - x_0)\big\|^2 .$$
#
# The minimiser is the marginal velocity $u(x, t) = \mathbb E[x_1 - x_0\mid x_t = x]$, whose ODE
# $dx/dt = u(x, t)$ carries $\mathcal N(0, I)$ at $t = 0$ to the data at $t = 1$ (Lipman et al.
# 2023; Liu et al. 2023). Everything below is a pure function of arrays and keys: the network is
# split into a static `graphdef` and a parameter pytree, the loss is a function of
# `(params, batch, key)`, and one jitted `train_step` updates a `TrainState`. For sampling, the
# parameters are merged back into the module, which the samplers take as it is.
#
# `NUM_STEPS` sets the training length: the default trains in well under a minute on a laptop CPU;
# raise it (e.g. to 5000) for sharper squares. `DIFFJAX_NB_QUICK=1` shrinks everything for tests.

# %%
import functools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import diffjax as dj
from diffjax.data import checkerboard, in_checkerboard
from diffjax.metrics import sliced_wasserstein
from diffjax.models import ResidualMLP, ResidualMLPConfig, count_params
from diffjax.training import create_train_state, make_optimizer, make_train_step, model_loss

QUICK = os.environ.get("DIFFJAX_NB_QUICK", "0") == "1"
NUM_STEPS = 300 if QUICK else 800  # training steps: raise for a better model
BATCH = 256 if QUICK else 512
WIDTH = 128
N_EVAL = 1000 if QUICK else 4000  # samples for the evaluation
SAMPLER_STEPS = (8,) if QUICK else (4, 8, 32)  # step counts compared below

# %% [markdown]
# ## Data, path, model
#
# The checkerboard: uniform on the dark squares of a $4\times4$ board on $[-\sqrt3, \sqrt3]^2$
# (unit variance per coordinate). Batches are drawn on the fly from `checkerboard(key, n)`.

# %%
path = dj.CondOTPath()
data_key = jax.random.key(0)
x_show, _ = checkerboard(jax.random.key(123), N_EVAL)

model = ResidualMLP(ResidualMLPConfig(dim=2, width=WIDTH, depth=3, prediction="velocity"),
                    rngs=nnx.Rngs(0))  # fmt: skip
graphdef, params = nnx.split(model)
print(f"ResidualMLP with {count_params(params):,} parameters, prediction = {model.prediction!r}")

plt.figure(figsize=(3.5, 3.5))
plt.scatter(*np.asarray(x_show).T, s=1, alpha=0.4, c="tab:gray")
plt.gca().set_aspect("equal")
plt.title("data")
plt.show()

# %% [markdown]
# ## The loss and one training step
#
# `dj.cfm_loss(model, x_data, key, process=path)` draws $t\sim U[0, 1]$ and $x_0$, forms $x_t$ and
# regresses the network's velocity on $\dot\alpha_t x_1 + \dot\sigma_t x_0 = x_1 - x_0$.
# `model_loss(graphdef, loss)` turns it into `loss_fn(params, (x, labels), key)`, the network
# `nnx.merge(graphdef, params)` plugged into the loss (the labels are ignored: the model is
# unconditional). `make_train_step` adds AdamW with warmup and cosine decay, gradient clipping and
# an EMA of the parameters. The batch is a function of the step's key, so a whole chunk of steps
# runs as one `lax.scan`.

# %%
loss_fn = model_loss(graphdef, functools.partial(dj.cfm_loss, process=path))
optimizer, schedule = make_optimizer(2e-3, warmup_steps=min(100, NUM_STEPS // 10),
                                     total_steps=NUM_STEPS)  # fmt: skip
ema_decay = 1.0 - 10.0 / NUM_STEPS  # EMA horizon: the last ~10% of the run
train_step = make_train_step(loss_fn, optimizer, ema_decay=ema_decay, schedule=schedule)


@jax.jit
def train_chunk(state, steps):
    """len(steps) training steps as one scan; step s trains on checkerboard(fold_in(key, s))."""

    def body(state, step):
        x, _ = checkerboard(jax.random.fold_in(data_key, step), BATCH)
        state, metrics = train_step(state, (x, None))
        return state, metrics["loss"]

    return jax.lax.scan(body, state, steps)


state = create_train_state(params, optimizer, jax.random.key(1))
print(f"initial loss: {float(loss_fn(state.params, (x_show, None), jax.random.key(2))):.4f}")

# %% [markdown]
# ## Train

# %%
chunk = max(1, NUM_STEPS // 10)
losses, start = [], time.perf_counter()
for s0 in range(0, NUM_STEPS, chunk):
    steps = jnp.arange(s0, min(s0 + chunk, NUM_STEPS))
    state, chunk_losses = train_chunk(state, steps)
    losses.append(np.asarray(chunk_losses))
    print(f"step {int(state.step):5d}: mean loss of the last {len(steps)} steps "
          f"{losses[-1].mean():.4f}")  # fmt: skip
losses = np.concatenate(losses)
print(f"{NUM_STEPS} steps in {time.perf_counter() - start:.1f} s (including compilation)")
assert losses[-chunk:].mean() < losses[:chunk].mean()

plt.figure(figsize=(5, 3))
plt.plot(losses, lw=0.5, alpha=0.5)
plt.plot(np.convolve(losses, np.ones(chunk) / chunk, mode="valid"), lw=1.5)
plt.xlabel("step")
plt.ylabel("CFM loss")
plt.show()

# %% [markdown]
# ## Sampling with different solvers
#
# NNX modules are pytrees, so the trained field is just the module with the EMA parameters,
# `nnx.merge(graphdef, state.ema_params)`: the samplers trace its parameters as arrays (new
# parameters reuse the compiled sampler) and read the prediction type from `model.prediction`
# (here 'velocity'). We compare Euler (order 1, one evaluation per step), Heun (order 2, two) and
# the multistep DPM-Solver++(2M) (order 2, one) at a few step counts. Two checks: the fraction of
# samples on the dark squares (data: 100%, the $\mathcal N(0, I)$ prior: about 42%) and the sliced
# Wasserstein distance to fresh data, next to its noise floor between two data samples.


# %%
flow = nnx.merge(graphdef, state.ema_params)
key_sample, k_sw = jax.random.split(jax.random.key(10))
x_ref, _ = checkerboard(jax.random.key(11), N_EVAL)
floor = float(sliced_wasserstein(x_show, x_ref, k_sw))
prior = path.prior_sample(key_sample, (N_EVAL, 2))
print(f"{'sampler':>14} {'steps':>5} {'evals':>5} {'on squares':>10} {'SW to data':>10}")
print(f"{'prior N(0,I)':>14} {'':>5} {'':>5} {float(in_checkerboard(prior).mean()):10.1%} "
      f"{float(sliced_wasserstein(prior, x_ref, k_sw)):10.4f}")  # fmt: skip
print(f"{'data':>14} {'':>5} {'':>5} {float(in_checkerboard(x_show).mean()):10.1%} {floor:10.4f}")
results = {}
for name in ("euler", "heun", "dpm_solver_pp"):
    for steps in SAMPLER_STEPS:
        res = dj.sample(name, flow, path, key_sample, (N_EVAL, 2), steps, save_trajectory=True)
        on = float(in_checkerboard(res.samples).mean())
        sw = float(sliced_wasserstein(res.samples, x_ref, k_sw))
        results[name, steps] = res
        print(f"{name:>14} {steps:5d} {res.nfe:5d} {on:10.1%} {sw:10.4f}")

# The prior puts 42% on the squares; the standard error of a fraction of N_EVAL samples is at most
# 0.5/sqrt(N_EVAL) (1.6% for 1000), so 50% is 5 standard errors above the untrained baseline.
on_squares = float(in_checkerboard(results["heun", SAMPLER_STEPS[-1]].samples).mean())
assert on_squares > (0.5 if QUICK else 0.7)

# %% [markdown]
# ## Samples and trajectories
#
# With the same prior draw, the ODE solution maps each noise point to one sample; the trajectories
# of the learned flow are nearly straight (the CondOT conditional paths are straight lines, the
# marginal flow bends only where paths of different data points cross).

# %%
few, many = SAMPLER_STEPS[0], SAMPLER_STEPS[-1]
shown = [("euler", few), ("dpm_solver_pp", few), ("heun", many)]
fig, axes = plt.subplots(2, len(shown), figsize=(4 * len(shown), 8), sharex=True, sharey=True)
for col, (name, steps) in enumerate(shown):
    res = results[name, steps]
    axes[0, col].scatter(*np.asarray(res.samples).T, s=1, alpha=0.4)
    axes[0, col].set_title(f"{name}, {steps} steps ({res.nfe} evaluations)")
    traj = np.asarray(res.trajectory)[:, :150]
    axes[1, col].plot(traj[..., 0], traj[..., 1], lw=0.5, alpha=0.6, c="tab:blue")
    axes[1, col].scatter(*traj[0].T, s=3, c="tab:gray")
    axes[1, col].scatter(*traj[-1].T, s=3, c="tab:red")
    axes[1, col].set_title("noise (gray) → sample (red)", fontsize=10)
for ax in axes.ravel():
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
plt.show()
