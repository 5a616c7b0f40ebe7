"""MNIST class-conditional flow matching with label dropout, sampled with classifier-free guidance.

    python -m experiments.train --config experiments/configs/mnist_cfg.py --workdir outputs/mnist_cfg \
        --config.data.data_dir=../shared/data/mnist
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.model.kwargs["num_classes"] = 10
    c.train.label_dropout = 0.1
    c.sample.guidance_scale = 2.0
    return c
