"""2D checkerboard with continuous-time consistency training (sCT; Lu & Song 2024, sCM; no teacher):
the consistency model of `checkerboard_ict` trained on the tangent of its own flow (one `jax.jvp` per
step, tangent normalisation), sampled in one step or a few. With a flow-matching run as the teacher
(`--config.teacher.workdir=outputs/checkerboard_fm`) the same loss is consistency distillation (sCD).

    python -m experiments.train --config experiments/configs/checkerboard_scm.py \
        --workdir outputs/checkerboard_scm
    python -m experiments.sample --workdir outputs/checkerboard_scm --sampler consistency --steps 2
"""

from experiments.configs import checkerboard_ict


def get_config():
    c = checkerboard_ict.get_config()
    c.model.noise_input = "trig"  # TrigFlow's τ ∈ [0, π/2] as the noise input (sCM)
    c.model.kwargs.update(time_scale=100.0)  # features of 100·τ (experiments.fewstep: 10, 30, 600 worse)
    c.loss.name = "consistency_continuous"
    c.loss.options = dict(warmup_steps=4500)  # r: 0 → 1 over ¾ of the run (experiments.fewstep: essential)
    c.loss.learned_weighting = True  # sCM's adaptive weighting u(λ)
    c.train.learning_rate = 5e-4  # 2e-3: some seeds fall off the data at 2–4 steps (experiments.fewstep)
    return c
