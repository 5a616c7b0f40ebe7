"""Time and class embeddings shared by the networks.

A network sees the process time t on the process's own axis (integer DDPM steps cast to float, or a
continuous t in [0, 1]); the features are computed from t' = time_scale · t:

    sinusoidal   [cos(t' ω_j), sin(t' ω_j)],  ω_j = max_period^(−j/half)      (Vaswani et al. 2017;
                 Ho et al. 2020) — for t' of order 1..1000, so time_scale=1000 for t in [0, 1].
    fourier      [cos(2π t' w_j), sin(2π t' w_j)],  w_j ~ N(0, scale²) fixed  (Tancik et al. 2020;
                 Song et al. 2021) — for t' of order 1, so time_scale=1 for t in [0, 1].

The Fourier frequencies are drawn from a fixed seed inside the computation (a compile-time
constant), so they are not parameters and never trained. Class labels use a learned table with one
extra row: the null class `num_classes`, which stands for "no label" in classifier-free guidance
(Ho & Salimans 2022).

A network built with `second_time=True` models a function of two times u(x, t, s) (t the current
time, s the target time of a flow map: MeanFlow, Geng et al. 2025; shortcut models, Frans et al.
2024). It conditions on (t, t − s), as MeanFlow embeds (t, t − r): a second `TimeEmbedding` of the
interval t − s (same feature kind and time_scale, no labels) is added to the conditioning vector,
c = c(t, y) + c'(t − s). `second_time_interval` validates the pair.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from diffjax._validate import check_batch_time, is_concrete

TimeEmbeddingKind = Literal["sinusoidal", "fourier"]
TIME_EMBEDDINGS: tuple[str, ...] = ("sinusoidal", "fourier")


def default_time_scale(kind: str) -> float:
    """Scale that maps t in [0, 1] to the range each feature type is designed for."""
    return 1000.0 if kind == "sinusoidal" else 1.0


def sinusoidal_embedding(
    t: Float[Array, " B"], dim: int, max_period: float = 10_000.0
) -> Float[Array, "B dim"]:
    """[cos(t ω_j), sin(t ω_j)] with ω_j = max_period^(−j/half), j < half = dim // 2 (an odd dim
    is padded with one zero column)."""
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def fourier_embedding(
    t: Float[Array, " B"], dim: int, scale: float = 16.0, seed: int = 0
) -> Float[Array, "B dim"]:
    """[cos(2π t w_j), sin(2π t w_j)] with fixed w_j ~ N(0, scale²) drawn from `seed`."""
    half = dim // 2
    w = scale * jax.random.normal(jax.random.key(seed), (half,), jnp.float32)
    arg = 2.0 * jnp.pi * jnp.asarray(t, jnp.float32)[:, None] * w[None]
    emb = jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def null_labels(batch: int, num_classes: int) -> Int[Array, " B"]:
    """The null class (index `num_classes`) for every element: the unconditional model."""
    return jnp.full((batch,), num_classes, jnp.int32)


class TimeEmbedding(nnx.Module):
    """Conditioning vector c(t, y) = MLP(features(time_scale · t)) + E[y]  → (B, emb_dim).

    MLP = Linear(feature_dim → emb_dim) → SiLU → Linear(emb_dim → emb_dim). With `num_classes`,
    E is a learned (num_classes + 1, emb_dim) table whose last row is the null class; y=None means
    the null class for the whole batch.
    """

    def __init__(
        self,
        feature_dim: int,
        emb_dim: int,
        *,
        kind: TimeEmbeddingKind = "sinusoidal",
        time_scale: float | None = None,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"Unknown time embedding {kind!r}; choose one of {TIME_EMBEDDINGS}.")
        self.kind = kind
        self.feature_dim = feature_dim
        self.time_scale = float(default_time_scale(kind) if time_scale is None else time_scale)
        self.fourier_scale = float(fourier_scale)
        self.num_classes = num_classes
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear1 = nnx.Linear(feature_dim, emb_dim, **kw)
        self.linear2 = nnx.Linear(emb_dim, emb_dim, **kw)
        self.label_embed = (
            nnx.Embed(num_classes + 1, emb_dim, **kw) if num_classes is not None else None
        )

    def features(self, t: Float[Array, " B"]) -> Float[Array, "B F"]:
        ts = self.time_scale * jnp.asarray(t, jnp.float32)
        if self.kind == "sinusoidal":
            return sinusoidal_embedding(ts, self.feature_dim)
        return fourier_embedding(ts, self.feature_dim, self.fourier_scale)

    def labels(self, t: Float[Array, " B"], y: Int[Array, " B"] | None) -> Array | None:
        """Validated int labels (None → the null class); None for an unconditional network. Values
        are range-checked where concrete (eager calls; `diffjax.cfg_model` and the experiment
        scripts check them on the host); under `jit` an out-of-range label is not caught."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError(
                    "Got class labels y but the network was built without num_classes; set "
                    "num_classes in its config to train a class-conditional model."
                )
            return None
        if y is None:
            return null_labels(t.shape[0], self.num_classes)
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"Class labels y must be integers, got dtype {y.dtype}; pass y.astype(int).")
        if y.shape != t.shape:
            raise ValueError(f"Labels y must have shape {t.shape} (one per example): {y.shape}.")
        if is_concrete(y) and y.size:
            yn = np.asarray(y)
            if yn.min() < 0 or yn.max() > self.num_classes:
                raise ValueError(
                    f"Labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class"
                    f" for classifier-free guidance); got values in [{yn.min()}, {yn.max()}]."
                )
        return y.astype(jnp.int32)

    def __call__(self, t: Float[Array, " B"], y: Int[Array, " B"] | None = None):
        y = self.labels(t, y)
        emb = self.linear2(nnx.silu(self.linear1(self.features(t))))
        return emb if y is None else emb + self.label_embed(y)


