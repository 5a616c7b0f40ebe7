"""MNIST progressive distillation (Salimans & Ho 2022) of the flow-matching run: a student with the
teacher's network, started from its parameters, learns to match two teacher DDIM steps (Euler on the
CondOT path) in one. One round halves the steps; the next round uses this run as teacher:

    python -m experiments.train --config experiments/configs/mnist_progressive.py \
        --workdir outputs/mnist_pd4 --config.data.data_dir=../shared/data/mnist \
        --config.teacher.workdir=outputs/mnist_fm --config.train.init_from=outputs/mnist_fm \
        --config.loss.options.num_student_steps=4
    # then: --config.teacher.workdir=outputs/mnist_pd4 --config.train.init_from=outputs/mnist_pd4
    #       --config.loss.options.num_student_steps=2 --workdir outputs/mnist_pd2, and so on
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.loss.name = "progressive_distillation"
    c.loss.options = dict(num_student_steps=4, weighting="truncated_snr")
    c.teacher.workdir = "outputs/mnist_fm"
    c.train.update(init_from="outputs/mnist_fm", num_steps=300, learning_rate=5e-4, warmup_steps=20,
                   checkpoint_every=100, sample_every=0)  # fmt: skip
    c.sample.update(sampler="ddim", num_steps=4)
    return c
