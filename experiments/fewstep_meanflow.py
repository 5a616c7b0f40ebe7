"""MeanFlow from scratch on the 2D ring, sampled in 1, 2 and 4 evaluations.

    python -m experiments.fewstep_meanflow               # CondOT: outputs/fewstep/meanflow_2d.json
    python -m experiments.fewstep_meanflow --process vp  # VP:     meanflow_2d_vp.json

Problem (the 2D few-step contract): `dj.ring_mixture(8, radius=4, std=0.5)` (= tests.samplers_util.
mixture_2d) under CondOT or VP; the teacher (for comparison only: MeanFlow here never sees it) is the
exact model `mixture.model(process, 'velocity')`.

Training: `diffjax.meanflow.meanflow_loss` with the conditional velocity (from scratch), the paper's
(t, s) sampler (logit-normal(−0.4, 1), 25% with s ≠ t) and adaptive weight (p = 1, c = 1e-3), on a
ResidualMLP with `second_time=True` (conditioned on (t, t − s)); adam with cosine decay, fresh ring
data each step, EMA 0.999 evaluated. Sampling: `flow_map_sample(AverageVelocityMap(net, process))`,
x ← x + (t_{i+1} − t_i)·u(x, t_i, t_{i+1}) on a uniform grid from the noise end to the data end
(VP: to its t_eps = 1e-3). Metric: ‖x_i − Φ_exact(z_i)‖ against the exact flow map from the same
noise z (4096 fixed draws), median and RMSE, and the log-density gap (nats/dim, 0 for exact samples);
the teacher's Euler, Heun and DPM-Solver++ at the same budgets from the same z beside it.

Also measured: the wall time of one train step of MeanFlow (forward + jvp + backward) against plain
conditional flow matching (`dj.cfm_loss` on u(x, t, t)) with the same network and batch.
"""

from __future__ import annotations

import argparse
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
from diffjax.meanflow import meanflow_loss, meanflow_times
from diffjax.models import ResidualMLP, ResidualMLPConfig
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step
from experiments.fewstep_consistency import endpoint_errors, teacher_rows

OUT_DIR = "outputs/fewstep"
NFES = (1, 2, 4)
NUM_EVAL = 4096
PROCESSES = {"condot": dj.CondOTPath, "vp": dj.VPSDE}


def make_network(seed: int, width: int = 128, depth: int = 3, time_scale: float = 1000.0) -> nnx.Module:
    """u_θ(x, t, s): a ResidualMLP conditioned on (t, t − s) (sinusoidal features of time_scale·t)."""
    cfg = ResidualMLPConfig(dim=2, width=width, depth=depth, second_time=True, prediction="velocity",
                            time_scale=time_scale)  # fmt: skip
    return ResidualMLP(cfg, rngs=nnx.Rngs(seed))


def two_time_model(network):
    """The (x, t, s) callable the loss sees."""
    return lambda x, t, s: network(x, t, s=s)


def make_losses(graphdef, process, adaptive_p: float = 1.0, **times):
    """loss_fn(params, x0, key) for MeanFlow (adaptive weight power p; times: options of
    `meanflow_times`) and for plain CFM on u(x, t, t) with the same t (the cost baseline)."""
    sampler = meanflow_times(process, **times)

    def meanflow(params, x0, key):
        net = two_time_model(nnx.merge(graphdef, params))
        return meanflow_loss(net, x0, key, process=process, time_sampler=sampler, adaptive_p=adaptive_p)

    def cfm(params, x0, key):
        net = nnx.merge(graphdef, params)
        return dj.cfm_loss(lambda x, t: net(x, t, s=t), x0, key, process=process, prediction="velocity",
                           time_sampler=lambda k, n: sampler(k, n)[0])  # fmt: skip

    return {"meanflow": meanflow, "cfm": cfm}


def make_chunk(loss_fn, optimizer, mixture, batch_size: int, chunk: int):
    """A jitted run of `chunk` train steps (lax.scan) on fresh ring data; returns (state, losses)."""
    step = make_train_step(lambda p, x0, k: loss_fn(p, x0, k), optimizer, ema_decay=0.999)

    @jax.jit
    def run_chunk(state, key):
        def body(state, k):
            state, metrics = step(state, mixture.sample(k, batch_size)[0])
            return state, metrics["loss"]

        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    return run_chunk


def train(loss_fn, params, mixture, *, num_steps: int, batch_size: int, seed: int, lr: float = 2e-3,
          chunk: int = 250):  # fmt: skip
    """Adam (cosine decay to 2% of lr) on loss_fn; returns (state, losses (num_steps,), wall time s)."""
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.02))
    run_chunk = make_chunk(loss_fn, optimizer, mixture, batch_size, chunk)
    state = create_train_state(params, optimizer, jax.random.key(seed))
    t0, losses = time.perf_counter(), []
    for k in jax.random.split(jax.random.key(seed + 1), num_steps // chunk):
        state, chunk_losses = run_chunk(state, k)
        losses.append(chunk_losses)
    losses = np.asarray(jnp.concatenate(losses))
    return state, losses, time.perf_counter() - t0


def step_cost(losses: dict, params, mixture, batch_size: int, chunk: int = 100, repeats: int = 5) -> dict:
    """Seconds per train step for each loss: the best of `repeats` compiled runs of `chunk` steps,
    the losses timed in turn within each repeat (so a busy machine slows them alike)."""
    optimizer = optax.adam(1e-3)
    runs, best = {}, {}
    for name, loss_fn in losses.items():
        run_chunk = make_chunk(loss_fn, optimizer, mixture, batch_size, chunk)
        state = create_train_state(params, optimizer, jax.random.key(0))
        jax.block_until_ready(run_chunk(state, jax.random.key(1)))  # compile
        runs[name], best[name] = (run_chunk, state), np.inf
    for r in range(repeats):
        for name, (run_chunk, state) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run_chunk(state, jax.random.key(2 + r)))
            best[name] = min(best[name], (time.perf_counter() - t0) / chunk)
    return {**best, "ratio": best["meanflow"] / best["cfm"]}


