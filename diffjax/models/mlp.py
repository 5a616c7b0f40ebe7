"""Residual MLP for low-dimensional data (2D toys, Gaussian mixtures), Flax NNX.

    h = Linear(x);  h ← h + Linear(Dropout(SiLU(Linear(LN(h)) + W_k c)))  for k < depth;
    out = Linear(SiLU(LN(h)))

with c = c(t, y) the conditioning vector of `embeddings.TimeEmbedding` (+ c'(t − s) for a network
with `second_time=True`, called as net(x, t, y, s=s): see `embeddings`). Shapes: x (B, D), t (B,)
float, s (B,) float, y (B,) int or None → (B, D). Dropout is functional exactly as in `unet`: pass
`rngs=key` to turn it on; the model holds only parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
from jaxtyping import Array, Float, Int

from diffjax.models.embeddings import (
    TIME_EMBEDDINGS,
    TimeEmbedding,
    TimeEmbeddingKind,
    as_dropout_key,
    block_key,
    conditioning,
    output_dtype,
)
from diffjax.parameterization import PREDICTIONS, Prediction


@dataclasses.dataclass(frozen=True)
class ResidualMLPConfig:
    """Architecture of a `ResidualMLP`: data dimension `dim`, hidden `width`, `depth` residual
    blocks; second_time: also condition on a target time s (net(x, t, y, s=s)), through the interval
    t − s; the other fields mean what they mean in `UNetConfig`."""

    dim: int = 2
    width: int = 256
    depth: int = 4
    dropout: float = 0.0
    num_classes: int | None = None
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_scale: float | None = None
    fourier_scale: float = 16.0
    prediction: Prediction = "eps"
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    second_time: bool = False

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"ResidualMLPConfig: prediction {self.prediction!r} must be one of {PREDICTIONS}."
            )
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"ResidualMLPConfig: time_embedding {self.time_embedding!r} must be one of "
                f"{TIME_EMBEDDINGS}."
            )
        if self.dim < 1 or self.width < 1 or self.depth < 0:
            raise ValueError("ResidualMLPConfig: need dim >= 1, width >= 1 and depth >= 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ResidualMLPConfig: dropout must lie in [0, 1), got {self.dropout}.")


class MLPBlock(nnx.Module):
    """h + Linear(Dropout(SiLU(Linear(LN(h)) + W c)))."""

    def __init__(self, cfg: ResidualMLPConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(cfg.width, **kw)
        self.linear1 = nnx.Linear(cfg.width, cfg.width, **kw)
        self.emb_proj = nnx.Linear(cfg.width, cfg.width, **kw)
        self.dropout = nnx.Dropout(cfg.dropout)
        self.linear2 = nnx.Linear(cfg.width, cfg.width, **kw)

    def __call__(self, h, emb, key=None):
        z = nnx.silu(self.linear1(self.norm(h)) + self.emb_proj(nnx.silu(emb)))
        z = self.dropout(z, deterministic=key is None, rngs=key)
        return h + self.linear2(z)


class ResidualMLP(nnx.Module):
    """MLP model (x, t[, y]) -> prediction of type `config.prediction`."""

    def __init__(self, config: ResidualMLPConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.time_embed = TimeEmbedding(
            cfg.width, cfg.width, kind=cfg.time_embedding, time_scale=cfg.time_scale,
            fourier_scale=cfg.fourier_scale, num_classes=cfg.num_classes, **kw,
        )
        if cfg.second_time:  # only then: one-time networks keep their parameters (and checkpoints)
            self.interval_embed = TimeEmbedding(
                cfg.width, cfg.width, kind=cfg.time_embedding, time_scale=cfg.time_scale,
                fourier_scale=cfg.fourier_scale, **kw,
            )
        self.linear_in = nnx.Linear(cfg.dim, cfg.width, **kw)
        self.blocks = nnx.List([MLPBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm_out = nnx.LayerNorm(cfg.width, **kw)
        self.linear_out = nnx.Linear(cfg.width, cfg.dim, **kw)

    @property
    def prediction(self) -> str:
        """What the network's output is ('eps', 'x0', 'score', 'v' or 'velocity')."""
        return self.config.prediction

    def __call__(
        self,
        x: Float[Array, "B D"],
        t: Float[Array, " B"],
        y: Int[Array, " B"] | None = None,
        *,
        s: Float[Array, " B"] | None = None,
        rngs=None,
    ) -> Float[Array, "B D"]:
        """Prediction at (x, t[, y]) (and target time s for `second_time`); `rngs` (a PRNG key or
        nnx.Rngs) turns dropout on."""
        cfg = self.config
        if x.ndim != 2 or x.shape[1] != cfg.dim:
            raise ValueError(
                f"ResidualMLP: x must be (batch, {cfg.dim}), got {x.shape}; set dim in "
                "ResidualMLPConfig to the data dimension."
            )
        t, emb = conditioning(self, x, t, y, s, "ResidualMLP")
        key = as_dropout_key(rngs)
        h = self.linear_in(x.astype(cfg.dtype))
        for i, block in enumerate(self.blocks):
            h = block(h, emb, block_key(key, i))
        return self.linear_out(nnx.silu(self.norm_out(h))).astype(output_dtype(x))
