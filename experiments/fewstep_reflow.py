"""Reflow of the exact teacher on the 2D ring (Liu et al. 2022), then one-step distillation.

    python -m experiments.fewstep_reflow            # writes outputs/fewstep/reflow_2d.json

Problem (the 2D few-step contract): `tests.samplers_util.mixture_2d()` = `dj.ring_mixture(8)`
(8 components, radius 4, std 0.5) under CondOT; the teacher is the exact velocity
`mixture.model(path, 'velocity')`.

1. couplings (z, Φ_teacher(z)) from a 128-step Heun solve of the teacher (`diffjax.reflow.make_couplings`),
   stored in outputs/fewstep/reflow_couplings.npz and reused when their header matches;
2. a ResidualMLP velocity trained on them by `reflow_loss` (the 2-rectified flow), and for reference
   the same network trained by plain conditional flow matching on fresh data (the 1-rectified flow);
3. one-step distillation (`pair_distillation_loss`, k = 1) of (a) the reflowed flow's own couplings
   (a 16-step Heun solve of the nearly straight 2-RF) and (b) the teacher's couplings, into an
   `AverageVelocityMap` (ResidualMLP with `second_time`).

Metric: per-sample ‖x_i − Φ_exact(z_i)‖ against the exact flow map of the teacher from the same noise
(4096 fixed draws), median and RMSE, at NFE 1, 2, 4 (Euler; the teacher also Heun at the same budget);
the straightness S (`diffjax.reflow.straightness`, RK4 with 64 steps) of each flow on the same noise;
and for the learned flows their 'self' error (the k-step Euler against their own 128-step Heun
solve: the discretisation error alone, the quantity reflow is meant to remove).
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from diffjax.flow_map import AverageVelocityMap, flow_map_sample
from diffjax.models import ResidualMLP, ResidualMLPConfig
from diffjax.reflow import (
    Couplings,
    load_couplings,
    make_couplings,
    pair_distillation_loss,
    reflow_loss,
    save_couplings,
    straightness,
)
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step

OUT_DIR = "outputs/fewstep"
NFES = (1, 2, 4)
NUM_EVAL = 4096


# -- shared with experiments.fewstep_progressive ----------------------------------------------
def make_network(seed: int, prediction: str = "velocity", *, second_time: bool = False, width: int = 128,
                 depth: int = 3) -> nnx.Module:  # fmt: skip
    cfg = ResidualMLPConfig(dim=2, width=width, depth=depth, prediction=prediction, second_time=second_time)
    return ResidualMLP(cfg, rngs=nnx.Rngs(seed))


def train_network(network, loss, batch_fn, *, num_steps: int, seed: int, lr: float = 2e-3,
                  chunk: int = 250):  # fmt: skip
    """Train `network` on loss(model, batch, key) with batches batch_fn(key), adam with cosine decay and
    an EMA (decay 0.999, warm-up); `chunk` steps per compiled lax.scan. Returns (EMA network, losses
    (num_steps,), wall time in s)."""
    chunk = min(chunk, num_steps)
    if num_steps % chunk:
        raise ValueError(f"train_network: num_steps={num_steps} must be a multiple of chunk={chunk}.")
    graphdef, params = nnx.split(network, nnx.Param)
    schedule = optax.cosine_decay_schedule(lr, num_steps, alpha=0.02)
    optimizer = optax.adam(schedule)

    def loss_fn(p, batch, key):
        return loss(nnx.merge(graphdef, p), batch, key)

    step = make_train_step(loss_fn, optimizer, ema_decay=0.999)

    @jax.jit
    def run_chunk(state, key):
        def body(state, k):
            state, metrics = step(state, batch_fn(k))
            return state, metrics["loss"]

        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    state = create_train_state(params, optimizer, jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), num_steps // chunk)
    t0, losses = time.perf_counter(), []
    for k in keys:
        state, chunk_losses = run_chunk(state, k)
        losses.append(chunk_losses)
    losses = np.asarray(jnp.concatenate(losses))
    wall = time.perf_counter() - t0
    return nnx.merge(graphdef, state.ema_params), losses, wall


def endpoint_errors(samples, reference) -> dict:
    """Median and RMSE of ‖x_i − Φ_exact(z_i)‖."""
    err = np.linalg.norm(np.asarray(samples, np.float64) - np.asarray(reference, np.float64), axis=1)
    return {"median": float(np.median(err)), "rmse": float(np.sqrt(np.mean(err**2)))}


def solver_errors(model, process, z, reference, solver: str, nfes=NFES, **kw) -> dict:
    """Errors of `solver` at each budget of model evaluations, all from the same noise z."""
    rows = {}
    for nfe in nfes:
        res = dj.sample(solver, model, process, jax.random.key(0), x_init=z, nfe=nfe, **kw)
        rows[int(nfe)] = {"nfe_used": int(res.nfe), **endpoint_errors(res.samples, reference)}
    return rows


# -- the experiment ------------------------------------------------------------------------
def teacher_couplings(model, path, num_pairs: int, seed: int, solver="heun", steps=128) -> Couplings:
    """The teacher's couplings, from outputs/fewstep/reflow_couplings.npz if they match."""
    file = os.path.join(OUT_DIR, "reflow_couplings.npz")
    if os.path.exists(file):
        pairs = load_couplings(file)
        h = pairs.header
        made = (len(pairs), h.get("num_steps"), h.get("seed"), h.get("solver"))
        if made == (num_pairs, steps, seed, "Heun()"):
            return pairs
    pairs = make_couplings(model, path, jax.random.key(seed), (num_pairs, 2), solver=solver, num_steps=steps)
    header = dict(pairs.header, seed=seed, teacher="exact mixture_2d velocity")
    pairs = Couplings(pairs.noise, pairs.data, json.dumps(header, sort_keys=True))
    save_couplings(file, pairs)
    return pairs


