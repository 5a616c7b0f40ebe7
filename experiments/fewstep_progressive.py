"""Progressive distillation (Salimans & Ho 2022) of the exact teacher on the 2D ring: 16 → 8 → 4 → 2 → 1.

    python -m experiments.fewstep_progressive      # writes outputs/fewstep/progressive_2d.json

Problem (the 2D few-step contract): `dj.ring_mixture(8)` (= tests.samplers_util.mixture_2d) under the
VP SDE (teacher ε-prediction, students v-prediction, Salimans & Ho's choice) and the CondOT path (teacher
and students velocity). Stage 1 distils the exact teacher's 16-step DDIM into an 8-step student (a
fresh ResidualMLP); every later stage starts the student from its teacher's weights and halves the
steps (`diffjax.distillation.progressive_distillation_loss`, truncated-SNR weighting, uniform grids
ending exactly at the data: DDIM never evaluates there).

Metric: per-sample ‖x_i − Φ_exact(z_i)‖ against the exact flow map of the teacher from the same noise
(4096 fixed draws), median and RMSE; each student with N DDIM steps (NFE = N) next to the exact
teacher's DDIM, Euler and DPM-Solver++(2M) at the same NFE.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

import diffjax as dj
from diffjax.distillation import progressive_distillation_loss
from experiments.fewstep_reflow import NUM_EVAL, OUT_DIR, endpoint_errors, make_network, train_network

PROCESSES = {"vp": (dj.VPSDE, "eps", "v"), "condot": (dj.CondOTPath, "velocity", "velocity")}


def ddim_errors(model, process, z, reference, num_steps: int, solver: str = "ddim") -> dict:
    res = dj.sample(solver, model, process, jax.random.key(0), x_init=z, num_steps=num_steps, t_eps=0.0)
    return {"nfe_used": int(res.nfe), **endpoint_errors(res.samples, reference)}


def run(process_name: str = "vp", num_steps: int = 2000, seed: int = 0, teacher_steps: int = 16,
        batch_size: int = 512) -> dict:  # fmt: skip
    """num_steps: training steps per halving stage."""
    if process_name not in PROCESSES:
        raise ValueError(f"fewstep_progressive: process_name must be one of {tuple(PROCESSES)}.")
    t_start = time.perf_counter()
    make_process, teacher_pred, student_pred = PROCESSES[process_name]
    process = make_process()
    mixture = dj.ring_mixture(8, radius=4.0, std=0.5)
    z = jax.random.normal(jax.random.key(1234), (NUM_EVAL, 2))
    reference = jax.jit(mixture.consistency_function(process))(z, process.t_noise)
    exact = mixture.model(process, teacher_pred)
    out = {"process": process_name, "num_steps_per_stage": num_steps, "seed": seed, "batch_size": batch_size,
           "teacher": {}, "students": {}, "train_wall_s": {}}  # fmt: skip

    nfes = []
    n = teacher_steps
    while n >= 1:
        nfes.append(n)
        n //= 2
    for nfe in nfes:
        out["teacher"][nfe] = {
            "ddim": ddim_errors(exact, process, z, reference, nfe),
            "euler": ddim_errors(exact, process, z, reference, nfe, "euler"),
            "dpm_solver_pp": ddim_errors(exact, process, z, reference, nfe, "dpm_solver_pp"),
        }

    def data_batch(key):
        return mixture.sample(key, batch_size)[0]

    teacher, teacher_prediction = exact, teacher_pred
    network = make_network(seed, student_pred)
    for stage, n_student in enumerate(nfes[1:]):
        loss = functools.partial(
            progressive_distillation_loss, teacher=teacher, process=process, num_student_steps=n_student,
            teacher_prediction=teacher_prediction)  # fmt: skip
        network, losses, wall = train_network(network, loss, data_batch, num_steps=num_steps,
                                              seed=seed + stage, lr=2e-3 if stage == 0 else 5e-4)  # fmt: skip
        out["train_wall_s"][n_student] = wall
        row = ddim_errors(network, process, z, reference, n_student)
        row["final_loss"] = float(losses[-200:].mean())
        out["students"][n_student] = row
        graphdef, params = nnx.split(network)
        teacher = jax.tree_util.Partial(_frozen_call, graphdef, jax.lax.stop_gradient(params))
        teacher_prediction = student_pred
        network = nnx.merge(graphdef, jax.tree.map(jnp.array, params))  # the next student starts here
    out["total_wall_s"] = time.perf_counter() - t_start
    return out


def _frozen_call(graphdef, params, x, t):
    return nnx.merge(graphdef, params)(x, t)


def table(res: dict) -> str:
    lines = [f"process {res['process']}: error ‖x − Φ_exact(z)‖, median / rmse (4096 draws)", "",
             "| NFE | student (progressive) | teacher DDIM | teacher Euler | teacher DPM-Solver++ |",
             "|---|---|---|---|---|"]  # fmt: skip
    for nfe, row in res["teacher"].items():
        s = res["students"].get(nfe)
        cell = (lambda r: f"{r['median']:.3f} / {r['rmse']:.3f}")  # noqa: E731
        lines.append(f"| {nfe} | {cell(s) if s else '(teacher grid)'} | {cell(row['ddim'])} | "
                     f"{cell(row['euler'])} | {cell(row['dpm_solver_pp'])} |")  # fmt: skip
    lines.append("")
    lines.append("training wall time per stage (s): "
                 + ", ".join(f"{k}: {v:.1f}" for k, v in res["train_wall_s"].items())
                 + f"; total {res['total_wall_s']:.1f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    results = {}
    for name in ("vp", "condot"):
        results[name] = run(name)
        print(table(results[name]), "\n", flush=True)
    with open(os.path.join(OUT_DIR, "progressive_2d.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
