"""EDM2's learned loss weighting (Karras et al. 2024, §5 "uncertainty"): a small network u(λ) of the
log-SNR whose per-example loss e^{−u}·L + u (`diffjax.losses.denoising_loss(log_uncertainty=…)`) is
minimised at u = log E[L | λ], so the network's regression is weighted by 1/E[L | λ] — every noise
level contributes equally — without a hand-tuned weighting.

`WithUncertainty` bundles a network with its u: it predicts like the network (same call, same
`prediction`), and `diffjax.training.model_loss` passes its `uncertainty` to the loss.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from diffjax.models.embeddings import sinusoidal_embedding


class UncertaintyWeight(nnx.Module):
    """u(λ) = Linear(sinusoidal features of c_noise = −λ/8), zero at initialisation (λ clipped to ±30)."""

    def __init__(self, features: int = 64, time_scale: float = 250.0, *, rngs: nnx.Rngs):
        self.features, self.time_scale = features, time_scale
        self.linear = nnx.Linear(features, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, log_snr: Float[Array, " B"]) -> Float[Array, " B"]:
        c_noise = -jnp.clip(log_snr, -30.0, 30.0) / 8.0
        return self.linear(sinusoidal_embedding(self.time_scale * c_noise, self.features))[:, 0]


class WithUncertainty(nnx.Module):
    """`network` plus its learned loss weighting `uncertainty`; called as the network."""

    def __init__(self, network: nnx.Module, *, rngs: nnx.Rngs):
        self.network = network
        self.uncertainty = UncertaintyWeight(rngs=rngs)
        self.prediction = getattr(network, "prediction", None)

    def __call__(self, *args, **kwargs):
        return self.network(*args, **kwargs)


__all__ = ["UncertaintyWeight", "WithUncertainty"]
