"""MNIST class-conditional flow matching with label dropout, sampled with classifier-free guidance.

    python experiments/train.py --config experiments/configs/mnist_cfg.py --workdir outputs/mnist_cfg \
        --config.data.data_dir=../shared/data/mnist
"""

from mnist_fm import get_config as fm_config


def get_config():
    c = fm_config()
    c.model.kwargs["num_classes"] = 10
    c.train.label_dropout = 0.1
    c.sample.guidance_scale = 2.0
    return c
