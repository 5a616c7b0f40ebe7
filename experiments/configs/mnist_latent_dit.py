"""MNIST latent diffusion (Rombach et al. 2022): flow matching on the CondOT path in the 7×7×4 latent
space of a KL autoencoder (`mnist_autoencoder.py`), with mnist_dit's transformer on 1×1 patches — the
same 49 tokens as mnist_dit's 4×4 pixel patches, so a step costs the same; samples are decoded.

    python -m experiments.train_autoencoder --config experiments/configs/mnist_autoencoder.py \
        --workdir outputs/mnist_autoencoder --config.data.data_dir=../shared/data/mnist
    python -m experiments.train --config experiments/configs/mnist_latent_dit.py \
        --workdir outputs/mnist_latent_dit \
        --config.data.latents=outputs/mnist_autoencoder

The latents are normalised to mean 0 and standard deviation 1 (`diffjax.latent`), so no x̂0 clipping.
Trained with mnist_dit's recipe (adam 2e-3, logit-normal times) for 1500 steps: the U-Net's
(`mnist_fm.py`) budget, a step costing 0.85× its step (bench/results/latent.md): FD-MNIST 159 (3 draws;
README). With uniform times and adam 1e-3 (`--config.loss.time=uniform
--config.train.learning_rate=1e-3`) it scored 254.
"""

from experiments.configs import mnist_dit


def get_config():
    c = mnist_dit.get_config()
    c.data.latents = "outputs/mnist_autoencoder"
    c.model.kwargs = mnist_dit.dit_kwargs(in_channels=4, image_size=7, patch_size=1)
    c.sample.clip_denoised = False
    c.sample.update(sampler="midpoint", num_steps=10)
    c.train.num_steps = 1500
    return c
