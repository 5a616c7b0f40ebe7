"""Shared test helpers."""

import jax


def x64():
    """Context manager enabling float64 for one block (new and old JAX spellings)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()
