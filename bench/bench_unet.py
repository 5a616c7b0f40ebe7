"""Benchmark: diffjax's NNX `UNet` against diffusers' `UNet2DModel` — training and sampling speed.

Both networks are built at one matched configuration on MNIST-shaped data (28×28×1, no padding:
28 → 14 → 7 divides exactly in both libraries): widths (32, 64, 128), 2 residual blocks per level
(3 on the way up), self-attention (heads of 64 channels) at the 7×7 level and in the middle only,
GroupNorm with 8 groups, FiLM (scale-shift) time conditioning, sinusoidal time features of width 32
([cos, sin], no frequency shift) on the timestep 1000·t, followed by Linear → SiLU → Linear to 128.
Their parameter counts are printed and must agree within 10%.

Measured, all in one process, batch 128 (synthetic data in [−1, 1]: the content does not change
the arithmetic):

  * train img/s: one step = ε-prediction MSE on x_t = α(t) x + σ(t) ε of the VP SDE (β 0.1 → 20),
    t ~ U[1e-3, 1] and ε ~ N(0, I) drawn inside the step, backward, AdamW (lr 1e-4, weight decay
    0.01, no clipping) update. diffjax: `diffjax.losses.dsm_loss` on `nnx.merge(graphdef, params)`,
    one `jax.jit` step with the parameters, optimizer state and key donated; torch: the standard
    zero_grad / backward / `torch.optim.AdamW.step` loop. With `--project-step` the project's full
    `diffjax.training.make_train_step` (adds the EMA and the non-finite guard) is timed as a third
    column, "diffjax make_train_step" (off by default: one more compile, about a minute on 2 cores).
  * sample img/s: one forward pass (one NFE), jitted for jax, `torch.no_grad()` + eval for torch.
  * compile / first step: jax's `lower(...).compile()` time and its first run; torch's first call.
  * FLOPs: per train step and per forward from XLA's `cost_analysis()` of the compiled jax programs
    (the architectures match, so the same count is used for both libraries' achieved FLOP/s).

Speeds are medians over timed calls after warm-up calls (min / median / max printed); the
libraries' timed calls are interleaved (one call of each per round). The run refuses to start on a
busy machine (1-minute load average above `--max-load`, default 0.5; `--allow-busy` runs anyway and
marks the report BUSY: another busy process slows torch's OpenMP threads far more than XLA's pool,
which flips the ratios) and records the load before and after. Both libraries get the same cores
(`--threads`, default all: the process's CPU affinity, torch's intra-op threads, one inter-op
thread; see `machine.py`). CPU mode applies `diffjax.configure_xla_cpu()` (XLA's own convolutions
instead of YNNPACK's, as the experiments do; `--xla-defaults` leaves XLA_FLAGS alone); layouts are
each library's native one (NHWC for jax, NCHW for torch).

`--device gpu` (separate code path, never entered in CPU mode): jax on its GPU backend, torch on
cuda if available; adds the model FLOP utilisation = FLOPs per step / median step time / peak,
with the peak measured by timing a large `jnp.matmul` in the compute dtype (`--bf16`: bfloat16
compute for jax (`UNetConfig(dtype='bfloat16')`, float32 parameters) and torch autocast).

    .venv-bench/bin/python bench/bench_unet.py --rounds 7    # ~2 min on 2 idle cores
    .venv-bench/bin/python bench/bench_unet.py --quick       # smoke run
    /work/main/.venv-bench/bin/python bench/bench_unet.py --device gpu [--bf16]
"""

from __future__ import annotations

import argparse
import json
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
from flax import nnx
from timing import JaxTrainStep, LibraryResult, compile_jax, first_call, format_paired_ratio, paired_rounds

from diffjax.losses import dsm_loss, uniform_time
from diffjax.models import UNet, UNetConfig, count_params
from diffjax.processes.sde import VPSDE
from diffjax.training import create_train_state, make_train_step
from diffjax.xla_cpu import configure_xla_cpu

