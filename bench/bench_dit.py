"""Benchmark: diffjax's NNX `DiT` against a PyTorch DiT of the same architecture — training speed.

The PyTorch network is written below (torch only) to match `diffjax.models.dit` layer for layer:
p×p patches embedded by a strided Conv2d (diffjax: reshape + Linear, the same map), fixed 2-D sin-cos
position embeddings (first half of the channels the column, second half the row, [sin, cos] per axis),
the unconditional time embedding of `diffjax.models.TimeEmbedding` (256 sinusoidal features
[cos, sin] of 1000·t → Linear → SiLU → Linear), `depth` adaLN-Zero blocks (LayerNorm without affine
parameters, Linear(SiLU(c)) → shift, scale, gate of both branches; multi-head self-attention with
one fused qkv Linear through `torch.nn.functional.scaled_dot_product_attention`; MLP
Linear → GELU (tanh) → Linear) and the final adaLN layer + Linear, unpatchified to NCHW. It starts
from the diffjax network's initial parameters (copied), so both sides train the same weights. Before
anything is timed, random parameters are copied the same way and the two forward passes and CFM
losses on the same (x1, t, ε) must agree to 1e-4 (relative), and the parameter counts within 1%.

Sizes (`--size`): `mnist` is `experiments/configs/mnist_dit.py` (28×28×1, 4×4 patches → 49 tokens,
width 128, 6 blocks of 4 heads, MLP ×4, time_scale 1000: 1.87 M parameters); `latent` is
`mnist_latent_dit.py` (7×7×4 latents, 1×1 patches → the same 49 tokens). Batch 128 of synthetic data
in [−1, 1] (the content does not change the arithmetic).

Timed, in one process: one training step = the conditional flow matching loss on the CondOT path —
t ~ U[0, 1] and ε ~ N(0, I) drawn inside the step, x_t = t·x1 + (1 − t)·ε, MSE of the network's
velocity against x1 − ε — its backward pass and an Adam update (lr 1e-3, β (0.9, 0.999), ε 1e-8).
diffjax: `diffjax.losses.cfm_loss` on `nnx.merge(graphdef, params)` (prediction 'velocity',
`CondOTPath`), `optax.adam`, one `jax.jit` step with the parameters, optimizer state and key donated,
compiled ahead (`lower().compile()`, reported as compile s, not timed); torch: the standard
zero_grad / backward / `torch.optim.Adam.step` loop (torch's default Adam implementation).
After the first step and `--warmup` untimed steps of each, `--rounds` paired rounds each time
`--steps` consecutive steps of one library and then of the other (which goes first alternates from
round to round). Reported per library: min / median / max images/s over the rounds and the achieved
GFLOP/s (XLA's `cost_analysis()` count of the jax step, used for both, as the architectures match).

The ratio is diffjax / torch speed: > 1 means diffjax trains faster. Its headline is the median of
the rounds' paired ratios (torch round time / diffjax round time, both measured in the same round,
so a slow spell of the machine hits both), with their [min, max]; the ratio of the median speeds is
printed beside it. Methodology as in `bench_unet.py` (`machine.py`): refuses to start when the
1-minute load average is above `--max-load` (0.5) unless `--allow-busy` (the report then says BUSY:
a busy machine slows torch's OpenMP threads far more than XLA's pool), records the load before and
after, pins both libraries to the same cores (`--threads`); `diffjax.configure_xla_cpu()` is applied
before JAX starts unless `--xla-defaults`. CPU only.

    make .venv-bench/.installed
    .venv-bench/bin/python bench/bench_dit.py                   # writes bench/results/dit.md, .json
    .venv-bench/bin/python bench/bench_dit.py --size latent --out outputs/bench/dit_latent.md
    .venv-bench/bin/python bench/bench_dit.py --quick --allow-busy --out /tmp/dit_quick.md  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import jax
import jax.numpy as jnp
import machine
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx
from timing import JaxTrainStep, LibraryResult, first_call, paired_ratio, paired_rounds
from torch import nn

from diffjax.losses import cfm_loss, denoising_loss, uniform_time
from diffjax.models import DiT, DiTConfig, count_params
from diffjax.processes.paths import CondOTPath
from diffjax.xla_cpu import configure_xla_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 128
LR = 1e-3  # mnist_dit's learning rate
PARAM_TOLERANCE = 0.01
CHECK_TOLERANCE = 1e-4  # relative, forward output and loss of the two networks on the same inputs

# experiments/configs/mnist_dit.py `dit_kwargs()` and mnist_latent_dit.py's overrides
DIT_KWARGS = dict(hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0, dropout=0.0, time_scale=1000.0)
SIZES = {
    "mnist": dict(in_channels=1, image_size=28, patch_size=4),
    "latent": dict(in_channels=4, image_size=7, patch_size=1),
}


def diffjax_config(size: str) -> DiTConfig:
    return DiTConfig(**SIZES[size], **DIT_KWARGS, prediction="velocity")


# ==============================================================================================
# The PyTorch DiT
# ==============================================================================================
def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """(grid², dim) fixed 2-D sin-cos embedding of a row-major grid: [sin, cos](column·ω) in the first
    half of the channels, [sin, cos](row·ω) in the second, ω_k = 10000^(−k/(dim/4)), k < dim/4."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def axis(pos):
        arg = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


