"""MNIST, VP SDE with the ε-weighted denoising score-matching loss (Song et al. 2021).

    python experiments/train.py --config experiments/configs/mnist_vp.py --workdir outputs/mnist_vp \
        --config.data.data_dir=../shared/data/mnist
"""

from mnist_ddpm import get_config as ddpm_config
from mnist_ddpm import unet_kwargs


def get_config():
    c = ddpm_config()
    c.model.kwargs = unet_kwargs(time_scale=1000.0)
    c.process = dict(name="vp", kwargs={})
    c.loss = dict(name="dsm", t_eps=1e-5, weighting="eps")  # as Song et al. (2021); likelihoods start at 1e-5
    c.sample.sampler = "dpm_solver_pp"
    c.sample.num_steps = 20
    return c
