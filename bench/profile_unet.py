"""Where the time of one U-Net train step goes: XLA:CPU (per HLO op) next to torch (per aten op).

    .venv-bench/bin/python bench/profile_unet.py [--steps 3] [--out bench/results/profile_unet.md]

The network, batch and step are `bench_unet.py`'s (diffjax `UNet` vs diffusers `UNet2DModel`,
4,116,897 parameters each, batch 128 of 28×28×1, ε-MSE on the VP SDE + AdamW).

* jax: each XLA option set runs in a fresh process (XLA_FLAGS are read once), with
  `--xla_cpu_enable_xprof_traceme=true` so that every thunk the executor runs is an event named
  after its HLO instruction; the instruction's `op_name` metadata says which primitive it comes
  from and whether it is in the backward pass (`transpose(jvp(...))`). Thread time is summed over
  the pool's threads, so a category's share is of the busy time and `cpu / wall` < the core count
  shows idle threads.
* torch: `torch.profiler` self CPU time per aten op, mapped to the same categories (convolution,
  normalisation, matmul/attention, elementwise, copies/layout, optimizer).

Thread times are per step, averaged over `--steps` profiled steps after two warm-up steps.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from machine import LoadRecord, add_load_arguments, check_idle, pin_threads  # noqa: E402

OPTION_SETS = {
    "XLA defaults": "",
    "convolutions off YNNPACK": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
}

CATEGORIES = ("convolution fwd", "convolution bwd", "normalisation (reductions)", "matmul / attention",
              "elementwise", "copies / transposes / concat", "optimizer + sampling", "other")  # fmt: skip


def hlo_category(name: str, opcode: str, op_name: str) -> str:
    """Category of one compiled HLO instruction from its name, opcode and `op_name` metadata."""
    prim = op_name.rsplit("/", 1)[-1] if op_name else ""
    backward = "transpose(" in op_name
    if "conv_general_dilated" in prim or opcode == "convolution":
        return "convolution bwd" if backward else "convolution fwd"
    if "dot_general" in prim or opcode == "dot":
        return "matmul / attention"
    if opcode in ("copy", "transpose", "concatenate") or re.match(r"(transpose|copy|concat)", name):
        return "copies / transposes / concat"
    if prim.startswith("reduce") or "reduce" in name:
        return "normalisation (reductions)"
    if op_name and "jvp(" not in op_name:
        return "optimizer + sampling"  # outside the differentiated loss: AdamW, t and ε draws
    return "elementwise" if op_name else "other"


def torch_category(op: str) -> str:
    if "convolution_backward" in op:
        return "convolution bwd"
    if "conv" in op:
        return "convolution fwd"
    if "group_norm" in op or "layer_norm" in op:
        return "normalisation (reductions)"
    if re.search(r"\b(aten::)?(mm|bmm|addmm|matmul|linear|baddbmm|_scaled_dot_product\w*)$", op):
        return "matmul / attention"
    if re.search(r"adam|_foreach_", op):
        return "optimizer + sampling"
    if re.search(r"copy_|contiguous|permute|transpose|clone|cat$|_to_copy|upsample", op):
        return "copies / transposes / concat"
    return "elementwise"


# ==============================================================================================
def jax_worker(steps: int) -> dict:
    """In a process whose XLA_FLAGS are already set: profile `steps` train steps."""
    import bench_unet as bu
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from diffjax.models import UNet
    from diffjax.processes.sde import VPSDE

    jax.config.update("jax_platforms", "cpu")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (bu.BATCH, bu.IMAGE, bu.IMAGE, 1)),
                    jnp.float32)  # fmt: skip
    trainer = bu.JaxTrainer(UNet(bu.diffjax_config(), rngs=nnx.Rngs(0)), VPSDE(), x)
    trainer()
    trainer()
    opcode, op_name = {}, {}
    for line in trainer.compiled.fn.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^)]*\)|\S+) ([\w-]+)\(", line)
        if m:
            opcode[m.group(1)] = m.group(2)
            meta = re.search(r'op_name="([^"]*)"', line)
            op_name[m.group(1)] = meta.group(1) if meta else ""
    with tempfile.TemporaryDirectory() as d:
        cpu0, t0 = time.process_time(), time.perf_counter()
        with jax.profiler.trace(d):
            for _ in range(steps):
                trainer()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
        per_op = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in opcode:
                        per_op[event.name] += event.duration_ns
    cats = collections.Counter()
    for name, ns in per_op.items():
        cats[hlo_category(name, opcode[name], op_name[name])] += ns / 1e6 / steps
    top = [(n, opcode[n], op_name[n], ns / 1e6 / steps) for n, ns in per_op.most_common(8)]
    return {"categories": dict(cats), "wall_ms": 1e3 * wall / steps, "cpu_ms": 1e3 * cpu / steps,
            "top": top, "xla_flags": os.environ.get("XLA_FLAGS", "")}  # fmt: skip


def torch_profile(steps: int) -> dict:
    import bench_unet as bu
    import numpy as np
    import torch

    from diffjax.processes.sde import VPSDE

    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(-1, 1, (bu.BATCH, 1, bu.IMAGE, bu.IMAGE))
    trainer = bu.TorchTrainer(bu.diffusers_unet(), VPSDE(), torch.from_numpy(x).float(),
                              lambda: None, lambda: torch.autocast("cpu", enabled=False))  # fmt: skip
    trainer()
    trainer()
    cpu0, t0 = time.process_time(), time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    cats, ops = collections.Counter(), collections.Counter()
    for avg in prof.key_averages():
        ms = avg.self_cpu_time_total / 1e3 / steps
        cats[torch_category(avg.key)] += ms
        ops[avg.key] += ms
    return {"categories": dict(cats), "wall_ms": 1e3 * wall / steps, "cpu_ms": 1e3 * cpu / steps,
            "top": ops.most_common(8)}  # fmt: skip


# ==============================================================================================
def markdown(columns: dict[str, dict], load: LoadRecord, threads: int, steps: int) -> str:
    names = list(columns)
    lines = [
        f"## Train-step profile — {time.strftime('%Y-%m-%d %H:%M')}, {threads} threads, "
        f"{steps} profiled steps",
        "",
        load.describe(),
        "",
        "Per step: thread time by category in ms (share of that column's traced time). Work "
        "that a traced op hands to other threads is not inside its event: XLA's own (Eigen) "
        "convolutions run as asynchronous pool tasks, so with them most convolution time falls "
        "in the row 'not inside a traced op' (process CPU time minus the traced time); torch's "
        "column is self CPU time of aten ops as its profiler sees them (the calling thread's "
        "view of an OpenMP region). Compare shares and walls rather than absolute thread times; "
        "tracing itself slows the step.",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for cat in CATEGORIES:
        cells = []
        for n in names:
            c = columns[n]["categories"]
            total = sum(c.values())
            v = c.get(cat, 0.0)
            cells.append(f"{v:.0f} ({100 * v / total:.0f}%)" if total else "—")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("| process CPU time not inside a traced op | " + " | ".join(
        f"{columns[n]['cpu_ms'] - sum(columns[n]['categories'].values()):.0f}" for n in names)
        + " |")  # fmt: skip
    lines.append("| **wall ms / step (profiled)** | " + " | ".join(
        f"**{columns[n]['wall_ms']:.0f}**" for n in names) + " |")  # fmt: skip
    lines.append("| process CPU time / wall | " + " | ".join(
        f"{columns[n]['cpu_ms'] / columns[n]['wall_ms']:.2f}" for n in names) + " |")  # fmt: skip
    lines += ["", "Largest single ops (ms per step):", ""]
    for n in names:
        tops = "; ".join(f"{t[0]} {t[-1]:.0f}" for t in columns[n]["top"][:5])
        lines.append(f"- {n}: {tops}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "profile_unet.md"))
    ap.add_argument("--jax-worker", action="store_true", help=argparse.SUPPRESS)
    add_load_arguments(ap)
    args = ap.parse_args()
    if args.jax_worker:
        pin_threads(args.threads)
        print(json.dumps(jax_worker(args.steps)))
        return
    load = check_idle(args)
    threads = pin_threads(args.threads)
    columns = {}
    for label, flags in OPTION_SETS.items():
        print(f"jax, {label} ...", flush=True)
        env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": os.path.dirname(HERE)}
        cmd = [sys.executable, __file__, "--jax-worker", "--steps", str(args.steps),
               "--threads", str(threads), "--allow-busy"]  # fmt: skip
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        columns[f"diffjax ({label})"] = json.loads(out.strip().splitlines()[-1])
    print("torch ...", flush=True)
    columns["torch (diffusers)"] = torch_profile(args.steps)
    text = markdown(columns, load.finish(), threads, args.steps)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"load": load.as_dict(), "threads": threads, "columns": columns}, f, indent=1)


if __name__ == "__main__":
    main()
