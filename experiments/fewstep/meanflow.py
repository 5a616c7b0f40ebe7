"""MeanFlow from scratch on the 2D ring, sampled in 1, 2 and 4 evaluations (CondOT and VP).

    python -m experiments.fewstep.meanflow [--num_steps 4000] [--process condot|vp]

Training: `diffjax.meanflow.meanflow_loss` with the conditional velocity (the teacher is never seen),
the paper's (t, s) sampler (`meanflow_times`: logit-normal(−0.4, 1), 25% with s ≠ t) and its adaptive
weight with power p ∈ {0, 1} (p = 0, the plain squared error, is the better one here), and improved
MeanFlow (iMF: `tangent='model'`, du/dt along the network's own u(x, t, t); p = 0), on the network
of `common.make_network` with `second_time=True` (conditioned on (t, t − s)) and time_scale 1 (the
target's (t − s)·∂_t u grows with the time features' frequencies); adam 2e-3 with cosine decay,
EMA 0.999 evaluated. Sampling: `flow_map_sample(AverageVelocityMap(net, process))`,
x ← x + (t_{i+1} − t_i)·u(x, t_i, t_{i+1}) on a uniform grid from the noise end to the data end
(VP: to its t_eps = 1e-3).

Rows (`experiments.fewstep.common`): method 'meanflow', variants 'p=0', 'p=1 (paper's weight)' and
'iMF tangent (p=0)' (`--variants` picks some), and
method 'oracle', variant 'exact u, flow-map steps' (the exact average velocity
`mixture.average_velocity` through the same sampler: the pipeline check, 0 up to the grid's t_eps).
Extra keys: final_loss and the cost of one train step of that variant (forward + jvp + backward)
against plain conditional flow matching (`dj.cfm_loss` on u(x, t, t)) with the same network and batch:
step_ms_meanflow, step_ms_cfm, step_cost_ratio.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from diffjax.flow_map import AverageVelocityMap, flow_map_sample
from diffjax.meanflow import meanflow_loss, meanflow_times
from diffjax.training.state import create_train_state
from experiments.fewstep import common

VARIANTS = {  # name -> options of meanflow_loss
    "p=0": dict(adaptive_p=0.0),
    "p=1 (paper's weight)": dict(adaptive_p=1.0),
    "iMF tangent (p=0)": dict(adaptive_p=0.0, tangent="model"),
}


def make_losses(process, adaptive_p: float = 1.0, tangent: str = "velocity", **times) -> dict:
    """loss(network, x0, key) for MeanFlow (adaptive weight power p, direction of du/dt; times:
    options of `meanflow_times`) and for plain CFM on u(x, t, t) with the same t (the cost baseline)."""
    sampler = meanflow_times(process, **times)

    def meanflow(network, x0, key):
        return meanflow_loss(lambda x, t, s: network(x, t, s=s), x0, key, process=process,
                             time_sampler=sampler, adaptive_p=adaptive_p, tangent=tangent)  # fmt: skip

    def cfm(network, x0, key):
        return dj.cfm_loss(lambda x, t: network(x, t, s=t), x0, key, process=process, prediction="velocity",
                           time_sampler=lambda k, n: sampler(k, n)[0])  # fmt: skip

    return {"meanflow": meanflow, "cfm": cfm}


def _params_loss(loss, graphdef, params, x0, key):
    return loss(nnx.merge(graphdef, params), x0, key)


def step_cost(problem: common.Problem, network, batch_size: int, chunk: int = 100, repeats: int = 5,
              **options) -> dict:  # fmt: skip
    """Seconds per train step of MeanFlow (options: of `make_losses`, e.g. the tangent) and of CFM: the
    best of `repeats` compiled runs of `chunk` steps, the two timed in turn within each repeat (so a
    busy machine slows them alike)."""
    graphdef, params = nnx.split(network, nnx.Param)
    optimizer = optax.adam(1e-3)
    runs, best = {}, {}
    for name, loss in make_losses(problem.process, **options).items():
        loss_fn = functools.partial(_params_loss, loss, graphdef)
        run_chunk = common.make_run_chunk(loss_fn, optimizer, problem.data_batch(batch_size), chunk)
        state = create_train_state(params, optimizer, jax.random.key(0))
        jax.block_until_ready(run_chunk(state, jax.random.key(1)))  # compile
        runs[name], best[name] = (run_chunk, state), np.inf
    for r in range(repeats):
        for name, (run_chunk, state) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run_chunk(state, jax.random.key(2 + r)))
            best[name] = min(best[name], (time.perf_counter() - t0) / chunk)
    return {"step_ms_meanflow": 1e3 * best["meanflow"], "step_ms_cfm": 1e3 * best["cfm"],
            "step_cost_ratio": best["meanflow"] / best["cfm"]}  # fmt: skip


def flow_map_rows(u, problem: common.Problem, method: str, variant: str, **extra) -> list[dict]:
    """x ← Φ(x, t_i, t_{i+1}) = x + (t_{i+1} − t_i)·u(x, t_i, t_{i+1}) on uniform grids of 1, 2, 4 steps."""
    process = problem.process
    sample = jax.jit(lambda z, ts: flow_map_sample(AverageVelocityMap(u, process), process, z, ts))
    rows = []
    for nfe in common.NFES:
        x = sample(problem.z, jnp.linspace(process.t_noise, process.data_end(), nfe + 1))
        rows.append(common.row(problem, method, variant, common.endpoint_metrics(x, problem, nfe), **extra))
    return rows


def run(problem: common.Problem, num_steps: int = 4000, seed: int = 0, batch_size: int = 512,
        time_scale: float = 1.0, variants: tuple[str, ...] = tuple(VARIANTS)) -> list[dict]:  # fmt: skip
    """The rows of MeanFlow (num_steps per variant) on `problem` (module docstring)."""
    network = common.make_network(seed, second_time=True, time_scale=time_scale)
    rows = []
    for name in variants:
        cost = step_cost(problem, network, batch_size, **VARIANTS[name])
        loss = make_losses(problem.process, **VARIANTS[name])["meanflow"]
        trained, losses, wall = common.train(network, loss, problem.data_batch(batch_size),
                                             num_steps=num_steps, seed=seed)  # fmt: skip
        rows += flow_map_rows(lambda x, t, s, n=trained: n(x, t, s=s), problem, "meanflow", name,
                              train_wall_s=wall, train_steps=num_steps,
                              final_loss=float(losses[-250:].mean()), **cost)  # fmt: skip
    exact = problem.mixture.average_velocity(problem.process)
    return rows + flow_map_rows(exact, problem, "oracle", "exact u, flow-map steps")


def main(argv=None) -> list[dict]:
    p = common.parser(__doc__, default_steps=4000)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {tuple(VARIANTS)}")
    args = p.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {tuple(VARIANTS)}")
    return common.run_processes(run, args, variants=variants)


if __name__ == "__main__":
    main()
