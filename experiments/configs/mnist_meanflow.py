"""MNIST MeanFlow (Geng et al. 2025): a two-time U-Net u(x, t, s) on the CondOT path, sampled in one
or two jumps. Fine-tuned from the flow-matching run (its velocity network becomes the diagonal
u(x, t, t) = v(x, t); the new interval embedding starts at zero) and distilled from it (the teacher's
velocity replaces the conditional one in the MeanFlow target):

    python -m experiments.train --config experiments/configs/mnist_meanflow.py \
        --workdir outputs/mnist_meanflow --config.data.data_dir=../shared/data/mnist \
        --config.train.init_from=outputs/mnist_fm --config.teacher.workdir=outputs/mnist_fm

Without init_from / teacher.workdir it trains MeanFlow from scratch on the data alone.
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.model.kwargs = {**c.model.kwargs, "second_time": True}
    c.loss.name = "meanflow"
    c.loss.options = dict(ratio=0.25, adaptive_p=1.0)
    c.train.update(num_steps=600, learning_rate=1e-3, warmup_steps=50, checkpoint_every=100,
                   sample_every=0)
    c.sample.update(sampler="flow_map", num_steps=1)
    return c
