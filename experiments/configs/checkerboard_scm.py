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
    c.loss.name = "consistency_continuous"
    c.loss.options = dict(tangent_c=0.1)
    return c
