"""2D checkerboard with improved consistency training (iCT, Song & Dhariwal 2023; no teacher): a
consistency model f(x, t) (Song et al.'s c_skip/c_out around a residual MLP) on the CondOT path,
sampled in one step or a few (multistep consistency sampling).

    python -m experiments.train --config experiments/configs/checkerboard_ict.py \
        --workdir outputs/checkerboard_ict
    python -m experiments.sample --workdir outputs/checkerboard_ict --sampler consistency --steps 2
"""

from experiments.configs import checkerboard_fm


def get_config():
    c = checkerboard_fm.get_config()
    c.model.prediction = "x0"
    c.model.preconditioning = "consistency"
    c.model.kwargs.update(time_scale=250.0)  # the network sees EDM's c_noise ∈ [−3.75, 3.75]
    c.loss.name = "consistency_training"
    c.loss.options = dict(curriculum=True)  # iCT's levels 11 → 1281 over train.num_steps (eq. 11)
    c.sample.update(sampler="consistency", num_steps=1)
    return c
