"""Sample-based distances between distributions (low-dimensional evaluation and tests).

Both estimators are plug-in statistics of two sample sets; their value between two independent
samples of the *same* distribution is the noise floor against which a sampler is judged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def sorted_projections(x: Float[Array, "n D"], key: Array, num_projections: int = 256) -> Array:
    """θᵀx sorted over the samples, for num_projections random unit directions θ drawn from key:
    (n, num_projections). The same key gives the same directions, so a fixed reference set can be
    projected once and reused with `sliced_wasserstein_sorted`."""
    if x.ndim != 2:
        raise ValueError(f"sorted_projections: need samples of shape (n, D), got {x.shape}.")
    theta = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    return jnp.sort(x @ theta, axis=0)


def sliced_wasserstein_sorted(px: Float[Array, "n P"], py: Float[Array, "m P"]) -> Array:
    """Sliced W2 from sorted projections (`sorted_projections`): the 1-D W2 of each direction from
    matched quantiles at the n levels (i + ½)/n (py linearly interpolated when m ≠ n)."""
    n, m = px.shape[0], py.shape[0]
    if m != n:  # the 'linear' quantile of sorted py at levels q: position q·(m − 1)
        pos = ((jnp.arange(n) + 0.5) / n) * (m - 1)
        lo = jnp.floor(pos).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, m - 1)
        frac = (pos - lo).astype(py.dtype)[:, None]
        py = py[lo] * (1 - frac) + py[hi] * frac
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def sliced_wasserstein(
    x: Float[Array, "n D"], y: Float[Array, "m D"], key: Array, num_projections: int = 256
) -> Array:
    """Sliced 2-Wasserstein distance: sqrt(E_θ W2²(θᵀx, θᵀy)) over random unit directions θ.

    The 1-D W2 between projections is computed from matched quantiles (n quantile levels of both
    empirical distributions, so n and m may differ)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sliced_wasserstein: need (n, D) and (m, D), got {x.shape}, {y.shape}.")
    return sliced_wasserstein_sorted(
        sorted_projections(x, key, num_projections), sorted_projections(y, key, num_projections)
    )


def mmd_rbf(x: Float[Array, "n D"], y: Float[Array, "m D"], bandwidth: float = 1.0) -> Array:
    """Unbiased squared maximum mean discrepancy with the kernel exp(−‖a − b‖²/(2h²))."""

    def k(a, b):
        d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2 * a @ b.T
        return jnp.exp(-d2 / (2 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx = (jnp.sum(k(x, x)) - n) / (n * (n - 1))
    kyy = (jnp.sum(k(y, y)) - m) / (m * (m - 1))
    return kxx + kyy - 2 * jnp.mean(k(x, y))
