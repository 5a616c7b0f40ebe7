"""Networks (Flax NNX): the image `UNet`, the low-dimensional `ResidualMLP`, and embeddings.

Functional use: `graphdef, params = nnx.split(model)` (the models hold only `nnx.Param`s) and
`nnx.merge(graphdef, params)(x, t, y, rngs=key)` inside a jitted step; `rngs=None` disables dropout.
"""

from __future__ import annotations

import jax
from flax import nnx

from diffjax.models.embeddings import (
    TimeEmbedding,
    drop_labels,
    fourier_embedding,
    null_labels,
    sinusoidal_embedding,
)
from diffjax.models.mlp import ResidualMLP, ResidualMLPConfig
from diffjax.models.unet import UNet, UNetConfig


def count_params(tree) -> int:
    """Number of scalar parameters in an `nnx.State`, a pytree of arrays, or a Module
    (its `nnx.Param`s)."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


__all__ = [
    "ResidualMLP",
    "ResidualMLPConfig",
    "TimeEmbedding",
    "UNet",
    "UNetConfig",
    "count_params",
    "drop_labels",
    "fourier_embedding",
    "null_labels",
    "sinusoidal_embedding",
]