def flow_report(model, path, z, reference, *, learned: bool) -> dict:
    euler = solver_errors(model, path, z, reference, "euler")
    row = {"straightness": float(straightness(model, path, z, num_steps=64)), "euler": euler}
    if learned:  # the discretisation error alone: against the model's own fine solve
        fine = dj.sample("heun", model, path, jax.random.key(0), x_init=z, num_steps=128).samples
        row["fine_vs_exact"] = endpoint_errors(fine, reference)
        row["euler_vs_own_fine"] = {k: endpoint_errors(
            dj.sample("euler", model, path, jax.random.key(0), x_init=z, num_steps=k).samples, fine)
            for k in NFES}  # fmt: skip
    return row


def run(process_name: str = "condot", num_steps: int = 4000, seed: int = 0, num_pairs: int = 65536,
        batch_size: int = 512, couplings2_steps: int = 16) -> dict:  # fmt: skip
    if process_name != "condot":
        raise ValueError("fewstep_reflow: reflow is run on the CondOT path (process_name='condot').")
    t_start = time.perf_counter()
    mixture, path = dj.ring_mixture(8, radius=4.0, std=0.5), dj.CondOTPath()  # samplers_util.mixture_2d
    teacher = mixture.model(path, "velocity")
    z = jax.random.normal(jax.random.key(1234), (NUM_EVAL, 2))
    reference = jax.jit(mixture.consistency_function(path))(z, path.t_noise)
    out = {"process": process_name, "num_steps": num_steps, "seed": seed, "num_pairs": num_pairs,
           "batch_size": batch_size, "flows": {}, "distilled": {}, "train_wall_s": {}}  # fmt: skip

    row = flow_report(teacher, path, z, reference, learned=False)
    row["heun"] = solver_errors(teacher, path, z, reference, "heun")
    out["flows"]["teacher (exact)"] = row

    t0 = time.perf_counter()
    pairs = teacher_couplings(teacher, path, num_pairs, seed)
    out["couplings_wall_s"] = time.perf_counter() - t0
    out["couplings_header"] = pairs.header

    def pair_batch(p, key):
        idx = jax.random.randint(key, (batch_size,), 0, len(p))
        return p.noise[idx], p.data[idx]

    # the 2-rectified flow: reflow of the teacher's couplings
    reflow = functools.partial(reflow_loss, process=path)
    net, losses, wall = train_network(
        make_network(seed), lambda m, b, k: reflow(m, b, k), functools.partial(pair_batch, pairs),
        num_steps=num_steps, seed=seed)  # fmt: skip
    out["train_wall_s"]["reflow"] = wall
    out["flows"]["reflow (2-RF)"] = flow_report(net, path, z, reference, learned=True)
    out["flows"]["reflow (2-RF)"]["final_loss"] = float(losses[-200:].mean())

    # the same network by plain flow matching on fresh data (the 1-rectified flow), for reference
    def data_batch(key):
        return mixture.sample(key, batch_size)[0]

    cfm = functools.partial(dj.cfm_loss, process=path)
    net1, losses1, wall1 = train_network(make_network(seed), cfm, data_batch, num_steps=num_steps, seed=seed)
    out["train_wall_s"]["cfm"] = wall1
    out["flows"]["CFM (1-RF)"] = flow_report(net1, path, z, reference, learned=True)

    # one-step distillation into a flow map: of the reflowed flow's couplings, and of the teacher's
    t0 = time.perf_counter()
    pairs2 = make_couplings(net, path, jax.random.key(seed + 7), (num_pairs, 2), solver="heun",
                            num_steps=couplings2_steps)  # the 2-RF is nearly straight: few steps suffice
    out["couplings2_wall_s"] = time.perf_counter() - t0
    ts1 = jnp.asarray([path.t_noise, path.t_data])
    for name, p in (("distill 2-RF (1 step)", pairs2), ("distill teacher (1 step)", pairs)):
        fm_net = make_network(seed, second_time=True)
        loss = functools.partial(pair_distillation_loss, process=path)

        def flow_map_loss(m, b, k, loss=loss):
            return loss(AverageVelocityMap(m, path, keyword_s=True), b, k)

        fm_net, _, wall = train_network(fm_net, flow_map_loss, functools.partial(pair_batch, p),
                                        num_steps=num_steps, seed=seed)  # fmt: skip
        x1 = flow_map_sample(AverageVelocityMap(fm_net, path, keyword_s=True), path, z, ts1)
        out["distilled"][name] = {1: endpoint_errors(x1, reference)}
        out["train_wall_s"][name] = wall
    out["total_wall_s"] = time.perf_counter() - t_start
    return out


