"""Sample-based distances between distributions (low-dimensional evaluation and tests).

Both estimators are plug-in statistics of two sample sets; their value between two independent
samples of the *same* distribution is the noise floor against which a sampler is judged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def sliced_wasserstein(
    x: Float[Array, "n D"], y: Float[Array, "m D"], key: Array, num_projections: int = 256
) -> Array:
    """Sliced 2-Wasserstein distance: sqrt(E_θ W2²(θᵀx, θᵀy)) over random unit directions θ.

    The 1-D W2 between projections is computed from matched quantiles (n quantile levels of both
    empirical distributions, so n and m may differ)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sliced_wasserstein: need (n, D) and (m, D), got {x.shape}, {y.shape}.")
    theta = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px, py = jnp.sort(x @ theta, axis=0), jnp.sort(y @ theta, axis=0)
    q = (jnp.arange(x.shape[0]) + 0.5) / x.shape[0]
    py = jnp.quantile(py, q, axis=0) if y.shape[0] != x.shape[0] else py
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def mmd_rbf(x: Float[Array, "n D"], y: Float[Array, "m D"], bandwidth: float = 1.0) -> Array:
    """Unbiased squared maximum mean discrepancy with the kernel exp(−‖a − b‖²/(2h²))."""

    def k(a, b):
        d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2 * a @ b.T
        return jnp.exp(-d2 / (2 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx = (jnp.sum(k(x, x)) - n) / (n * (n - 1))
    kyy = (jnp.sum(k(y, y)) - m) / (m * (m - 1))
    return kxx + kyy - 2 * jnp.mean(k(x, y))
