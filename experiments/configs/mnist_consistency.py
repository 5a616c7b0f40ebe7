"""MNIST consistency models on the CondOT path (Song et al. 2023): consistency distillation from the
flow-matching run (one Heun step of the teacher between neighbouring levels of an 18-step EDM grid)
or, without a teacher, improved consistency training (iCT, Song & Dhariwal 2023; pseudo-Huber distance,
log-normal levels and its curriculum of 11 → 1281 levels over the run, `loss.options.curriculum`):

    python -m experiments.train --config experiments/configs/mnist_consistency.py \
        --workdir outputs/mnist_cd --config.data.data_dir=../shared/data/mnist \
        --config.teacher.workdir=outputs/mnist_fm
    python -m experiments.train --config experiments/configs/mnist_consistency.py:ict \
        --workdir outputs/mnist_ict --config.data.data_dir=../shared/data/mnist

Variants 'scd' and 'sct': continuous-time consistency distillation / training (sCM, Lu & Song 2024,
`continuous_consistency_loss`). 'scd' follows sCM's recipe: the student is the flow-matching teacher's
network itself, read as its own one-step DDIM jump (model.preconditioning='ddim_consistency': f = x̂0,
TrigFlow's parameterisation of a velocity network), so it starts as the teacher's one-step sampler and
the tangent warm-up moves it from there. The jvp differentiates the network's time features, so the
teacher is `mnist_fm` trained with features of 100·t (the shipped `pretrained:mnist_fm` has 1000·t; from
it, the same fine-tune scored FD-MNIST 1095 at one step, and diverged at lr 3e-4):

    python -m experiments.train --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm_t100 \
        --config.data.data_dir=../shared/data/mnist --config.model.kwargs.time_scale=100
    python -m experiments.train --config experiments/configs/mnist_consistency.py:scd \
        --workdir outputs/mnist_scd --config.data.data_dir=../shared/data/mnist

Measured (FD-MNIST, 1000 samples, three draws): 1600 steps 235 / 180 / 150 at 1 / 2 / 4 steps, resumed to
3200 203 / 143 / 115, to 6400 178 / 131 / 106 (shipped as `pretrained:mnist_scd`); the teacher at midpoint
10 steps 70.2. iCT (one draw): 476 / 306 / 229 at 1 / 2 / 4 steps after its 1500 steps × 128 (17.6 min);
consistency distillation from scratch 1093 / 1078 / 1049 after 1000 steps.

The network F sits inside Song et al.'s c_skip/c_out (f(x, t_data) = x exactly) with σ_d = 0.96 (the
RMS of MNIST pixels in [−1, 1]); samples come from multistep consistency sampling.
"""

from experiments.configs import mnist_ddpm, mnist_fm

SIGMA_DATA = 0.96
STEPS, WARMUP = 1600, 800  # sCD fine-tune: steps, and those over which the tangent warm-up r rises to 1
TEACHER_TIME_SCALE = 100.0  # the sCD teacher's (and student's) time features: 100·t


def get_config(variant: str = "cd"):
    c = mnist_fm.get_config()
    c.model.update(prediction="x0", preconditioning="consistency", sigma_data=SIGMA_DATA,
                   kwargs=mnist_ddpm.unet_kwargs(time_scale=250.0))  # fmt: skip
    if variant == "ict":
        c.loss.update(name="consistency_training", options=dict(curriculum=True, distance="pseudo_huber"))
    elif variant == "cd":
        c.loss.update(name="consistency_distillation", options=dict(num_steps=18, solver="heun",
                                                                    distance="l2"))  # fmt: skip
        c.teacher.workdir = "outputs/mnist_fm"
    elif variant == "sct":  # continuous time (sCM): the tangent of f by one jax.jvp per step
        c.model.update(noise_input="trig", kwargs=mnist_ddpm.unet_kwargs(time_scale=100.0))
        c.loss.update(name="consistency_continuous", options=dict(tangent_c=0.1))
    elif variant == "scd":  # the teacher's network as its own one-step jump, fine-tuned by sCD
        c.model.update(prediction="velocity", preconditioning="ddim_consistency",
                       kwargs=mnist_ddpm.unet_kwargs(time_scale=TEACHER_TIME_SCALE))  # fmt: skip
        c.loss.update(name="consistency_continuous", options=dict(tangent_c=0.1, warmup_steps=WARMUP))
        c.teacher.workdir = c.train.init_from = "outputs/mnist_fm_t100"
        c.train.update(num_steps=STEPS, batch_size=64, learning_rate=1e-4, warmup_steps=0, ema_decay=0.99)
    else:
        raise ValueError(f"mnist_consistency: variant must be 'cd', 'ict', 'scd' or 'sct', got {variant!r}.")
    c.train.update(checkpoint_every=250, sample_every=0)
    c.sample.update(sampler="consistency", num_steps=1)
    return c