class TorchTimeEmbedding(nn.Module):
    """c(t) = Linear(SiLU(Linear([cos, sin](time_scale·t·ω_j)))), ω_j = 10000^(−j/half)."""

    def __init__(self, features: int, dim: int, time_scale: float):
        super().__init__()
        half = features // 2
        self.time_scale = time_scale
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half),
                             persistent=False)  # fmt: skip
        self.linear1 = nn.Linear(features, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, t):
        arg = (self.time_scale * t)[:, None] * self.freqs[None]
        return self.linear2(F.silu(self.linear1(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))))


class TorchAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d_h)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class TorchMLP(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TorchDiTBlock(nn.Module):
    """adaLN-Zero: [b₁, a₁, g₁, b₂, a₂, g₂] = W SiLU(c); h += g₁ Attn(LN(h)(1 + a₁) + b₁);
    h += g₂ MLP(LN(h)(1 + a₂) + b₂)."""

    def __init__(self, dim: int, heads: int, mlp_width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = TorchAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = TorchMLP(dim, mlp_width)
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, h, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c))[:, None].chunk(6, dim=-1)
        h = h + gate1 * self.attn(modulate(self.norm1(h), shift1, scale1))
        return h + gate2 * self.mlp(modulate(self.norm2(h), shift2, scale2))