IMAGE, CHANNELS_IN, BATCH = 28, 1, 128
WIDTHS = (32, 64, 128)
LAYERS_PER_BLOCK = 2
HEAD_CHANNELS = 64
GROUPS = 8
LR, WEIGHT_DECAY = 1e-4, 0.01
T_EPS = 1e-3  # t ~ U[T_EPS, 1]
TIME_SCALE = 1000.0  # the network sees the timestep 1000·t
PARAM_TOLERANCE = 0.10


# ==============================================================================================
# The two networks at one configuration
# ==============================================================================================
def diffjax_config(dtype: str = "float32") -> UNetConfig:
    return UNetConfig(
        in_channels=CHANNELS_IN, image_size=IMAGE, channels=WIDTHS[0],
        channel_mults=tuple(w // WIDTHS[0] for w in WIDTHS), num_res_blocks=LAYERS_PER_BLOCK,
        attention_resolutions=(IMAGE // 2 ** (len(WIDTHS) - 1),), head_channels=HEAD_CHANNELS,
        num_groups=GROUPS, scale_shift=True, time_embedding="sinusoidal", time_scale=TIME_SCALE,
        dtype=dtype,
    )  # fmt: skip


def diffusers_unet():
    """diffusers drops the GroupNorm of the middle attention when resnet_time_scale_shift is
    'scale_shift' unless attn_norm_num_groups is given: set it, as diffjax normalises there."""
    from diffusers import UNet2DModel

    n = len(WIDTHS)
    return UNet2DModel(
        sample_size=IMAGE, in_channels=CHANNELS_IN, out_channels=CHANNELS_IN,
        block_out_channels=WIDTHS, layers_per_block=LAYERS_PER_BLOCK,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        norm_num_groups=GROUPS, attn_norm_num_groups=GROUPS, attention_head_dim=HEAD_CHANNELS,
        resnet_time_scale_shift="scale_shift", time_embedding_type="positional",
        flip_sin_to_cos=True, freq_shift=0, add_attention=True,
    )  # fmt: skip


def torch_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_vp_coefficients(vp: VPSDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α(t) = exp(−B(t)/2), σ(t) = √(1 − e^{−B(t)}) with B(t) = β_min t + (β_max − β_min) t²/2T,
    the VP SDE's marginal in torch (checked against `VPSDE.alpha` / `.sigma` before timing)."""
    b = vp.beta_min * t + 0.5 * (vp.beta_max - vp.beta_min) * t * t / vp.T
    return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))


def check_torch_vp(vp: VPSDE) -> float:
    t = np.linspace(T_EPS, 1.0, 101, dtype=np.float32)
    a, s = torch_vp_coefficients(vp, torch.from_numpy(t))
    err = max(float(np.abs(a.numpy() - np.asarray(vp.alpha(jnp.asarray(t)))).max()),
              float(np.abs(s.numpy() - np.asarray(vp.sigma(jnp.asarray(t)))).max()))  # fmt: skip
    if err > 1e-5:
        raise RuntimeError(f"torch VP coefficients differ from diffjax's VPSDE by {err:.2e}")
    return err


# ==============================================================================================
# diffjax side
# ==============================================================================================
class JaxTrainer(JaxTrainStep):
    """Plain step (loss, gradient, AdamW update) on (params, opt_state, key), all donated."""

    def __init__(self, model: UNet, vp: VPSDE, x: jax.Array):
        self.vp = vp
        super().__init__(model, optax.adamw(LR, weight_decay=WEIGHT_DECAY), x)

    def model_loss(self, model, x, key):
        return dsm_loss(model, x, key, process=self.vp, weighting="eps",
                        time_sampler=uniform_time(self.vp, T_EPS))  # fmt: skip


class JaxProjectTrainer:
    """`diffjax.training.make_train_step` (AdamW + EMA + non-finite guard), state donated."""

    def __init__(self, plain: JaxTrainer):
        optimizer = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
        step = make_train_step(lambda p, b, k: plain.loss(p, b, k), optimizer, ema_decay=0.999)
        params = jax.tree.map(lambda p: jnp.array(p, copy=True), plain.carry[0])
        self.state = create_train_state(params, optimizer, jax.random.key(1))
        self.x = plain.x
        self.compiled = compile_jax(jax.jit(step, donate_argnums=0), self.state, self.x)

    def __call__(self):
        self.state, metrics = self.compiled.fn(self.state, self.x)
        jax.block_until_ready(metrics["loss"])
        return metrics["loss"]


class JaxSampler:
    """One forward pass ε_θ(x, t) (one NFE), jitted."""

    def __init__(self, model: UNet, x: jax.Array, t: jax.Array):
        graphdef, self.params = nnx.split(model)
        self.x, self.t = x, t
        jitted = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t))
        self.compiled = compile_jax(jitted, self.params, x, t)

    def __call__(self):
        return jax.block_until_ready(self.compiled.fn(self.params, self.x, self.t))


