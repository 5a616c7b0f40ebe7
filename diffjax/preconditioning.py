"""EDM preconditioning (Karras et al. 2022, Table 1) for any Gaussian process.

Dividing x_t = α x0 + σ ε by α gives the variance-exploding form x̃ = x0 + σ̃ ε with σ̃ = σ/α = e^{−λ/2}
(λ the log-SNR), so every process — VP, VE, sub-VP, flow paths, the DDPM chain — has EDM's noise level
σ̃. The denoiser D ≈ E[x0 | x_t] is a raw network F wrapped as

    D(x; t) = c_skip(σ̃)·x̃ + c_out(σ̃)·F(c_in(σ̃)·x̃; c_noise(σ̃))
    c_skip = σ_d²/(σ̃² + σ_d²),  c_out = σ̃·σ_d/√(σ̃² + σ_d²),  c_in = 1/√(σ̃² + σ_d²),  c_noise = ¼ ln σ̃.

With Var x0 = σ_d² (per dimension) the network input c_in·x̃ and its regression target
F* = (x0 − c_skip·x̃)/c_out both have unit variance, and EDM's loss weight λ(σ̃) = 1/c_out² on
‖D − x0‖² is the unit weight on ‖F − F*‖² (`diffjax.losses.EDMWeighting`). The scalings are written
with α and σ directly, so they stay finite where α = 0 (pure noise: c_skip·x̃ = 0, c_out = σ_d) or
σ = 0 (data: D = x/α): c_in·x̃ = x/√(σ² + α²σ_d²), c_skip·x̃ = α σ_d² x/(σ² + α²σ_d²),
c_out = σ σ_d/√(σ² + α²σ_d²), c_noise = −λ/8 (λ clipped to ±`LOG_SNR_LIMIT`).

`Preconditioned` declares prediction 'x0', so every sampler, likelihood, loss and guidance function
takes it unchanged; F is any network `F(x, c_noise, *args, **kwargs)` (a diffjax U-Net or MLP with a
`time_scale` suited to c_noise ∈ [−3.75, 3.75], e.g. 250).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass, static_field
from diffjax.processes.base import GaussianProcess

LOG_SNR_LIMIT = 30.0  # c_noise stays in [−3.75, 3.75] at the ends of a path (λ = ±∞)


class Scalings(NamedTuple):
    """Per-example coefficients, shape (batch,): D = skip·x + out·F(in_·x, noise) in terms of x_t."""

    skip: Array  # c_skip/α: multiplies x_t
    out: Array  # c_out
    in_: Array  # c_in/α: multiplies x_t
    noise: Array  # c_noise


def edm_scalings(alpha: ArrayLike, sigma: ArrayLike, sigma_data: float) -> Scalings:
    """EDM's c_skip, c_out, c_in, c_noise at (α, σ), acting on x_t (see the module docstring)."""
    alpha, sigma = jnp.abs(jnp.asarray(alpha)), jnp.abs(jnp.asarray(sigma))
    total = sigma**2 + (alpha * sigma_data) ** 2  # α²(σ̃² + σ_d²)
    root = jnp.sqrt(total)
    log_snr = 2.0 * (jnp.log(alpha) - jnp.log(sigma))
    noise = -jnp.clip(log_snr, -LOG_SNR_LIMIT, LOG_SNR_LIMIT) / 8.0
    return Scalings(alpha * sigma_data**2 / total, sigma * sigma_data / root, 1.0 / root, noise)


@pytree_dataclass(eq=False)
class Preconditioned:
    """D(x_t; t) ≈ E[x0 | x_t] from the raw network `network` (module docstring); prediction 'x0'.

    network(x_in, c_noise, *args, **kwargs) with x_in of x's shape and c_noise (batch,); extra
    arguments (class labels, dropout keys) pass through."""

    network: Any
    process: GaussianProcess
    sigma_data: float = static_field(default=0.5)
    prediction: str = static_field(default="x0")

    def scalings(self, t: ArrayLike, like: Array) -> Scalings:
        t = jnp.broadcast_to(jnp.asarray(t, like.dtype), like.shape[:1])
        return edm_scalings(self.process.alpha(t), self.process.sigma(t), self.sigma_data)

    def __call__(self, x: Array, t: ArrayLike, *args, **kwargs) -> Array:
        s = self.scalings(t, x)
        raw = self.network(expand(s.in_, x) * x, s.noise.astype(x.dtype), *args, **kwargs)
        return (expand(s.skip, x) * x + expand(s.out, x) * raw).astype(x.dtype)

    def network_target(self, x0: Array, x_t: Array, t: ArrayLike) -> Array:
        """F* = (x0 − c_skip·x̃)/c_out: the regression target of the raw network (σ > 0)."""
        s = self.scalings(t, x_t)
        return (x0 - expand(s.skip, x_t) * x_t) / expand(s.out, x_t)


def precondition(network, process: GaussianProcess, sigma_data: float = 0.5) -> Preconditioned:
    """The EDM-preconditioned denoiser of `network` for `process` (σ_d = std of the data per
    dimension; 0.5 for images in [−1, 1]); it predicts x0."""
    if not sigma_data > 0:
        raise ValueError(f"precondition: sigma_data must be > 0 (the data's std), got {sigma_data}.")
    return Preconditioned(network, process, float(sigma_data))


PRECONDITIONINGS = ("none", "edm", "consistency", "ddim_consistency")


def apply_preconditioning(network, process: GaussianProcess, spec: dict | None):
    """The model a run record's model entry `preconditioning` describes: `network` itself for None
    or {'kind': 'none'}, `precondition(network, process, sigma_data)` for {'kind': 'edm', 'sigma_data'},
    the consistency model `diffjax.consistency.ConsistencyModel(network, process, sigma_data)` for
    {'kind': 'consistency', 'sigma_data'}, and `diffjax.consistency.DDIMConsistencyModel(network, process,
    network.prediction, sigma_data)` (the network's own one-step DDIM jump) for {'kind':
    'ddim_consistency', 'sigma_data'}."""
    spec = dict(spec or {"kind": "none"})
    kind = spec.pop("kind", "none")
    if kind == "none":
        return network
    if kind == "consistency":
        from diffjax.consistency import ConsistencyModel

        return ConsistencyModel(network, process, **spec)
    if kind == "ddim_consistency":
        from diffjax.consistency import DDIMConsistencyModel
        from diffjax.flow import model_prediction

        return DDIMConsistencyModel(network, process, model_prediction(network), **spec)
    if kind != "edm":
        raise ValueError(f"Unknown preconditioning {kind!r}; choose one of {PRECONDITIONINGS}.")
    return precondition(network, process, **spec)

__all__ = [
    "LOG_SNR_LIMIT", "PRECONDITIONINGS", "Preconditioned", "Scalings", "apply_preconditioning",
    "edm_scalings", "precondition",
]  # fmt: skip