class TorchDiT(nn.Module):
    """The DiT of a `DiTConfig` (unconditional, one time), on NCHW images: (N, C, H, W), t (N,) in
    [0, 1] → (N, C_out, H, W)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.num_classes is not None or cfg.second_time or cfg.time_embedding != "sinusoidal":
            raise ValueError("TorchDiT: only the unconditional one-time sinusoidal DiT is written here.")
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch, self.grid = p, cfg.grid_size
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.time_embed = TorchTimeEmbedding(cfg.time_features, d, cfg.time_scale or 1000.0)
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        self.register_buffer("pos", sincos_position_embedding(d, cfg.grid_size)[None], persistent=False)
        width = int(cfg.hidden_size * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(TorchDiTBlock(d, cfg.num_heads, width) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.final_linear = nn.Linear(d, p * p * self.out_channels)

    def forward(self, x, t):
        c = self.time_embed(t)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (N, L, D), grid row by row
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(F.silu(c))[:, None].chunk(2, dim=-1)
        h = self.final_linear(modulate(self.final_norm(h), shift, scale))  # (N, L, p·p·C_out)
        n, g, p, co = x.shape[0], self.grid, self.patch, self.out_channels
        return h.reshape(n, g, g, p, p, co).permute(0, 5, 1, 3, 2, 4).reshape(n, co, g * p, g * p)


@torch.no_grad()
def load_diffjax_params(tmodel: TorchDiT, jmodel: DiT) -> int:
    """Copy every parameter of the diffjax DiT into the torch one (Linear kernels (in, out) →
    weight (out, in); the patch kernel (p·p·C, D), rows ordered (row, column, channel) → Conv2d
    weight (D, C, p, p)); returns the number of scalars copied."""
    copied = 0

    def put(dst: torch.Tensor, src):
        nonlocal copied
        value = torch.from_numpy(np.array(src, dtype=np.float32))
        if value.shape != dst.shape:
            raise RuntimeError(f"load_diffjax_params: {tuple(value.shape)} into {tuple(dst.shape)}")
        dst.copy_(value)
        copied += value.numel()

    def linear(t, j):
        put(t.weight, np.asarray(j.kernel[...]).T)
        put(t.bias, j.bias[...])

    cfg = jmodel.config
    p, c, d = cfg.patch_size, cfg.in_channels, cfg.hidden_size
    linear(tmodel.time_embed.linear1, jmodel.time_embed.linear1)
    linear(tmodel.time_embed.linear2, jmodel.time_embed.linear2)
    put(tmodel.patch_embed.weight, np.asarray(jmodel.patch_embed.kernel[...]).reshape(p, p, c, d)
        .transpose(3, 2, 0, 1))  # fmt: skip
    put(tmodel.patch_embed.bias, jmodel.patch_embed.bias[...])
    for tb, jb in zip(tmodel.blocks, jmodel.blocks, strict=True):
        for t_layer, j_layer in ((tb.attn.qkv, jb.attn.qkv), (tb.attn.proj, jb.attn.proj),
                                 (tb.mlp.fc1, jb.mlp.fc1), (tb.mlp.fc2, jb.mlp.fc2),
                                 (tb.modulation, jb.modulation)):  # fmt: skip
            linear(t_layer, j_layer)
    linear(tmodel.final_modulation, jmodel.final_layer.modulation)
    linear(tmodel.final_linear, jmodel.final_layer.linear)
    return copied


def torch_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_cfm_loss(model, x1: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """MSE(v_θ(x_t, t), x1 − ε) with x_t = t·x1 + (1 − t)·ε (CondOT, σ_min = 0)."""
    tb = t[:, None, None, None]
    return torch.mean(torch.square(model(tb * x1 + (1 - tb) * eps, t) - (x1 - eps)))


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def check_against_diffjax(cfg: DiTConfig, path: CondOTPath) -> dict:
    """Random parameters (the initial network outputs exactly zero) in a diffjax DiT, copied into a
    TorchDiT: the forward passes and the CFM losses on the same (x1, t, ε) must agree."""
    graphdef, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(1)))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [0.05 * jax.random.normal(k, leaf.shape, leaf.dtype)
              for k, leaf in zip(keys, leaves, strict=True)]  # fmt: skip
    jm = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
    tm = TorchDiT(cfg)
    load_diffjax_params(tm, jm)
    rng = np.random.default_rng(3)
    shape = (4, cfg.image_size, cfg.image_size, cfg.in_channels)
    x1 = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    t = rng.uniform(0.0, 1.0, shape[0]).astype(np.float32)
    out_j = np.asarray(jm(jnp.asarray(x1), jnp.asarray(t)))
    loss_j = float(denoising_loss(jm, jnp.asarray(x1), jax.random.key(0), process=path,
                                  target="velocity", time_sampler=lambda key, n: jnp.asarray(t),
                                  eps=jnp.asarray(eps)))  # fmt: skip
    with torch.no_grad():
        out_t = tm(nchw(x1), torch.from_numpy(t)).numpy().transpose(0, 2, 3, 1)
        loss_t = float(torch_cfm_loss(tm, nchw(x1), torch.from_numpy(t), nchw(eps)))
    errors = {"forward_rel_error": float(np.abs(out_j - out_t).max() / np.abs(out_j).max()),
              "loss_rel_error": abs(loss_j - loss_t) / abs(loss_j), "loss": loss_j}  # fmt: skip
    if max(errors["forward_rel_error"], errors["loss_rel_error"]) > CHECK_TOLERANCE:
        raise RuntimeError(f"the torch DiT does not compute diffjax's DiT: {errors}")
    return errors


# ==============================================================================================
# The two training steps
# ==============================================================================================
class JaxTrainer(JaxTrainStep):
    """Plain step (CFM loss, gradient, Adam update) on (params, opt_state, key), all donated."""

    def __init__(self, model: DiT, path: CondOTPath, x: jax.Array):
        self.path = path
        super().__init__(model, optax.adam(LR), x)

    def model_loss(self, model, x, key):
        return cfm_loss(model, x, key, process=self.path, time_sampler=uniform_time(self.path, 0.0))


class TorchTrainer:
    """The standard loop: draw t ~ U[0, 1] and ε, CFM loss, zero_grad / backward / Adam step."""

    def __init__(self, model: TorchDiT, x: torch.Tensor):
        self.model, self.x = model, x
        self.opt = torch.optim.Adam(model.parameters(), lr=LR)
        self.gen = torch.Generator().manual_seed(0)
        model.train()

    def __call__(self):
        t = torch.rand(self.x.shape[0], generator=self.gen)
        eps = torch.randn(self.x.shape, generator=self.gen)
        loss = torch_cfm_loss(self.model, self.x, t, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


# ==============================================================================================
# Timing
# ==============================================================================================
@dataclass
class Result(LibraryResult):
    first_step_s: float = float("nan")  # jax: first run after compiling; torch: first step
    compile_s: float = float("nan")
    round_s: list[float] = field(default_factory=list)  # seconds per round of `steps` steps

    def img_s(self, per_round: int) -> float:
        return per_round / statistics.median(self.round_s) if self.round_s else float("nan")


# ==============================================================================================
# Report
# ==============================================================================================
def dit_machine_info() -> dict:
    from importlib.metadata import version

    return {
        **machine.machine_info(),
        "diffjax": version("diffjax"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown(results: dict[str, Result], cfg: DiTConfig, flops: float, checks: dict, env: dict, args,
             load: machine.LoadRecord) -> str:  # fmt: skip
    names = list(results)
    per_round = args.steps * args.batch
    size, p = cfg.image_size, cfg.patch_size
    j, t = results["diffjax"], results["torch"]
    med, lo, hi = paired_ratio(t.round_s, j.round_s)
    lines = [
        f"## DiT benchmark{' — BUSY' if load.busy else ''} — {env['date']}, {env['threads']} threads "
        f"of {env['cpu_count']} CPUs, size {args.size}, batch {args.batch}, {size}×{size}×{cfg.in_channels}",
        "",
        f"jax {env['jax']} ({env['jax_backend']}, {env['XLA_FLAGS']}), flax {env['flax']}, optax "
        f"{env['optax']}, diffjax {env['diffjax']}, torch {env['torch']} ({env['torch_threads']} "
        f"threads). {args.rounds} paired rounds of {args.steps} steps per library after the first "
        f"step and {args.warmup} warm-up steps.",
        "",
        f"DiT: {p}×{p} patches → {cfg.num_tokens} tokens, width {cfg.hidden_size}, {cfg.depth} blocks of "
        f"{cfg.num_heads} heads, MLP ×{cfg.mlp_ratio:g}, {cfg.time_features} time features "
        f"(time_scale {cfg.time_scale:g}); step = CFM loss on the CondOT path + backward + Adam "
        f"(lr {LR:g}).",
        "",
        load.describe() + ".",
        "",
        *machine.table_head(names, {n: r.params for n, r in results.items()}),
        "| train img/s (median) | " + " | ".join(
            machine.format_cell(results[n].img_s(per_round)) for n in names) + " |",
        "| train img/s min / median / max | " + " | ".join(
            machine.format_spread(results[n].round_s, per=per_round, unit="img/s") for n in names) + " |",
        "| train ms/step min / median / max | " + " | ".join(
            machine.format_spread([s / args.steps for s in results[n].round_s]) for n in names) + " |",
        "| compile s | " + " | ".join(machine.format_cell(results[n].compile_s, ".2f") for n in names) + " |",
        "| first step s | " + " | ".join(
            machine.format_cell(results[n].first_step_s, ".2f") for n in names) + " |",
    ]  # fmt: skip
    if flops == flops:
        lines.append("| GFLOP/s (XLA count) | " + " | ".join(
            machine.format_cell(flops / statistics.median(results[n].round_s) * args.steps / 1e9)
            if results[n].round_s else "—" for n in names) + " |")  # fmt: skip
    lines += [
        "",
        f"diffjax / torch speed (> 1: diffjax faster), median of the rounds' paired ratios [min, max]: "
        f"**{med:.2f}×** [{lo:.2f}, {hi:.2f}]; ratio of medians "
        f"{j.img_s(per_round) / t.img_s(per_round):.2f}×. "
        f"Params diffjax {j.params:,} vs torch {t.params:,}: difference {j.params - t.params:+,} "
        f"({100 * (j.params - t.params) / t.params:+.3f}%).",
        f"XLA FLOPs: {flops / 1e9:.2f} GFLOP per train step (batch {args.batch}). Same network checked "
        f"before timing (random parameters copied into torch): forward relative error "
        f"{checks['forward_rel_error']:.1e}, loss {checks['loss_rel_error']:.1e}.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


# ==============================================================================================
# Main
# ==============================================================================================
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="mnist",
                    help="mnist: 28×28×1, 4×4 patches (mnist_dit); latent: 7×7×4, 1×1 patches "
                         "(mnist_latent_dit)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--rounds", type=int, default=5, help="paired timed rounds (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="steps per library per round (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 step, no warm-up")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dit.md"),
                    help="markdown report; the JSON goes next to it (default bench/results/dit.md)")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="leave XLA_FLAGS as they are (no diffjax.configure_xla_cpu())")
    machine.add_load_arguments(ap)
    args = ap.parse_args()
    load = machine.check_idle(args)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 1, 0
    if min(args.rounds, args.steps, args.batch) < 1 or args.warmup < 0:
        raise ValueError("--rounds, --steps and --batch must be >= 1, --warmup >= 0.")
    md_path = args.out if args.out.endswith(".md") else args.out + ".md"
    json_path = os.path.splitext(md_path)[0] + ".json"

    if not args.xla_defaults:
        configure_xla_cpu()
    jax.config.update("jax_platforms", "cpu")
    threads = machine.pin_threads(args.threads)
    env = dit_machine_info()
    env["threads"] = threads
    t_start = time.perf_counter()

    cfg = diffjax_config(args.size)
    path = CondOTPath()
    checks = check_against_diffjax(cfg, path)
    print(f"torch DiT = diffjax DiT on random parameters: forward relative error "
          f"{checks['forward_rel_error']:.1e}, CFM loss {checks['loss_rel_error']:.1e}",
          flush=True)  # fmt: skip

    # -- data: one fixed batch of synthetic "images" in [−1, 1] ---------------------------------
    shape = (args.batch, cfg.image_size, cfg.image_size, cfg.in_channels)
    x_np = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    x_j, x_t = jnp.asarray(x_np), nchw(x_np)

    # -- models: the torch DiT starts from the diffjax DiT's initial parameters ------------------
    jmodel = DiT(cfg, rngs=nnx.Rngs(0))
    tmodel = TorchDiT(cfg)
    copied = load_diffjax_params(tmodel, jmodel)
    n_j, n_t = count_params(jmodel), torch_param_count(tmodel)
    print(f"params: diffjax {n_j:,}, torch {n_t:,} (difference {n_j - n_t:+,}, "
          f"{100 * (n_j - n_t) / n_t:+.3f}%)", flush=True)  # fmt: skip
    if abs(n_j - n_t) > PARAM_TOLERANCE * n_t or copied != n_j:
        raise RuntimeError(f"parameter counts differ (diffjax {n_j}, torch {n_t}, copied {copied}): the "
                           "architectures drifted.")  # fmt: skip
    results = {"diffjax": Result("diffjax", n_j), "torch": Result("torch", n_t)}

    # -- training -------------------------------------------------------------------------
    print("compiling the diffjax step ...", flush=True)
    jtrain = JaxTrainer(jmodel, path, x_j)
    results["diffjax"].compile_s = jtrain.compiled.compile_s
    results["diffjax"].first_step_s = first_call(jtrain)
    ttrain = TorchTrainer(tmodel, x_t)
    results["torch"].first_step_s = first_call(ttrain)
    print(f"  compile {jtrain.compiled.compile_s:.1f} s, first run {results['diffjax'].first_step_s:.2f} s; "
          f"torch first step {results['torch'].first_step_s:.2f} s", flush=True)  # fmt: skip
    trainers = {"diffjax": jtrain, "torch": ttrain}
    times = paired_rounds(trainers, args.warmup, args.rounds, args.steps, alternate=True, unit="ms/step")
    for name, ts in times.items():
        results[name].round_s = ts
    losses = {n: float(fn()) for n, fn in trainers.items()}
    if not all(np.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"non-finite training loss: {losses}")

    env["total_s"] = round(time.perf_counter() - t_start, 1)
    flops = jtrain.compiled.flops
    text = markdown(results, cfg, flops, checks, env, args, load.finish())
    print()
    print(text)
    per_round = args.steps * args.batch
    med, lo, hi = paired_ratio(results["torch"].round_s, results["diffjax"].round_s)
    report = {
        "machine": env,
        "config": {"size": args.size, "batch": args.batch, "lr": LR, "rounds": args.rounds,
                   "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
                   "diffjax_config": {k: str(v) for k, v in asdict(cfg).items()}},  # fmt: skip
        "checks": checks,
        "results": {n: {**asdict(r), "img_s": r.img_s(per_round),
                        "img_s_rounds": [per_round / s for s in r.round_s]}
                    for n, r in results.items()},  # fmt: skip
        "ratio_diffjax_over_torch": {
            "paired_median": med, "paired_min": lo, "paired_max": hi,
            "of_medians": results["diffjax"].img_s(per_round) / results["torch"].img_s(per_round),
        },  # fmt: skip
        "flops_per_step": flops,
        "load": load.as_dict(),
        "final_losses": losses,
        "markdown": text,
    }
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"total {env['total_s']:.0f} s; wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