def meanflow_rows(network, process, z, reference, mixture, data_log_p) -> dict:
    """Errors of x ← Φ_θ(x, t_i, t_{i+1}) on a uniform grid of nfe steps from the noise end."""
    flow_map = AverageVelocityMap(two_time_model(network), process)
    rows = {}
    for nfe in NFES:
        ts = jnp.linspace(process.t_noise, process.data_end(), nfe + 1)
        x = jax.jit(lambda z, ts: flow_map_sample(flow_map, process, z, ts))(z, ts)
        rows[nfe] = {"nfe_used": nfe, "times": [round(float(t), 5) for t in ts],
                     **endpoint_errors(x, reference, mixture, data_log_p)}  # fmt: skip
    return rows


VARIANTS = {  # name -> options of make_losses (adaptive weight power p, time sampler)
    "MeanFlow p=0": {"adaptive_p": 0.0},
    "MeanFlow p=1 (paper's weight)": {"adaptive_p": 1.0},
}


def run(process_name: str = "condot", num_steps: int = 4000, seed: int = 0, batch_size: int = 512,
        time_scale: float = 1.0, variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:  # fmt: skip
    """MeanFlow from scratch (num_steps per variant) on the 2D ring; endpoint errors at NFE 1, 2, 4
    with the teacher's solvers beside them, and the train-step cost against CFM (module docstring).
    time_scale: the network's time-feature scale (sinusoidal features of time_scale·t and
    time_scale·(t − s)); 1 here, since the target's (t − s)·∂_t u grows with the feature frequencies."""
    if process_name not in PROCESSES:
        raise ValueError(f"fewstep_meanflow: process_name must be one of {tuple(PROCESSES)}.")
    process = PROCESSES[process_name]()
    mixture = dj.ring_mixture(8, radius=4.0, std=0.5)
    teacher = mixture.model(process, "velocity")
    z = process.prior_std() * jax.random.normal(jax.random.key(1234), (NUM_EVAL, 2))
    reference = jax.jit(mixture.consistency_function(process))(z, process.t_noise)
    data_log_p = float(jax.jit(mixture.log_prob)(mixture.sample(jax.random.key(99), 20000)[0]).mean())
    graphdef, params = nnx.split(make_network(seed, time_scale=time_scale), nnx.Param)
    out = {"process": process_name, "num_steps": num_steps, "seed": seed, "batch_size": batch_size,
           "time_scale": time_scale,
           "teacher": teacher_rows(teacher, process, z, reference, mixture, data_log_p),
           "step_cost_s": step_cost(make_losses(graphdef, process), params, mixture, batch_size),
           "train_wall_s": {}, "final_loss": {}, "meanflow": {}}  # fmt: skip
    for name in variants:
        losses = make_losses(graphdef, process, **VARIANTS[name])
        state, loss_curve, wall = train(losses["meanflow"], params, mixture, num_steps=num_steps,
                                        batch_size=batch_size, seed=seed)  # fmt: skip
        out["train_wall_s"][name], out["final_loss"][name] = wall, float(loss_curve[-250:].mean())
        network = nnx.merge(graphdef, state.ema_params)
        out["meanflow"][name] = meanflow_rows(network, process, z, reference, mixture, data_log_p)
    exact = mixture.average_velocity(process)
    out["meanflow"]["exact u (oracle)"] = meanflow_rows(
        lambda x, t, s: exact(x, t, s), process, z, reference, mixture, data_log_p)
    return out


def table(out: dict) -> str:
    """The markdown table: median / RMSE endpoint error (and log p gap) per method and NFE."""
    head = "| method | " + " | ".join(f"NFE {k}: median / RMSE (log p gap)" for k in NFES) + " |"
    lines = [head, "|" + " --- |" * (len(NFES) + 1)]

    def cells(rows):
        res = []
        for k in NFES:
            r = rows.get(k) or rows.get(str(k))
            res.append("—" if r is None else
                       f"{r['median']:.3f} / {r['rmse']:.3f} ({r['log_p_gap']:+.2f})"
                       + ("" if r["nfe_used"] == k else f" [{r['nfe_used']} used]"))  # fmt: skip
        return res

    for name, rows in out["teacher"].items():
        lines.append(f"| teacher {name} | " + " | ".join(cells(rows)) + " |")
    for name, rows in out["meanflow"].items():
        lines.append(f"| {name} | " + " | ".join(cells(rows)) + " |")
    cost = out["step_cost_s"]
    return "\n".join(lines) + (
        f"\n\ntraining: {out['num_steps']} steps × batch {out['batch_size']} per variant ("
        + ", ".join(f"{k}: {v:.0f} s" for k, v in out["train_wall_s"].items()) + "); "
        f"train step {1e3 * cost['meanflow']:.2f} ms (MeanFlow) vs {1e3 * cost['cfm']:.2f} ms (CFM): "
        f"ratio {cost['ratio']:.2f}"
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--process", default="condot", choices=sorted(PROCESSES))
    parser.add_argument("--num_steps", type=int, default=4000, help="MeanFlow training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = run(args.process, args.num_steps, args.seed)
    print(table(out))
    os.makedirs(OUT_DIR, exist_ok=True)
    suffix = "" if args.process == "condot" else f"_{args.process}"
    with open(os.path.join(OUT_DIR, f"meanflow_2d{suffix}.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
