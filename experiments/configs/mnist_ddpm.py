"""MNIST, DDPM ε-loss on the linear 1000-step chain (Ho et al. 2020), small U-Net, CPU-sized.

The MNIST configs share this U-Net: 16 base channels, multipliers (1, 2, 4), one residual block per
resolution, attention at 7×7 (≈0.72M parameters) and 1500 steps of batch 128 — sized to give
recognisable digits in about 20 minutes on 2 CPU cores. On a GPU use wider settings, e.g.
`--config.model.kwargs.channels=64 --config.model.kwargs.num_res_blocks=2 --config.train.num_steps=20000`.

    python -m experiments.train --config experiments/configs/mnist_ddpm.py --workdir outputs/mnist_ddpm \
        --config.data.data_dir=../shared/data/mnist
"""

from experiments.configs import base


def unet_kwargs(**overrides):
    kw = dict(in_channels=1, image_size=28, channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
              attention_resolutions=(7,), num_groups=8, dropout=0.0, time_scale=1000.0)
    kw.update(overrides)
    return kw


def get_config():
    c = base.get_config()
    c.data.name = "mnist"
    c.model.update(kind="unet", prediction="eps", kwargs=unet_kwargs(time_scale=1.0))
    c.process = dict(name="ddpm", kwargs=dict(num_steps=1000))
    c.loss.update(name="ddpm", weighting="eps", time="uniform", time_kwargs={}, t_eps=0.0)
    c.train.update(num_steps=1500, batch_size=128, learning_rate=2e-3, warmup_steps=100,
                   weight_decay=0.0, clip_norm=1.0, ema_decay=0.995, checkpoint_every=500, keep=3,
                   log_every=50, sample_every=500, label_dropout=0.0)
    c.sample.update(sampler="ddim", num_steps=50, num_samples=64, guidance_scale=1.0, clip_denoised=True,
                    options={})
    return c
