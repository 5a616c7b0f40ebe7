"""MNIST, VP SDE with the ε-weighted denoising score-matching loss (Song et al. 2021).

    python -m experiments.train --config experiments/configs/mnist_vp.py --workdir outputs/mnist_vp \
        --config.data.data_dir=../shared/data/mnist
"""

from experiments.configs import mnist_ddpm


def get_config():
    c = mnist_ddpm.get_config()
    c.model.kwargs = mnist_ddpm.unet_kwargs(time_scale=1000.0)
    c.process = dict(name="vp", kwargs={})
    # as Song et al. (2021): training times from 1e-5, where the likelihood starts
    c.loss.update(name="dsm", weighting="eps", time="uniform", time_kwargs={}, t_eps=1e-5)
    c.sample.sampler = "dpm_solver_pp"
    c.sample.num_steps = 20
    return c
