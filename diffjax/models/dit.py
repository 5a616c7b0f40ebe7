"""Diffusion transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"), Flax NNX.

    tokens  h = patchify(x) W_in + P               (N, L, D),  L = (H/p)·(W/p), D = hidden_size
    blocks  h ← h + g₁ ⊙ Attn(LN(h)(1 + a₁) + b₁)
            h ← h + g₂ ⊙ MLP(LN(h)(1 + a₂) + b₂)      with [b₁, a₁, g₁, b₂, a₂, g₂] = W_k SiLU(c)
    output  unpatchify(Linear(LN(h)(1 + a) + b))    with [b, a] = W_f SiLU(c)  → (N, H, W, C_out)

x is cut into non-overlapping p×p patches, each flattened and linearly embedded (the strided
convolution of the reference, written as reshape + Linear); P are the fixed 2-D sin-cos position
embeddings of the (H/p)×(W/p) grid (`sincos_position_embedding`, not learned). The conditioning
vector c = c(t, y) (`embeddings.TimeEmbedding`: an MLP of sinusoidal/Fourier features of t plus a
(num_classes + 1)-row label table whose last row is the null class of classifier-free guidance;
+ c'(t − s) for a network with `second_time=True`, called as net(x, t, y, s=s)) reaches every block
only through adaLN-Zero: LN has no affine parameters, and a zero-initialised Linear predicts the shift
b, scale a and gate g of each residual branch from c. Every gate starts at zero, so every block starts
as the identity, and the zero-initialised final layer makes the untrained network output exactly
zero. Attention is multi-head self-attention over the L tokens; the MLP is
Linear(D → mlp_ratio·D) → GELU (tanh approximation) → Linear(→ D).

Shapes: x (N, H, W, C) channels-last with H = W = image_size, t (N,) float (the process's own time,
see `embeddings`), y (N,) int or None → output (N, H, W, out_channels) in x's dtype.

Dropout (`dropout` > 0) acts on the output of each residual branch before its gate and is functional
as in `unet`: `model(x, t, y, rngs=key)` turns it on, `rngs=None` is evaluation; the model holds only
parameters, so `nnx.merge(graphdef, params)(x, t, y, rngs=step_key)` is a pure apply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
_xavier = nnx.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Architecture of a `DiT` (hashable; stored in the graphdef).

    in_channels / out_channels (default in_channels); image_size: H = W of the input; patch_size: p,
    the side of the square patches (must divide image_size; L = (image_size/p)² tokens);
    hidden_size: token width D (a multiple of 4 for the 2-D sin-cos position embedding); depth:
    number of transformer blocks; num_heads: attention heads (must divide hidden_size); mlp_ratio:
    MLP width / D; dropout: on each residual branch; num_classes: class conditioning with null class
    index num_classes; time_embedding / time_scale / fourier_scale: see `embeddings` (time_scale=None
    → 1000 for sinusoidal, 1 for Fourier, i.e. t in [0, 1]); time_features: number of time features
    fed to the time MLP (DiT's 256); prediction: what the network's output is ('eps', 'x0', 'v',
    ...); dtype: computation dtype (e.g. 'bfloat16' on GPU), param_dtype: parameter dtype;
    second_time: also condition on a target time s (net(x, t, y, s=s)) through the interval t − s;
    remat: recompute each block's activations in the backward pass instead of storing them
    (`nnx.remat`, gradient checkpointing: less memory, ≈ one more forward pass; same numbers);
    long_skips: U-ViT's long skip connections (Bao et al. 2023): block depth−1−i (i < depth/2) reads
    Linear([h, h_i]) with h_i the output of block i (a middle block, for odd depth, has none);
    conv_out: U-ViT's 3×3 convolution on the unpatchified output (smooths patch edges; zero-initialised
    residual, so the untrained network still outputs zero).
    """

    in_channels: int = 1
    image_size: int = 28
    out_channels: int | None = None
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_classes: int | None = None
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_scale: float | None = None
    fourier_scale: float = 16.0
    time_features: int = 256
    prediction: Prediction = "eps"
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    second_time: bool = False
    remat: bool = False
    long_skips: bool = False
    conv_out: bool = False

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"DiTConfig: prediction {self.prediction!r} must be one of {PREDICTIONS}.")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"DiTConfig: time_embedding {self.time_embedding!r} must be one of {TIME_EMBEDDINGS}."
            )
        for name in ("in_channels", "image_size", "patch_size", "hidden_size", "depth", "num_heads",
                     "time_features"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTConfig: {name} must be an integer >= 1, got {value!r}.")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"DiTConfig: out_channels must be >= 1 (or None), got {self.out_channels}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DiTConfig: patch_size={self.patch_size} must divide image_size={self.image_size} "
                "(the image is cut into non-overlapping square patches); pick a divisor, e.g. "
                f"{[p for p in range(1, self.image_size + 1) if self.image_size % p == 0]}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiTConfig: num_heads={self.num_heads} must divide hidden_size={self.hidden_size} "
                "(each head gets hidden_size / num_heads channels)."
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"DiTConfig: hidden_size={self.hidden_size} must be a multiple of 4 (the 2-D sin-cos "
                "position embedding gives each grid axis a sin and a cos half)."
            )
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.hidden_size) < 1:
            raise ValueError(f"DiTConfig: mlp_ratio must be > 0, got {self.mlp_ratio}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DiTConfig: dropout must lie in [0, 1), got {self.dropout}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"DiTConfig: num_classes must be >= 1 (or None), got {self.num_classes}.")

    @property
    def grid_size(self) -> int:
        """Patches per side, image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """L = grid_size²."""
        return self.grid_size**2


# -- patches and positions ----------------------------------------------------------------------------


def patchify(x: Float[Array, "N H W C"], patch_size: int) -> Float[Array, "N L P"]:
    """Non-overlapping p×p patches as tokens: (N, H, W, C) → (N, (H/p)(W/p), p·p·C).

    Tokens run over the patch grid row by row; each token's features are ordered (row in patch,
    column in patch, channel), the layout the reference's `unpatchify` inverts."""
    n, h, w, c = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patchify: patch_size={p} must divide the image size {h}×{w}.")
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    tokens: Float[Array, "N L P"], patch_size: int, height: int, width: int
) -> Float[Array, "N H W C"]:
    """Inverse of `patchify`: (N, (H/p)(W/p), p·p·C) → (N, H, W, C)."""
    n, length, features = tokens.shape
    p = patch_size
    gh, gw = height // p, width // p
    if gh * p != height or gw * p != width or gh * gw != length or features % (p * p):
        raise ValueError(
            f"unpatchify: {length} tokens of {features} features do not tile a {height}×{width} image "
            f"with {p}×{p} patches."
        )
    c = features // (p * p)
    x = tokens.reshape(n, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, height, width, c)


