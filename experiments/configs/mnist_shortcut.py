"""MNIST shortcut model (Frans et al. 2024): a two-time U-Net u(x, t, s) on the CondOT path, fine-tuned
from the flow-matching run (its velocity network becomes the diagonal u(x, t, t); the interval embedding
starts at zero) with the teacher's velocity on the diagonal, and the flow map's self-consistency at
dyadic steps down to 1/32 of the path for half of each batch; sampled in 1, 2 or 4 jumps:

    python -m experiments.train --config experiments/configs/mnist_shortcut.py \
        --workdir outputs/mnist_shortcut --config.data.data_dir=../shared/data/mnist
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.model.kwargs = {**c.model.kwargs, "second_time": True}
    c.loss.name = "shortcut"
    c.loss.options = dict(max_steps=32, bootstrap_fraction=0.5)
    c.teacher.workdir = "outputs/mnist_fm"
    c.train.update(init_from="outputs/mnist_fm", num_steps=400, learning_rate=5e-4, warmup_steps=20,
                   checkpoint_every=200, sample_every=0)  # fmt: skip
    c.sample.update(sampler="flow_map", num_steps=2, clip_denoised=True)
    return c
