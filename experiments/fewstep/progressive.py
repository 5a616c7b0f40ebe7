"""Progressive distillation (Salimans & Ho 2022) of the exact teacher on the 2D ring: 16 → 8 → 4 → 2 → 1.

    python -m experiments.fewstep.progressive [--num_steps 2000] [--process vp|condot]

Under VP the teacher predicts ε and the students v (Salimans & Ho's choice); under CondOT teacher and
students predict the velocity. Stage 1 distils the exact teacher's 16-step DDIM into an 8-step
student (a fresh network, adam 2e-3); every later stage starts the student from its teacher's
weights (adam 5e-4) and halves the steps (`diffjax.distillation.progressive_distillation_loss`,
truncated-SNR weighting, uniform grids ending exactly at the data: DDIM never evaluates there).
num_steps: training steps per stage.

Rows (`experiments.fewstep.common`): method 'progressive', variant 'DDIM student', nfe = the
student's steps, train_wall_s / train_steps cumulative over the stages that made it (extra keys:
stage_wall_s, final_loss); and the exact teacher's DDIM, Euler and DPM-Solver++ on the same uniform
grid to t = t_data (t_eps = 0) at 16, 8, 4, 2, 1 steps (method 'teacher', variants '… (uniform, t_eps=0)').
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

import diffjax as dj
from diffjax.distillation import progressive_distillation_loss
from experiments.fewstep import common

PREDICTIONS = {"vp": ("eps", "v"), "condot": ("velocity", "velocity")}  # (teacher, students)
TEACHER_SOLVERS = {"ddim": "DDIM", "euler": "Euler", "dpm_solver_pp": "DPM-Solver++"}


def ddim_metrics(model, problem: common.Problem, num_steps: int, solver: str = "ddim") -> dict:
    """Metrics of `solver` with num_steps uniform steps to the data end itself (t_eps = 0) from z."""
    res = dj.sample(solver, model, problem.process, jax.random.key(0), x_init=problem.z, num_steps=num_steps,
                    t_eps=0.0)  # fmt: skip
    return {**common.endpoint_metrics(res.samples, problem, num_steps), "nfe_used": int(res.nfe)}


def _frozen_call(graphdef, params, x, t):
    return nnx.merge(graphdef, params)(x, t)


def run(problem: common.Problem, num_steps: int = 2000, seed: int = 0, teacher_steps: int = 16,
        batch_size: int = 512) -> list[dict]:  # fmt: skip
    """The rows of progressive distillation 16 → … → 1 on `problem` (module docstring)."""
    teacher_pred, student_pred = PREDICTIONS[problem.process_name]
    exact = problem.teacher(teacher_pred)
    nfes = [teacher_steps >> i for i in range(teacher_steps.bit_length())]  # 16, 8, 4, 2, 1
    rows = [common.row(problem, "teacher", f"{name} (uniform, t_eps=0)",
                       ddim_metrics(exact, problem, n, solver))
            for solver, name in TEACHER_SOLVERS.items() for n in nfes]  # fmt: skip

    teacher, teacher_prediction = exact, teacher_pred
    network = common.make_network(seed, prediction=student_pred)
    total_wall = 0.0
    for stage, n_student in enumerate(nfes[1:]):
        loss = functools.partial(progressive_distillation_loss, teacher=teacher, process=problem.process,
                                 num_student_steps=n_student,
                                 teacher_prediction=teacher_prediction)  # fmt: skip
        network, losses, wall = common.train(network, loss, problem.data_batch(batch_size),
                                             num_steps=num_steps, seed=seed + stage,
                                             lr=2e-3 if stage == 0 else 5e-4)  # fmt: skip
        total_wall += wall
        metrics = ddim_metrics(network, problem, n_student)
        rows.append(common.row(problem, "progressive", "DDIM student", metrics, train_wall_s=total_wall,
                               train_steps=num_steps * (stage + 1), stage_wall_s=wall,
                               final_loss=float(losses[-200:].mean())))  # fmt: skip
        graphdef, params = nnx.split(network)
        teacher = jax.tree_util.Partial(_frozen_call, graphdef, jax.lax.stop_gradient(params))
        teacher_prediction = student_pred
        network = nnx.merge(graphdef, jax.tree.map(jnp.array, params))  # the next student starts here
    return rows


def main(argv=None) -> list[dict]:
    args = common.parser(__doc__, default_steps=2000, processes=("vp", "condot")).parse_args(argv)
    return common.run_processes(run, args, ("vp", "condot"))


if __name__ == "__main__":
    main()
