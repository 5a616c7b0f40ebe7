"""MNIST, DDPM ε-loss on the linear 1000-step chain (Ho et al. 2020), small U-Net, CPU-sized.

    python experiments/train.py --config experiments/configs/mnist_ddpm.py --workdir outputs/mnist_ddpm \
        --config.data.data_dir=../shared/data/mnist
"""

import ml_collections


def unet_kwargs(**overrides):
    kw = dict(in_channels=1, image_size=28, channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
              attention_resolutions=(7,), num_groups=8, dropout=0.1, time_scale=1000.0)
    kw.update(overrides)
    return kw


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="mnist", data_dir="", source="auto", num_examples=0)
    c.model = dict(kind="unet", output="eps", kwargs=unet_kwargs(time_scale=1.0))
    c.process = dict(name="ddpm", kwargs=dict(num_steps=1000))
    c.loss = dict(name="ddpm", t_eps=0.0, weighting="eps")
    c.train = dict(num_steps=3000, batch_size=128, learning_rate=1e-3, warmup_steps=200,
                   weight_decay=0.0, clip_norm=1.0, ema_decay=0.995, checkpoint_every=500, keep=3,
                   log_every=50, sample_every=1000, label_dropout=0.0)
    c.sample = dict(sampler="ddim", num_steps=50, num_samples=64, guidance_scale=1.0)
    c.distributed = dict(coordinator_address="", num_processes=1, process_id=0)
    return c
