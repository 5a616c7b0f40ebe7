"""MNIST first stage of latent diffusion: a KL-regularised autoencoder 28×28×1 → 7×7×4 (`diffjax.models.
Autoencoder`; 4× fewer numbers per image), trained by `experiments.train_autoencoder`,
which then caches the normalised latents of the training set for `mnist_latent_dit.py`.

    python -m experiments.train_autoencoder --config experiments/configs/mnist_autoencoder.py \
        --workdir outputs/mnist_autoencoder --config.data.data_dir=../shared/data/mnist

Its own schema (not experiments/configs/base.py): data, model.kwargs (`AutoencoderConfig`),
loss.kl_weight (β of `diffjax.latent.autoencoder_loss`), train (as experiments.train's).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="mnist", data_dir="", source="auto", num_examples=0)
    c.model = dict(kind="autoencoder",
                   kwargs=dict(in_channels=1, image_size=28, channels=32, channel_mults=(1, 2, 2),
                               num_res_blocks=1,
                               latent_channels=4, num_groups=8))  # fmt: skip
    c.loss = dict(kl_weight=1e-3)
    c.train = dict(
        num_steps=1500,
        batch_size=128,
        learning_rate=1e-3,
        warmup_steps=100,
        weight_decay=0.0,
        clip_norm=1.0,
        ema_decay=0.999,
        checkpoint_every=500,
        keep=2,
        log_every=100,
    )
    return c