def second_time_interval(
    x: Array, t: Float[Array, " B"], s: Float[Array, " B"] | None, second_time: bool, owner: str
) -> Float[Array, " B"] | None:
    """The interval t − s (batch,) that a `second_time` network embeds, or None for a one-time
    network; raises if s is missing for a two-time network or given to a one-time one. t is the
    already validated (batch,) time; s a scalar or (batch,)."""
    if not second_time:
        if s is not None:
            raise ValueError(
                f"{owner}: got a second time s but the network was built with second_time=False; "
                "set second_time=True in its config to model u(x, t, s) (e.g. MeanFlow)."
            )
        return None
    if s is None:
        raise ValueError(
            f"{owner}: the network was built with second_time=True and needs the target time s: "
            "call net(x, t, y, s=s) (s = t gives the instantaneous velocity)."
        )
    s = jnp.broadcast_to(check_batch_time(x, s, owner), t.shape)
    return t - s


def conditioning(
    network: nnx.Module, x: Array, t: Float[Array, " B"], y: Int[Array, " B"] | None,
    s: Float[Array, " B"] | None, owner: str,
) -> tuple[Float[Array, " B"], Float[Array, "B D"]]:  # fmt: skip
    """(t (batch,), emb (batch, D)): the validated times and the conditioning vector a network adds to
    its features — its `time_embed` of (t, y) plus, for a `second_time` network, its `interval_embed` of
    t − s (`second_time_interval`). One implementation for the U-Net, the DiT and the MLP."""
    t = jnp.broadcast_to(check_batch_time(x, t, owner), x.shape[:1])
    interval = second_time_interval(x, t, s, network.config.second_time, owner)
    emb = network.time_embed(t, y)
    return t, emb if interval is None else emb + network.interval_embed(interval)


def check_image_input(x: Array, image_size: int, in_channels: int, owner: str) -> None:
    """Raise unless x is a channels-last image batch (batch, image_size, image_size, in_channels)."""
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, in_channels):
        raise ValueError(
            f"{owner}: x must be (batch, {image_size}, {image_size}, {in_channels}) channels-last, got "
            f"{x.shape}; set image_size / in_channels in {owner}Config to match the data."
        )


def output_dtype(x: Array):
    """The dtype of a network's prediction for input x: x's if floating, else float32 (integer
    pixels in, float predictions out)."""
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


def as_dropout_key(rngs) -> jax.Array | None:
    """Normalise the `rngs` argument of a network call to one PRNG key (or None = no dropout).

    Accepts None, a typed or raw `jax.random` key, or an `nnx.Rngs` (its 'dropout' stream, falling
    back to 'default')."""
    if rngs is None:
        return None
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"]() if "dropout" in rngs else rngs.default()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    return jnp.asarray(rngs) if not isinstance(rngs, jax.Array) else rngs


def block_key(key: jax.Array | None, index: int) -> jax.Array | None:
    """An independent key for block `index` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, index)


def run_block(block: nnx.Module, remat: bool, *args):
    """block(*args), under `nnx.remat` when `remat` (gradient checkpointing: only the block's
    inputs are kept for the backward pass, its activations are recomputed there; same numbers)."""
    return nnx.remat(type(block).__call__)(block, *args) if remat else block(*args)
