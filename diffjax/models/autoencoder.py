"""A small KL-regularised convolutional autoencoder (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", §3 and App. G), Flax NNX: the first stage of latent diffusion.

    encoder  conv_in → [ResBlock × num_res_blocks, then a stride-2 conv] per level but the last
             → ResBlock → GroupNorm, SiLU, conv → (mean, log-variance) of q(z | x), each (B, h, w, c)
    decoder  conv_in → ResBlock → [ResBlock × num_res_blocks, then nearest 2× upsampling + conv]
             per level but the last → GroupNorm, SiLU, conv_out → x̂ (B, H, W, in_channels)

with h = w = image_size / 2^(len(channel_mults) − 1) (28 → 14 → 7 for MNIST with two levels). The
ResBlocks are the U-Net's without a time input: x + conv(SiLU(GN(conv(SiLU(GN(x)))))). A latent
z ~ q(z | x) = N(mean, diag(exp(log_var))) is drawn by reparameterisation; the training loss
(`diffjax.latent.autoencoder_loss`) is the reconstruction error plus a small multiple of
KL(q(z | x) ‖ N(0, I)), which keeps the latents near unit scale without compressing them away.

Shapes: x (B, H, W, C) channels-last with H = W = image_size, values in [−1, 1]; z (B, h, w, latent_channels).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from diffjax.models.embeddings import check_image_input


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of an `Autoencoder` (hashable; stored in the graphdef).

    in_channels / image_size: the images (H = W = image_size, divisible by 2^(levels − 1));
    channels: width of the first level; channel_mults: width multiplier per level (len − 1
    downsamplings by 2); num_res_blocks: ResBlocks per level; latent_channels: channels of z;
    num_groups: GroupNorm groups.
    """

    in_channels: int = 1
    image_size: int = 28
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    num_groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        if not self.channel_mults or min(self.channel_mults) < 1 or self.num_res_blocks < 1:
            raise ValueError(
                "AutoencoderConfig: need a non-empty channel_mults (each >= 1) and num_res_blocks >= 1."
            )
        if self.channels % self.num_groups:
            raise ValueError(f"AutoencoderConfig: channels={self.channels} must be divisible by "
                             f"num_groups={self.num_groups} (GroupNorm).")  # fmt: skip
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"AutoencoderConfig: image_size={self.image_size} must be divisible by "
                             f"{factor} (one halving per level after the first).")  # fmt: skip
        if self.latent_channels < 1:
            raise ValueError(f"AutoencoderConfig: latent_channels must be >= 1, got {self.latent_channels}.")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, w, latent_channels): the shape of one latent."""
        side = self.image_size // 2 ** (len(self.channel_mults) - 1)
        return side, side, self.latent_channels


def _conv(cin, cout, rngs, k=3, stride=1):
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=((k // 2, k // 2), (k // 2, k // 2)), rngs=rngs
    )


class ResBlock(nnx.Module):
    """skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x))))))."""

    def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(cin, num_groups=groups, rngs=rngs)
        self.conv1 = _conv(cin, cout, rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.conv2 = _conv(cout, cout, rngs)
        self.skip = _conv(cin, cout, rngs, k=1) if cin != cout else None

    def __call__(self, x):
        h = self.conv2(nnx.silu(self.norm2(self.conv1(nnx.silu(self.norm1(x))))))
        return h + (x if self.skip is None else self.skip(x))


class Encoder(nnx.Module):
    """x (B, H, W, C) → moments (B, h, w, 2·latent_channels): [mean, log-variance]."""

    def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths = [cfg.channels * m for m in cfg.channel_mults]
        self.conv_in = _conv(cfg.in_channels, cfg.channels, rngs)
        blocks, downsample, ch = [], [], cfg.channels
        for i, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width, cfg.num_groups, rngs=rngs))
                ch = width
            if i < len(widths) - 1:
                downsample.append(_conv(ch, ch, rngs, stride=2))
        self.blocks = nnx.List(blocks)
        self.downsample = nnx.List(downsample)
        self.mid = ResBlock(ch, ch, cfg.num_groups, rngs=rngs)
        self.norm_out = nnx.GroupNorm(ch, num_groups=cfg.num_groups, rngs=rngs)
        self.conv_out = _conv(ch, 2 * cfg.latent_channels, rngs)
        self.per_level = cfg.num_res_blocks

    def __call__(self, x):
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            level = i // self.per_level
            if (i + 1) % self.per_level == 0 and level < len(self.downsample):
                h = self.downsample[level](h)
        return self.conv_out(nnx.silu(self.norm_out(self.mid(h))))


class Decoder(nnx.Module):
    """z (B, h, w, latent_channels) → x̂ (B, H, W, C)."""

    def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths = [cfg.channels * m for m in cfg.channel_mults][::-1]
        ch = widths[0]
        self.conv_in = _conv(cfg.latent_channels, ch, rngs)
        self.mid = ResBlock(ch, ch, cfg.num_groups, rngs=rngs)
        blocks, upsample = [], []
        for i, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width, cfg.num_groups, rngs=rngs))
                ch = width
            if i < len(widths) - 1:
                upsample.append(_conv(ch, ch, rngs))
        self.blocks = nnx.List(blocks)
        self.upsample = nnx.List(upsample)
        self.norm_out = nnx.GroupNorm(ch, num_groups=cfg.num_groups, rngs=rngs)
        self.conv_out = _conv(ch, cfg.in_channels, rngs)
        self.per_level = cfg.num_res_blocks

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for i, block in enumerate(self.blocks):
            h = block(h)
            level = i // self.per_level
            if (i + 1) % self.per_level == 0 and level < len(self.upsample):
                h = self.upsample[level](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
        return self.conv_out(nnx.silu(self.norm_out(h)))


class Autoencoder(nnx.Module):
    """KL-regularised autoencoder: `encode(x)` → (mean, log_var) of q(z | x), `decode(z)` → x̂,
    `autoencoder(x, key)` → (x̂, mean, log_var) with z drawn from q (key None: z = mean)."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    def encode(self, x: Float[Array, "B H W C"]) -> tuple[Float[Array, "B h w c"], Float[Array, "B h w c"]]:
        """(mean, log-variance) of q(z | x); log-variance clipped to [−30, 20] (as Rombach et al.)."""
        cfg = self.config
        check_image_input(x, cfg.image_size, cfg.in_channels, "Autoencoder")
        mean, log_var = jnp.split(self.encoder(x.astype(jnp.float32)), 2, axis=-1)
        return mean, jnp.clip(log_var, -30.0, 20.0)

    def decode(self, z: Float[Array, "B h w c"]) -> Float[Array, "B H W C"]:
        """x̂ = decoder(z)."""
        if z.ndim != 4 or z.shape[1:] != self.config.latent_shape:
            want = ", ".join(map(str, self.config.latent_shape))
            raise ValueError(f"Autoencoder.decode: z must be (batch, {want}),"
                             f" got {z.shape}.")  # fmt: skip
        return self.decoder(z.astype(jnp.float32))

    def __call__(self, x, key: jax.Array | None = None):
        mean, log_var = self.encode(x)
        z = mean if key is None else mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, log_var


__all__ = ["Autoencoder", "AutoencoderConfig"]
