"""Latent diffusion (Rombach et al. 2022): a diffusion or flow model of the latents of a trained
autoencoder (`diffjax.models.Autoencoder`), normalised to unit scale, decoded to images after sampling.

    first stage   L(x) = mean over pixels of (x − D(z))²  +  β · mean over latent entries of
                         KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²),      z = μ(x) + σ(x) ε
    latents       z̃ = (μ(x) − shift) · scale,   shift = mean of μ, scale = 1 / std of μ over the data
    sampling      z̃ ~ the diffusion model of z̃,   x = D(z̃ / scale + shift)

The normalisation (Rombach et al.'s scale factor, with the shift of Esser et al. 2024) gives the
diffusion model data of mean 0 and standard deviation 1 whatever β did to the latents' scale, which is
what its noise schedule (and EDM's σ_data) assume. `LatentSpace.encode` / `.decode` are pure and
traceable; `encode_dataset` / `decode_latents` apply them compiled, in fixed-size batches.

Shapes: x (N, H, W, C) images in [−1, 1]; z̃ (N, h, w, c) = (N, *space.latent_shape).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from diffjax.evaluation.batching import map_batches
from diffjax.models.autoencoder import Autoencoder


def kl_to_standard_normal(mean: Array, log_var: Array) -> Array:
    """KL(N(mean, e^log_var) ‖ N(0, 1)) per entry: ½ (mean² + e^log_var − 1 − log_var)."""
    return 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)


def autoencoder_loss(autoencoder: Autoencoder, x: Float[Array, "N H W C"], key: jax.Array, *,
                     kl_weight: float = 1e-3) -> Array:  # fmt: skip
    """The first-stage loss of the module docstring: mean squared reconstruction error of a latent drawn
    from q(z | x) (reparameterised with `key`) plus kl_weight × the mean KL per latent entry (scalar)."""
    reconstruction, mean, log_var = autoencoder(x, key)
    return jnp.mean(jnp.square(reconstruction - x)) + kl_weight * jnp.mean(
        kl_to_standard_normal(mean, log_var)
    )


def latent_statistics(latents) -> tuple[float, float]:
    """(shift, scale) = (mean, 1 / standard deviation) over all entries of latents (N, h, w, c): the
    normalisation z̃ = (z − shift) · scale to mean 0 and standard deviation 1."""
    latents = np.asarray(latents, np.float64)
    std = float(latents.std())
    if not np.isfinite(std) or std <= 0:
        raise ValueError(
            f"latent_statistics: the latents have standard deviation {std}; need a positive one."
        )
    return float(latents.mean()), 1.0 / std


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """The normalised latent space of `autoencoder`: z̃ = (μ(x) − shift) · scale and back."""

    autoencoder: Autoencoder
    shift: float = 0.0
    scale: float = 1.0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, w, c): the shape of one latent."""
        return self.autoencoder.config.latent_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C): the shape of one image."""
        cfg = self.autoencoder.config
        return cfg.image_size, cfg.image_size, cfg.in_channels

    def encode(self, x: Float[Array, "N H W C"], key: jax.Array | None = None) -> Float[Array, "N h w c"]:
        """z̃ of images x: the posterior mean μ(x) (or, with `key`, a draw from q(z | x)), normalised."""
        mean, log_var = self.autoencoder.encode(x)
        z = mean if key is None else mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        return (z - self.shift) * self.scale

    def decode(self, z: Float[Array, "N h w c"]) -> Float[Array, "N H W C"]:
        """Images D(z̃ / scale + shift)."""
        return self.autoencoder.decode(z / self.scale + self.shift)


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _apply(graphdef, state, shift, scale, x, method):
    return getattr(LatentSpace(nnx.merge(graphdef, state), shift, scale), method)(x)


def _batched(space: LatentSpace, method: str, x, batch_size: int) -> np.ndarray:
    graphdef, state = nnx.split(space.autoencoder)
    shift, scale = np.float32(space.shift), np.float32(space.scale)
    return map_batches(lambda chunk: _apply(graphdef, state, shift, scale, chunk, method), x, batch_size)


def encode_dataset(space: LatentSpace, images, batch_size: int = 1000) -> np.ndarray:
    """z̃ (N, h, w, c) of images (N, H, W, C): `space.encode` (posterior means), compiled once, in batches."""
    return _batched(space, "encode", images, batch_size)


def decode_latents(space: LatentSpace, latents, batch_size: int = 1000) -> np.ndarray:
    """Images (N, H, W, C) of latents z̃ (N, h, w, c): `space.decode`, compiled once, in batches."""
    return _batched(space, "decode", latents, batch_size)


__all__ = [
    "LatentSpace", "autoencoder_loss", "decode_latents", "encode_dataset", "kl_to_standard_normal",
    "latent_statistics",
]  # fmt: skip