def table(res: dict) -> str:
    lines = ["| flow | S | Euler NFE 1 med / rmse | NFE 2 | NFE 4 | Euler vs own fine, NFE 1/2/4 (rmse) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in res["flows"].items():
        e = row["euler"]
        own = row.get("euler_vs_own_fine")
        own_s = " / ".join(f"{own[k]['rmse']:.3f}" for k in NFES) if own else "0 (exact)"
        lines.append(f"| {name} | {row['straightness']:.4f} | "
                     + " | ".join(f"{e[k]['median']:.3f} / {e[k]['rmse']:.3f}" for k in NFES)
                     + f" | {own_s} |")  # fmt: skip
        if "heun" in row:
            h = row["heun"]
            lines.append(f"| {name}, Heun (NFE used {', '.join(str(h[k]['nfe_used']) for k in NFES)}) | | "
                         + " | ".join(f"{h[k]['median']:.3f} / {h[k]['rmse']:.3f}" for k in NFES) + " | |")
    for name, row in res["distilled"].items():
        lines.append(f"| {name} | | {row[1]['median']:.3f} / {row[1]['rmse']:.3f} | | | |")
    lines.append("")
    lines.append("fine_vs_exact (128-step Heun of the learned flow vs the teacher's exact map, rmse): "
                 + ", ".join(f"{n}: {r['fine_vs_exact']['rmse']:.3f}" for n, r in res["flows"].items()
                             if "fine_vs_exact" in r))  # fmt: skip
    lines.append("wall time (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in res["train_wall_s"].items())
                 + f"; couplings {res['couplings_wall_s']:.1f}, total {res['total_wall_s']:.1f}")
    return "\n".join(lines)


def main() -> None:
    res = run()
    print(table(res))
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "reflow_2d.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
