"""MNIST, conditional flow matching on the CondOT (rectified-flow) path, velocity-predicting U-Net.

    python experiments/train.py --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm \
        --config.data.data_dir=../shared/data/mnist
"""

from mnist_ddpm import get_config as ddpm_config
from mnist_ddpm import unet_kwargs


def get_config():
    c = ddpm_config()
    c.model.output = "velocity"
    c.model.kwargs = unet_kwargs(time_scale=1000.0)
    c.process = dict(name="condot", kwargs={})
    c.loss = dict(name="cfm", t_eps=0.0, weighting="eps")
    c.sample.sampler = "heun"
    c.sample.num_steps = 20
    return c
