"""Array helpers shared by every layer."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def expand(c: ArrayLike, x: Array) -> Array:
    """Broadcast a per-example coefficient of shape () or (batch,) against x of shape (batch, ...)."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)) if c.ndim else c


def per_example_norm(x: Array) -> Array:
    """‖x_b‖ over the event axes, shape (batch,)."""
    return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))