# ==============================================================================================
# torch side
# ==============================================================================================
class TorchTrainer:
    """The standard loop: draw t and ε, x_t = α x + σ ε, MSE(ε_θ(x_t, 1000 t), ε), AdamW step."""

    def __init__(self, model, vp: VPSDE, x: torch.Tensor, sync, autocast):
        self.model, self.vp, self.x, self.sync, self.autocast = model, vp, x, sync, autocast
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.gen = torch.Generator(x.device).manual_seed(0)
        model.train()

    def __call__(self):
        x = self.x
        t = T_EPS + (1.0 - T_EPS) * torch.rand(x.shape[0], device=x.device, generator=self.gen)
        eps = torch.randn(x.shape, device=x.device, generator=self.gen)
        a, s = torch_vp_coefficients(self.vp, t)
        x_t = a[:, None, None, None] * x + s[:, None, None, None] * eps
        with self.autocast():
            pred = self.model(x_t, TIME_SCALE * t).sample
        loss = torch.mean(torch.square(pred.float() - eps))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()
        return loss.detach()


class TorchSampler:
    def __init__(self, model, x: torch.Tensor, t: torch.Tensor, sync, autocast):
        self.model, self.x, self.t, self.sync, self.autocast = model, x, t, sync, autocast

    def __call__(self):
        self.model.eval()
        with torch.no_grad(), self.autocast():
            out = self.model(self.x, TIME_SCALE * self.t).sample
        self.sync()
        return out


# ==============================================================================================
# Timing
# ==============================================================================================
@dataclass
class Result(LibraryResult):
    train_first_s: float = float("nan")  # jax: first run after compiling; torch: first step
    train_compile_s: float = float("nan")
    sample_first_s: float = float("nan")
    sample_compile_s: float = float("nan")
    train_step_s: list[float] = field(default_factory=list)
    sample_call_s: list[float] = field(default_factory=list)

    @property
    def train_img_s(self) -> float:
        return BATCH / statistics.median(self.train_step_s) if self.train_step_s else float("nan")

    @property
    def sample_img_s(self) -> float:
        return BATCH / statistics.median(self.sample_call_s) if self.sample_call_s else float("nan")