def sincos_position_embedding(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings of a grid_size × grid_size grid: (grid_size², dim).

    For the token in grid row i, column j (row-major, as `patchify` orders them) the first dim/2
    features embed the column j and the last dim/2 the row i, each as [sin(pos ω_k), cos(pos ω_k)]
    with ω_k = 10000^(−k/(dim/4)), k < dim/4 (MAE's and DiT's `get_2d_sincos_pos_embed`; Vaswani et
    al. 2017 per axis). Computed on the host in float64: a constant, not a parameter."""
    if dim % 4:
        raise ValueError(f"sincos_position_embedding: dim={dim} must be a multiple of 4.")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def axis(pos):
        arg = pos.reshape(-1)[:, None].astype(np.float64) * omega[None]
        return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)

    return np.concatenate([axis(cols), axis(rows)], axis=1)


def _modulate(x, shift, scale):
    """adaLN: x(1 + scale) + shift, with (N, D) shift and scale broadcast over the tokens."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _layer_norm(cfg: DiTConfig, rngs):
    """LayerNorm without affine parameters (adaLN supplies scale and shift)."""
    return nnx.LayerNorm(cfg.hidden_size, epsilon=1e-6, use_bias=False, use_scale=False, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, rngs=rngs)  # fmt: skip


# -- layers -------------------------------------------------------------------------------------------


class SelfAttention(nnx.Module):
    """Multi-head self-attention over the tokens: proj(softmax(q kᵀ/√d_h) v), (N, L, D) → (N, L, D)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        kw = dict(kernel_init=_xavier, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, **kw)
        self.proj = nnx.Linear(d, d, **kw)

    def __call__(self, x):
        n, length, d = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, d // self.num_heads)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(out.reshape(n, length, d))


class MLP(nnx.Module):
    """Linear(D → mlp_ratio·D) → GELU (tanh approximation) → Linear(→ D)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        width = int(cfg.hidden_size * cfg.mlp_ratio)
        kw = dict(kernel_init=_xavier, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(cfg.hidden_size, width, **kw)
        self.fc2 = nnx.Linear(width, cfg.hidden_size, **kw)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class DiTBlock(nnx.Module):
    """adaLN-Zero transformer block, (N, L, D) and c (N, D) → (N, L, D):

        [b₁, a₁, g₁, b₂, a₂, g₂] = W SiLU(c)   (W, bias zero-initialised: the block starts as identity)
        h ← h + g₁ ⊙ Attn(LN(h)(1 + a₁) + b₁);   h ← h + g₂ ⊙ MLP(LN(h)(1 + a₂) + b₂)
    """

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.norm1 = _layer_norm(cfg, rngs)
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.norm2 = _layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout)
        self.modulation = nnx.Linear(d, 6 * d, kernel_init=_zeros, bias_init=_zeros, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype, rngs=rngs)  # fmt: skip

    def __call__(self, h, c, key=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(nnx.silu(c)), 6, axis=-1)
        a = self.attn(_modulate(self.norm1(h), shift1, scale1))
        a = self.dropout(a, deterministic=key is None, rngs=block_key(key, 0))
        h = h + gate1[:, None, :] * a
        m = self.mlp(_modulate(self.norm2(h), shift2, scale2))
        m = self.dropout(m, deterministic=key is None, rngs=block_key(key, 1))
        return h + gate2[:, None, :] * m



class FinalLayer(nnx.Module):
    """Linear(LN(h)(1 + a) + b) with [b, a] = W SiLU(c): (N, L, D) → (N, L, p·p·C_out); both Linears
    zero-initialised, so the untrained network outputs exactly zero."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        out = cfg.patch_size**2 * (cfg.out_channels or cfg.in_channels)
        kw = dict(kernel_init=_zeros, bias_init=_zeros, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  rngs=rngs)  # fmt: skip
        self.norm = _layer_norm(cfg, rngs)
        self.modulation = nnx.Linear(d, 2 * d, **kw)
        self.linear = nnx.Linear(d, out, **kw)

    def __call__(self, h, c):
        shift, scale = jnp.split(self.modulation(nnx.silu(c)), 2, axis=-1)
        return self.linear(_modulate(self.norm(h), shift, scale))


def _skip_linear(cfg: DiTConfig, rngs) -> nnx.Linear:
    """U-ViT's long-skip fusion Linear([h, h_skip]) (2D → D), initialised to pass h through unchanged
    (kernel [I; 0], bias 0): a DiT with long skips starts as the plain DiT and learns to use them."""
    d = cfg.hidden_size

    def init(key, shape, dtype):
        return jnp.concatenate([jnp.eye(d, dtype=dtype), jnp.zeros((d, d), dtype)], axis=0)

    return nnx.Linear(2 * d, d, kernel_init=init, bias_init=_zeros, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs)  # fmt: skip


class DiT(nnx.Module):
    """Diffusion transformer; `prediction` declares what its output is ('eps', 'x0', 'v', ...)."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        d = cfg.hidden_size
        self.time_embed = TimeEmbedding(
            cfg.time_features, d, kind=cfg.time_embedding, time_scale=cfg.time_scale,
            fourier_scale=cfg.fourier_scale, num_classes=cfg.num_classes, dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs,
        )
        if cfg.second_time:  # only then: one-time networks keep their parameters (and checkpoints)
            self.interval_embed = TimeEmbedding(
                cfg.time_features, d, kind=cfg.time_embedding, time_scale=cfg.time_scale,
                fourier_scale=cfg.fourier_scale, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
            )
        self.patch_embed = nnx.Linear(cfg.patch_size**2 * cfg.in_channels, d, kernel_init=_xavier,
                                      dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)  # fmt: skip
        self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        if cfg.long_skips:  # only then: plain DiTs keep their parameters (and checkpoints)
            self.skips = nnx.List([_skip_linear(cfg, rngs) for _ in range(cfg.depth // 2)])
        self.final_layer = FinalLayer(cfg, rngs=rngs)
        if cfg.conv_out:
            channels = cfg.out_channels or cfg.in_channels
            self.conv_out = nnx.Conv(channels, channels, (3, 3), padding="SAME", kernel_init=_zeros,
                                     bias_init=_zeros, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                     rngs=rngs)  # fmt: skip

    @property
    def prediction(self) -> str:
        """What the network's output is ('eps', 'x0', 'score', 'v' or 'velocity')."""
        return self.config.prediction

    def __call__(
        self,
        x: Float[Array, "N H W C"],
        t: Float[Array, " N"],
        y: Int[Array, " N"] | None = None,
        *,
        s: Float[Array, " N"] | None = None,
        rngs=None,
    ) -> Float[Array, "N H W C_out"]:
        """Prediction at (x, t[, y]) (and target time s for `second_time`); `rngs` (a PRNG key or
        nnx.Rngs) turns dropout on."""
        cfg = self.config
        size = cfg.image_size
        check_image_input(x, size, cfg.in_channels, "DiT")
        t, c = conditioning(self, x, t, y, s, "DiT")
        key = as_dropout_key(rngs)
        pos = jnp.asarray(sincos_position_embedding(cfg.hidden_size, cfg.grid_size), cfg.dtype)
        h = self.patch_embed(patchify(x.astype(cfg.dtype), cfg.patch_size)) + pos[None]
        saved = []  # outputs of the first depth // 2 blocks, for the long skips
        for i, block in enumerate(self.blocks):
            j = cfg.depth - 1 - i  # block i reads block j's output through a long skip when j < i
            if cfg.long_skips and j < i:
                h = self.skips[j](jnp.concatenate([h, saved[j]], axis=-1))
            h = run_block(block, cfg.remat, h, c, block_key(key, i))
            if cfg.long_skips and i < cfg.depth // 2:
                saved.append(h)
        out = unpatchify(self.final_layer(h, c), cfg.patch_size, size, size)
        if cfg.conv_out:
            out = out + self.conv_out(out)
        return out.astype(output_dtype(x))
