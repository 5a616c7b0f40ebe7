"""Reflow of the exact teacher on the 2D ring (Liu et al. 2022), then one-step distillation (CondOT only).

    python -m experiments.fewstep.reflow [--num_steps 4000]

1. couplings (z, Φ_teacher(z)) from a 128-step Heun solve of the exact teacher
   (`diffjax.reflow.make_couplings`), cached in outputs/fewstep/reflow_couplings.npz and reused when
   its header matches;
2. a velocity network trained on them by `reflow_loss` (the 2-rectified flow) and, for reference,
   the same network by plain conditional flow matching on fresh data (the 1-rectified flow);
3. one-step distillation (`pair_distillation_loss`, k = 1) into an `AverageVelocityMap` (a network
   with `second_time`) of (a) the 2-RF's own couplings (a 16-step Heun solve of the nearly straight
   2-RF) and (b) the teacher's couplings.

Rows (`experiments.fewstep.common`): method 'reflow', variants '2-RF, Euler' and '1-RF (CFM), Euler'
at NFE 1, 2, 4 with extra keys straightness (Liu et al.'s S of that flow, RK4 with 64 steps on z),
straightness_teacher (S of the exact teacher: before reflow), self_median / self_rmse (the k-step
Euler against the flow's own 128-step Heun solve: the discretisation error alone, which reflow is
meant to remove), fine_median / fine_rmse (that fine solve against the exact map) and final_loss;
'1-step distillation of 2-RF' (train_wall_s: reflow + its couplings + distillation) and '1-step
distillation of the teacher' at NFE 1.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp

import diffjax as dj
from diffjax.flow_map import AverageVelocityMap, flow_map_sample
from diffjax.reflow import (
    Couplings,
    load_couplings,
    make_couplings,
    pair_distillation_loss,
    reflow_loss,
    save_couplings,
    straightness,
)
from experiments.fewstep import common

COUPLINGS = os.path.join(common.OUT_DIR, "reflow_couplings.npz")


def teacher_couplings(problem: common.Problem, num_pairs: int, seed: int, steps: int = 128,
                      cache: str | None = COUPLINGS) -> Couplings:  # fmt: skip
    """The teacher's couplings (Heun, `steps` steps, noise from key(seed)), from the file `cache` if its
    header matches, else made and saved there (cache None: neither)."""
    if cache and os.path.exists(cache):
        pairs = load_couplings(cache)
        h = pairs.header
        made = (len(pairs), h.get("num_steps"), h.get("seed"), h.get("solver"))
        if made == (num_pairs, steps, seed, "Heun()"):
            return pairs
    pairs = make_couplings(problem.teacher(), problem.process, jax.random.key(seed), (num_pairs, 2),
                           solver="heun", num_steps=steps)  # fmt: skip
    header = dict(pairs.header, seed=seed, teacher="exact mixture_2d velocity")
    pairs = Couplings(pairs.noise, pairs.data, json.dumps(header, sort_keys=True))
    if cache:
        save_couplings(cache, pairs)
    return pairs


def flow_rows(model, problem: common.Problem, variant: str, **extra) -> list[dict]:
    """Euler at NFE 1, 2, 4 of a learned velocity, with its straightness and 'self' error."""
    path, z = problem.process, problem.z
    s = float(straightness(model, path, z, num_steps=64))
    fine = dj.sample("heun", model, path, jax.random.key(0), x_init=z, num_steps=128).samples
    fine_m = common.endpoint_metrics(fine, problem, 256)
    rows = []
    for nfe in common.NFES:
        res = dj.sample("euler", model, path, jax.random.key(0), x_init=z, num_steps=nfe)
        own = common.endpoint_metrics(res.samples, problem, nfe, reference=fine)
        rows.append(common.row(problem, "reflow", variant, common.endpoint_metrics(res.samples, problem, nfe),
                               straightness=s, self_median=own["median"], self_rmse=own["rmse"],
                               fine_median=fine_m["median"], fine_rmse=fine_m["rmse"], **extra))  # fmt: skip
    return rows


def run(problem: common.Problem, num_steps: int = 4000, seed: int = 0, num_pairs: int = 65536,
        batch_size: int = 512, couplings2_steps: int = 16,
        cache: str | None = COUPLINGS) -> list[dict]:  # fmt: skip
    """The rows of reflow, its CFM reference and the two one-step distillations (module docstring);
    cache: the file of the teacher's couplings (None: made afresh, not saved)."""
    if problem.process_name != "condot":
        raise ValueError("fewstep.reflow: reflow is run on the CondOT path (--process condot).")
    path = problem.process
    s_teacher = float(straightness(problem.teacher(), path, problem.z, num_steps=64))
    t0 = time.perf_counter()
    pairs = teacher_couplings(problem, num_pairs, seed, cache=cache)
    couplings_wall = time.perf_counter() - t0

    def pair_batch(p, key):
        idx = jax.random.randint(key, (batch_size,), 0, len(p))
        return p.noise[idx], p.data[idx]

    reflow = functools.partial(reflow_loss, process=path)
    net2, losses, wall2 = common.train(common.make_network(seed), reflow,
                                       functools.partial(pair_batch, pairs), num_steps=num_steps,
                                       seed=seed)  # fmt: skip
    rows = flow_rows(net2, problem, "2-RF, Euler", train_wall_s=wall2, train_steps=num_steps,
                     straightness_teacher=s_teacher, final_loss=float(losses[-200:].mean()),
                     couplings_wall_s=couplings_wall)  # fmt: skip

    cfm = functools.partial(dj.cfm_loss, process=path)
    net1, losses1, wall1 = common.train(common.make_network(seed), cfm, problem.data_batch(batch_size),
                                        num_steps=num_steps, seed=seed)  # fmt: skip
    rows += flow_rows(net1, problem, "1-RF (CFM), Euler", train_wall_s=wall1, train_steps=num_steps,
                      straightness_teacher=s_teacher, final_loss=float(losses1[-200:].mean()))  # fmt: skip

    t0 = time.perf_counter()
    pairs2 = make_couplings(
        net2, path, jax.random.key(seed + 7), (num_pairs, 2), solver="heun", num_steps=couplings2_steps
    )  # the 2-RF is nearly straight: few steps suffice
    couplings2_wall = time.perf_counter() - t0
    ts1 = jnp.asarray([path.t_noise, path.t_data])
    loss = functools.partial(pair_distillation_loss, process=path)

    def flow_map_loss(m, b, k):
        return loss(AverageVelocityMap(m, path, keyword_s=True), b, k)

    for variant, p, before in (("1-step distillation of 2-RF", pairs2, wall2 + couplings2_wall),
                               ("1-step distillation of the teacher", pairs, 0.0)):  # fmt: skip
        fm_net, _, wall = common.train(common.make_network(seed, second_time=True), flow_map_loss,
                                       functools.partial(pair_batch, p), num_steps=num_steps,
                                       seed=seed)  # fmt: skip
        x1 = flow_map_sample(AverageVelocityMap(fm_net, path, keyword_s=True), path, problem.z, ts1)
        rows.append(common.row(problem, "reflow", variant, common.endpoint_metrics(x1, problem, 1),
                               train_wall_s=before + wall, train_steps=num_steps * (2 if before else 1),
                               distill_wall_s=wall,
                               **({"couplings_wall_s": couplings2_wall} if before else {})))  # fmt: skip
    return rows


def main(argv=None) -> list[dict]:
    args = common.parser(__doc__, default_steps=4000, processes=("condot",)).parse_args(argv)
    return common.run_processes(run, args, ("condot",))


if __name__ == "__main__":
    main()