# ==============================================================================================
# GPU extras (only with --device gpu)
# ==============================================================================================
def measure_matmul_peak(dtype, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of a jitted n×n @ n×n `jnp.matmul` in `dtype` on the default (GPU) device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


def gpu_report(results: dict[str, Result], flops: dict[str, float], bf16: bool) -> dict:
    """Matmul peaks and model FLOP utilisation of every library (jax's FLOP count for all)."""
    peaks = {"bf16": measure_matmul_peak(jnp.bfloat16), "f32": measure_matmul_peak(jnp.float32)}
    peak = peaks["bf16" if bf16 else "f32"]
    mfu = {}
    for name, r in results.items():
        if r.train_step_s:
            mfu[f"{name} train"] = flops["train"] / statistics.median(r.train_step_s) / peak
        if r.sample_call_s:
            mfu[f"{name} sample"] = flops["sample"] / statistics.median(r.sample_call_s) / peak
    return {"matmul_peak_flops": peaks, "peak_used": "bf16" if bf16 else "f32", "mfu": mfu}


# ==============================================================================================
# Report
# ==============================================================================================
def unet_machine_info(device: str) -> dict:
    from importlib.metadata import version

    info = {
        **machine.machine_info(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffusers": version("diffusers"),
        "device_mode": device,
    }
    if device == "gpu" and torch.cuda.is_available():
        info["torch_cuda_device"] = torch.cuda.get_device_name()
    return info


def markdown(results: dict[str, Result], flops: dict, env: dict, args, gpu: dict | None,
             load: machine.LoadRecord) -> str:
    names = list(results)
    lines = [
        f"## U-Net benchmark — {env['date']}, {env['threads']} threads, device "
        f"{args.device}{' (bf16)' if args.bf16 else ''}, batch {BATCH}, {IMAGE}×{IMAGE}×"
        f"{CHANNELS_IN}",
        "",
        f"jax {env['jax']} ({env['jax_backend']}, {env['XLA_FLAGS']}), torch {env['torch']} "
        f"({env['torch_threads']} threads), diffusers {env['diffusers']}. Median of "
        f"{args.rounds} interleaved timed calls after {args.warmup} warm-up calls.",
        "",
        load.describe() + ".",
        "",
        *machine.table_head(names, {n: r.params for n, r in results.items()}),
        "| train img/s | " + " | ".join(machine.format_cell(results[n].train_img_s) for n in names) + " |",
        "| sample img/s (1 NFE) | " + " | ".join(machine.format_cell(results[n].sample_img_s) for n in names)
        + " |",
        "| train ms/step min / median / max | " + " | ".join(
            machine.format_spread(results[n].train_step_s) for n in names) + " |",
        "| sample ms/call min / median / max | " + " | ".join(
            machine.format_spread(results[n].sample_call_s) for n in names) + " |",
        "| train: compile s | " + " | ".join(machine.format_cell(results[n].train_compile_s, ".2f")
                                             for n in names) + " |",
        "| train: first step s | " + " | ".join(machine.format_cell(results[n].train_first_s, ".2f")
                                                for n in names) + " |",
        "| sample: compile s | " + " | ".join(machine.format_cell(results[n].sample_compile_s, ".2f")
                                              for n in names) + " |",
        "| sample: first call s | " + " | ".join(machine.format_cell(results[n].sample_first_s, ".2f")
                                                 for n in names) + " |",
    ]  # fmt: skip
    if not any(np.isnan(v) for v in flops.values()):
        for what, key in (("train", "train_step_s"), ("sample", "sample_call_s")):
            cells = []
            for n in names:
                ts = getattr(results[n], key)
                cells.append(machine.format_cell(flops[what] / statistics.median(ts) / 1e9) if ts else "—")
            lines.append(f"| {what} GFLOP/s (XLA count) | " + " | ".join(cells) + " |")
    if gpu is not None:
        for what in ("train", "sample"):
            cells = [machine.format_cell(100 * gpu["mfu"].get(f"{n} {what}", float("nan"))) for n in names]
            lines.append(f"| {what} MFU % | " + " | ".join(cells) + " |")
    j, t = results["diffjax"], results["torch"]
    lines += [
        "",
        f"diffjax / torch speed (> 1: diffjax faster), median of the rounds' paired ratios "
        f"[min, max]: train {format_paired_ratio(t.train_step_s, j.train_step_s)}, sample "
        f"{format_paired_ratio(t.sample_call_s, j.sample_call_s)}; ratio of medians: train "
        f"{j.train_img_s / t.train_img_s:.2f}×, sample {j.sample_img_s / t.sample_img_s:.2f}×. "
        f"Params diffjax {j.params:,} vs torch {t.params:,}: difference {j.params - t.params:+,} "
        f"({100 * (j.params - t.params) / t.params:+.3f}%).",
        f"XLA FLOPs: {flops['train'] / 1e9:.1f} GFLOP per train step, "
        f"{flops['sample'] / 1e9:.1f} GFLOP per forward (batch {BATCH}).",
    ]
    if gpu is not None:
        pk = gpu["matmul_peak_flops"]
        lines.append(f"Measured matmul peak: bf16 {pk['bf16'] / 1e12:.1f} TFLOP/s, f32 "
                     f"{pk['f32'] / 1e12:.1f} TFLOP/s; MFU against {gpu['peak_used']}.")
    return "\n".join(lines) + "\n"


# ==============================================================================================
# Main
# ==============================================================================================
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 train / 3 sample calls")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 compute (with --device gpu)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed calls after the first (default 1 on cpu, 5 on gpu)")
    ap.add_argument("--rounds", type=int, default=None, help="timed calls per library "
                    "(default 5 train / 7 sample on cpu, 50 / 100 on gpu)")  # fmt: skip
    ap.add_argument("--project-step", action="store_true",
                    help="also time diffjax.training.make_train_step (EMA + non-finite guard)")
    ap.add_argument("--out", default=None, help="JSON path (default outputs/bench/unet.json)")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="leave XLA_FLAGS as they are (no diffjax.configure_xla_cpu())")
    machine.add_load_arguments(ap)
    args = ap.parse_args()
    load = machine.check_idle(args)
    if args.bf16 and args.device != "gpu":
        raise ValueError("--bf16 is for --device gpu (XLA's CPU bf16 convolutions are emulated).")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.out is None:
        name = "unet_quick.json" if args.quick else "unet.json"
        args.out = os.path.join(root, "outputs", "bench", name)
    gpu_mode = args.device == "gpu"
    if args.warmup is None:
        args.warmup = 5 if gpu_mode else 1
    if args.quick:
        args.warmup, train_rounds, sample_rounds = 0, 2, 3
    elif args.rounds is not None:
        train_rounds = sample_rounds = args.rounds
    else:
        train_rounds, sample_rounds = (50, 100) if gpu_mode else (5, 7)
    args.rounds = f"{train_rounds} train / {sample_rounds} sample"

    if args.device == "cpu":
        if not args.xla_defaults:
            configure_xla_cpu()
        jax.config.update("jax_platforms", "cpu")
        torch_device = torch.device("cpu")
        threads = machine.pin_threads(args.threads)
    else:
        if jax.default_backend() != "gpu":
            raise RuntimeError(f"--device gpu but jax's backend is {jax.default_backend()!r}; "
                               "install jax with CUDA support or use --device cpu.")  # fmt: skip
        torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch_device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and args.bf16)

    env = unet_machine_info(args.device)
    env["threads"] = threads if args.device == "cpu" else env["cpu_count"]
    t_start = time.perf_counter()
    vp = VPSDE()
    vp_err = check_torch_vp(vp)

    # -- data: one fixed MNIST-shaped batch, and one (x_t, t) for the forward pass ------------
    rng = np.random.default_rng(0)
    x_np = rng.uniform(-1.0, 1.0, (BATCH, IMAGE, IMAGE, CHANNELS_IN)).astype(np.float32)
    xs_np = rng.standard_normal((BATCH, IMAGE, IMAGE, CHANNELS_IN)).astype(np.float32)
    ts_np = rng.uniform(T_EPS, 1.0, BATCH).astype(np.float32)
    x_j, xs_j, ts_j = jnp.asarray(x_np), jnp.asarray(xs_np), jnp.asarray(ts_np)

    def to_torch(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(torch_device)

    x_t, xs_t = to_torch(x_np), to_torch(xs_np)
    ts_t = torch.from_numpy(ts_np).to(torch_device)

    # -- models ---------------------------------------------------------------------------
    cfg = diffjax_config("bfloat16" if args.bf16 else "float32")
    jmodel = UNet(cfg, rngs=nnx.Rngs(0))
    torch.manual_seed(0)
    tmodel = diffusers_unet().to(torch_device)
    n_j, n_t = count_params(jmodel), torch_param_count(tmodel)
    print(f"params: diffjax {n_j:,}, diffusers {n_t:,} (difference {n_j - n_t:+,}, "
          f"{100 * (n_j - n_t) / n_t:+.3f}%)", flush=True)  # fmt: skip
    if abs(n_j - n_t) > PARAM_TOLERANCE * n_t:
        raise RuntimeError("parameter counts differ by more than 10%: the configurations drifted.")
    results = {"diffjax": Result("diffjax", n_j), "torch": Result("torch", n_t)}

    # -- training -------------------------------------------------------------------------
    print("train: compiling diffjax step ...", flush=True)
    jtrain = JaxTrainer(jmodel, vp, x_j)
    results["diffjax"].train_compile_s = jtrain.compiled.compile_s
    results["diffjax"].train_first_s = first_call(jtrain)
    trainers = {"diffjax": jtrain}
    if args.project_step:
        results["diffjax make_train_step"] = Result("diffjax make_train_step", n_j)
        jproj = JaxProjectTrainer(jtrain)
        results["diffjax make_train_step"].train_compile_s = jproj.compiled.compile_s
        results["diffjax make_train_step"].train_first_s = first_call(jproj)
        trainers["diffjax make_train_step"] = jproj
    ttrain = TorchTrainer(tmodel, vp, x_t, sync, autocast)
    results["torch"].train_first_s = first_call(ttrain)
    print(f"  compile {jtrain.compiled.compile_s:.1f} s, first run "
          f"{results['diffjax'].train_first_s:.2f} s; torch first step "
          f"{results['torch'].train_first_s:.2f} s", flush=True)  # fmt: skip
    trainers["torch"] = ttrain
    for name, ts in paired_rounds(trainers, args.warmup, train_rounds).items():
        results[name].train_step_s = ts
    losses = {n: float(fn()) for n, fn in trainers.items()}
    if not all(np.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"non-finite training loss: {losses}")
    del trainers

    # -- sampling (one forward pass) with the trained parameters ------------------------------
    jmodel = nnx.merge(jtrain.graphdef, jtrain.carry[0])
    train_flops = jtrain.compiled.flops
    del jtrain
    print("sample: compiling diffjax forward ...", flush=True)
    jsample = JaxSampler(jmodel, xs_j, ts_j)
    results["diffjax"].sample_compile_s = jsample.compiled.compile_s
    results["diffjax"].sample_first_s = first_call(jsample)
    tsample = TorchSampler(tmodel, xs_t, ts_t, sync, autocast)
    results["torch"].sample_first_s = first_call(tsample)
    samplers = {"diffjax": jsample, "torch": tsample}
    for name, ts in paired_rounds(samplers, args.warmup, sample_rounds).items():
        results[name].sample_call_s = ts
    flops = {"train": train_flops, "sample": jsample.compiled.flops}

    gpu = gpu_report(results, flops, args.bf16) if gpu_mode else None
    env["total_s"] = round(time.perf_counter() - t_start, 1)
    text = markdown(results, flops, env, args, gpu, load.finish())
    print()
    print(text)
    report = {
        "machine": env,
        "config": {"batch": BATCH, "image": [IMAGE, IMAGE, CHANNELS_IN], "widths": WIDTHS,
                   "layers_per_block": LAYERS_PER_BLOCK, "head_channels": HEAD_CHANNELS,
                   "groups": GROUPS, "lr": LR, "weight_decay": WEIGHT_DECAY, "bf16": args.bf16,
                   "warmup": args.warmup, "rounds": args.rounds, "quick": args.quick,
                   "diffjax_config": {k: str(v) for k, v in asdict(cfg).items()},
                   "torch_vp_max_abs_error": vp_err},  # fmt: skip
        "results": {n: {**asdict(r), "train_img_s": r.train_img_s,
                        "sample_img_s": r.sample_img_s} for n, r in results.items()},  # fmt: skip
        "ratio_diffjax_over_torch": {
            "train_img_s": results["diffjax"].train_img_s / results["torch"].train_img_s,
            "sample_img_s": results["diffjax"].sample_img_s / results["torch"].sample_img_s,
            "train_paired": format_paired_ratio(results["torch"].train_step_s,
                                                results["diffjax"].train_step_s),
            "sample_paired": format_paired_ratio(results["torch"].sample_call_s,
                                                 results["diffjax"].sample_call_s),
        },
        "flops": flops,
        "load": load.as_dict(),
        "final_losses": losses,
        "gpu": gpu,
        "markdown": text,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"total {env['total_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
