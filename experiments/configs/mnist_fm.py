"""MNIST, conditional flow matching on the CondOT (rectified-flow) path, velocity-predicting U-Net.

    python -m experiments.train --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm \
        --config.data.data_dir=../shared/data/mnist
"""

from experiments.configs import mnist_ddpm


def get_config():
    c = mnist_ddpm.get_config()
    c.model.prediction = "velocity"
    c.model.kwargs = mnist_ddpm.unet_kwargs(time_scale=1000.0)
    c.process = dict(name="condot", kwargs={})
    c.loss.update(name="cfm", weighting="none", time="uniform", time_kwargs={}, t_eps=0.0)
    c.sample.sampler = "heun"
    c.sample.num_steps = 20
    return c
