"""MNIST consistency models on the CondOT path (Song et al. 2023): consistency distillation from the
flow-matching run (one Heun step of the teacher between neighbouring levels of an 18-step EDM grid)
or, without a teacher, improved consistency training (iCT, Song & Dhariwal 2023):

    python -m experiments.train --config experiments/configs/mnist_consistency.py \
        --workdir outputs/mnist_cd --config.data.data_dir=../shared/data/mnist \
        --config.teacher.workdir=outputs/mnist_fm
    python -m experiments.train --config experiments/configs/mnist_consistency.py:ict \
        --workdir outputs/mnist_ict --config.data.data_dir=../shared/data/mnist

Variants 'scd' and 'sct': continuous-time consistency distillation / training (sCM, Lu & Song 2024,
`continuous_consistency_loss`), the teacher 'outputs/mnist_fm' for 'scd' as for 'cd'.

The network F sits inside Song et al.'s c_skip/c_out (f(x, t_data) = x exactly) with σ_d = 0.96 (the
RMS of MNIST pixels in [−1, 1]); samples come from multistep consistency sampling.
"""

from experiments.configs import mnist_ddpm, mnist_fm

SIGMA_DATA = 0.96


def get_config(variant: str = "cd"):
    c = mnist_fm.get_config()
    c.model.update(prediction="x0", preconditioning="consistency", sigma_data=SIGMA_DATA,
                   kwargs=mnist_ddpm.unet_kwargs(time_scale=250.0))  # fmt: skip
    if variant == "ict":
        c.loss.update(name="consistency_training", options=dict(num_levels=161, distance="pseudo_huber"))
    elif variant == "cd":
        c.loss.update(name="consistency_distillation", options=dict(num_steps=18, solver="heun",
                                                                    distance="l2"))  # fmt: skip
        c.teacher.workdir = "outputs/mnist_fm"
    elif variant in ("scd", "sct"):  # continuous time (sCM): the tangent of f by one jax.jvp per step
        c.loss.update(name="consistency_continuous", options=dict(tangent_c=0.1))
        c.teacher.workdir = "outputs/mnist_fm" if variant == "scd" else ""
    else:
        raise ValueError(f"mnist_consistency: variant must be 'cd', 'ict', 'scd' or 'sct', got {variant!r}.")
    c.train.update(checkpoint_every=250, sample_every=0)
    c.sample.update(sampler="consistency", num_steps=1)
    return c
