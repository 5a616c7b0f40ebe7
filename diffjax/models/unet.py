"""U-Net for images in the DDPM/ADM family (Ho et al. 2020; Dhariwal & Nichol 2021), Flax NNX.

    conv_in → [ResBlock (+ Attention)] × num_res_blocks per level, Downsample between levels
            → ResBlock, Attention, ResBlock (middle)
            → [ResBlock on concat(h, skip) (+ Attention)] × (num_res_blocks + 1) per level, Upsample
            → GroupNorm, SiLU, conv_out

Every ResBlock receives the conditioning vector c(t, y) (`TimeEmbedding`; + c'(t − s) for a network
with `second_time=True`, called as net(x, t, y, s=s): see `embeddings`), added to its features
(`scale_shift=False`, DDPM) or as a FiLM scale and shift of the second GroupNorm
(`scale_shift=True`, ADM). Attention sits at the levels whose spatial size is listed in
`attention_resolutions` (the level sizes are image_size, ⌈image_size/2⌉, ...; e.g. 28, 14, 7 for
MNIST with three levels). The last layer of every residual branch, of every attention block and of
the output is zero-initialised, so the untrained network outputs exactly zero (ADM).

Shapes: x (B, H, W, C) channels-last with H = W = image_size, t (B,) float (the process's own time,
see `embeddings`), y (B,) int or None → output (B, H, W, out_channels) in x's dtype.

Dropout is functional: `model(x, t, y, rngs=key)` applies dropout with that key (each block folds in
its own index); `rngs=None` is evaluation. The model holds no RNG state, so `nnx.split(model)` gives
only parameters and a pure apply is `nnx.merge(graphdef, params)(x, t, y, rngs=step_key)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from diffjax.models.embeddings import (
    TIME_EMBEDDINGS,
    TimeEmbedding,
    TimeEmbeddingKind,
    as_dropout_key,
    block_key,
    check_image_input,
    conditioning,
    output_dtype,
    run_block,
)
from diffjax.parameterization import PREDICTIONS, Prediction

_zeros = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of a `UNet` (hashable; stored in the graphdef).

    in_channels / out_channels (default in_channels); image_size: H = W of the input; channels:
    width of the first level; channel_mults: width multiplier per level (len − 1 downsamplings);
    attention_resolutions: level sizes that get self-attention; head_channels: channels per
    attention head; num_groups: GroupNorm groups; num_classes: class conditioning with null class
    index num_classes; time_embedding / time_scale / fourier_scale: see `embeddings`
    (time_scale=None → 1000 for sinusoidal, 1 for Fourier, i.e. t in [0, 1]; use 1 for integer
    DDPM steps); prediction: what the network's output is ('eps', 'x0', 'v', ...); dtype: computation
    dtype (e.g. 'bfloat16' on GPU), param_dtype: parameter dtype; second_time: also condition on a
    target time s (net(x, t, y, s=s)) through the interval t − s (flow-map models such as MeanFlow);
    remat: recompute each ResBlock's activations in the backward pass instead of storing them
    (`nnx.remat`, gradient checkpointing: less memory, ≈ one more forward pass; same numbers).
    """

    in_channels: int = 1
    image_size: int = 28
    out_channels: int | None = None
    channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    head_channels: int = 64
    dropout: float = 0.0
    num_groups: int = 8
    num_classes: int | None = None
    scale_shift: bool = True
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_scale: float | None = None
    fourier_scale: float = 16.0
    prediction: Prediction = "eps"
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    second_time: bool = False
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(
            self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions)
        )
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"UNetConfig: prediction {self.prediction!r} must be one of {PREDICTIONS}.")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"UNetConfig: time_embedding {self.time_embedding!r} must be one of "
                f"{TIME_EMBEDDINGS}."
            )
        if self.channels % self.num_groups:
            raise ValueError(
                f"UNetConfig: channels={self.channels} must be divisible by num_groups="
                f"{self.num_groups} (GroupNorm)."
            )
        if not self.channel_mults or min(self.channel_mults) < 1 or self.num_res_blocks < 1:
            raise ValueError(
                "UNetConfig: need a non-empty channel_mults (each >= 1) and num_res_blocks >= 1."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig: dropout must lie in [0, 1), got {self.dropout}.")
        missing = set(self.attention_resolutions) - set(self.resolutions)
        if missing:
            raise ValueError(
                f"UNetConfig: attention_resolutions {sorted(missing)} match no level; the levels "
                f"of a {self.image_size}×{self.image_size} input have sizes {self.resolutions}. "
                "Set image_size to the input size or pick sizes from that list."
            )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Spatial size of each level: image_size, ⌈image_size/2⌉, ..."""
        res = [self.image_size]
        for _ in self.channel_mults[1:]:
            res.append((res[-1] + 1) // 2)
        return tuple(res)

    @property
    def emb_dim(self) -> int:
        return 4 * self.channels


def _conv(cin, cout, k, cfg, rngs, zero=False, stride=1):
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=((k // 2, k // 2), (k // 2, k // 2)),
        dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
        **({"kernel_init": _zeros} if zero else {}),
    )


def _norm(c, cfg, rngs):
    return nnx.GroupNorm(
        c, num_groups=cfg.num_groups, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
    )


class ResBlock(nnx.Module):
    """h = conv1(SiLU(GN(x))); h ← h + W c or GN(h)(1 + s) + b from [s, b] = W c;
    out = skip(x) + conv2(Dropout(SiLU(·)))."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.scale_shift = cfg.scale_shift
        self.norm1 = _norm(cin, cfg, rngs)
        self.conv1 = _conv(cin, cout, 3, cfg, rngs)
        self.emb_proj = nnx.Linear(
            cfg.emb_dim, 2 * cout if cfg.scale_shift else cout,
            dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
        )
        self.norm2 = _norm(cout, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)
        self.conv2 = _conv(cout, cout, 3, cfg, rngs, zero=True)
        self.skip = _conv(cin, cout, 1, cfg, rngs) if cin != cout else None

    def __call__(self, x, emb, key=None):
        h = self.conv1(nnx.silu(self.norm1(x)))
        e = self.emb_proj(nnx.silu(emb))[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.dropout(nnx.silu(h), deterministic=key is None, rngs=key)
        h = self.conv2(h)
        return h + (x if self.skip is None else self.skip(x))



class Attention(nnx.Module):
    """x + proj(MHA(GN(x))) over the H·W positions, heads of `head_channels` channels."""

    def __init__(self, c: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.num_heads = max(1, c // cfg.head_channels)
        if c % self.num_heads:
            raise ValueError(f"Attention: {c} channels do not split into {self.num_heads} heads.")
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm = _norm(c, cfg, rngs)
        self.qkv = nnx.Linear(c, 3 * c, **kw)
        self.proj = nnx.Linear(c, c, kernel_init=_zeros, **kw)

    def __call__(self, x):
        b, h, w, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)
        return x + self.proj(out)


class Level(nnx.Module):
    """The blocks of one resolution level (ResBlocks and optional Attention after each)."""

    def __init__(self, cins, cout, attention, cfg, *, rngs):
        self.blocks = nnx.List([ResBlock(cin, cout, cfg, rngs=rngs) for cin in cins])
        self.attns = nnx.List([Attention(cout, cfg, rngs=rngs) for _ in cins] if attention else [])


def _upsample(h, size):
    """Nearest-neighbour upsampling to spatial `size` (exact 2× repeat when possible)."""
    b, hh, ww, c = h.shape
    if size == 2 * hh:
        return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    return jax.image.resize(h, (b, size, size, c), "nearest")


class UNet(nnx.Module):
    """Denoising U-Net; `prediction` declares what its output is ('eps', 'x0', 'v', ...)."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.time_embed = TimeEmbedding(
            cfg.channels, cfg.emb_dim, kind=cfg.time_embedding, time_scale=cfg.time_scale,
            fourier_scale=cfg.fourier_scale, num_classes=cfg.num_classes, dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs,
        )
        if cfg.second_time:  # only then: one-time networks keep their parameters (and checkpoints)
            self.interval_embed = TimeEmbedding(
                cfg.channels, cfg.emb_dim, kind=cfg.time_embedding, time_scale=cfg.time_scale,
                fourier_scale=cfg.fourier_scale, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                rngs=rngs,
            )
        self.conv_in = _conv(cfg.in_channels, cfg.channels, 3, cfg, rngs)
        widths = [cfg.channels * m for m in cfg.channel_mults]
        skips = [cfg.channels]
        down, downsample = [], []
        ch = cfg.channels
        for i, (width, res) in enumerate(zip(widths, cfg.resolutions, strict=True)):
            cins = [ch] + [width] * (cfg.num_res_blocks - 1)
            down.append(Level(cins, width, res in cfg.attention_resolutions, cfg, rngs=rngs))
            ch = width
            skips += [width] * cfg.num_res_blocks
            if i < len(widths) - 1:
                downsample.append(_conv(ch, ch, 3, cfg, rngs, stride=2))
                skips.append(ch)
        self.down = nnx.List(down)
        self.downsample = nnx.List(downsample)
        self.mid1 = ResBlock(ch, ch, cfg, rngs=rngs)
        self.mid_attn = Attention(ch, cfg, rngs=rngs)
        self.mid2 = ResBlock(ch, ch, cfg, rngs=rngs)
        up, upsample = [], []
        for i, (width, res) in reversed(list(enumerate(zip(widths, cfg.resolutions, strict=True)))):
            cins = []
            for _ in range(cfg.num_res_blocks + 1):
                cins.append(ch + skips.pop())
                ch = width
            up.append(Level(cins, width, res in cfg.attention_resolutions, cfg, rngs=rngs))
            if i > 0:
                upsample.append(_conv(ch, ch, 3, cfg, rngs))
        self.up = nnx.List(up)
        self.upsample = nnx.List(upsample)
        self.norm_out = _norm(ch, cfg, rngs)
        self.conv_out = _conv(ch, cfg.out_channels or cfg.in_channels, 3, cfg, rngs, zero=True)

    @property
    def prediction(self) -> str:
        """What the network's output is ('eps', 'x0', 'score', 'v' or 'velocity')."""
        return self.config.prediction

    def __call__(
        self,
        x: Float[Array, "B H W C"],
        t: Float[Array, " B"],
        y: Int[Array, " B"] | None = None,
        *,
        s: Float[Array, " B"] | None = None,
        rngs=None,
    ) -> Float[Array, "B H W C_out"]:
        """Prediction at (x, t[, y]) (and target time s for `second_time`); `rngs` (a PRNG key or
        nnx.Rngs) turns dropout on."""
        cfg = self.config
        size = cfg.image_size
        check_image_input(x, size, cfg.in_channels, "UNet")
        t, emb = conditioning(self, x, t, y, s, "UNet")
        key = as_dropout_key(rngs)
        h = self.conv_in(x.astype(cfg.dtype))
        hs = [h]
        n = 0  # block counter for independent dropout keys
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = run_block(block, cfg.remat, h, emb, block_key(key, n))
                n += 1
                if level.attns:
                    h = level.attns[j](h)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = run_block(self.mid1, cfg.remat, h, emb, block_key(key, n))
        h = run_block(self.mid2, cfg.remat, self.mid_attn(h), emb, block_key(key, n + 1))
        n += 2
        for i, level in enumerate(self.up):
            for j, block in enumerate(level.blocks):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = run_block(block, cfg.remat, h, emb, block_key(key, n))
                n += 1
                if level.attns:
                    h = level.attns[j](h)
            if i < len(self.upsample):
                h = self.upsample[i](_upsample(h, hs[-1].shape[1]))
        out = self.conv_out(nnx.silu(self.norm_out(h)))
        return out.astype(output_dtype(x))
