"""Pixel space vs latent space on MNIST, diffjax alone: the cost of a training step and of drawing
samples for the three MNIST flow-matching configs — the U-Net on pixels (`mnist_fm.py`), the DiT on
4×4 pixel patches (`mnist_dit.py`) and the same DiT on the 7×7×4 latents of the autoencoder
(`mnist_latent_dit.py` + `mnist_autoencoder.py`; both DiTs see 49 tokens).

    .venv/bin/python -m bench.bench_latent [--rounds 5] [--batch 128] [--samples 256] [--nfe-steps 10]

Timed, each compiled once and excluded from the rounds: one train step (the project's
`make_train_step` on the CFM loss: AdamW, EMA, non-finite guard; state donated) at `--batch`, and one
sampling call (midpoint, `--nfe-steps` steps = 2 × steps evaluations) of `--samples` images — for the
latent model followed by decoding them (`diffjax.latent.decode_latents`), reported separately and in
the total. The networks are freshly initialised: speed does not depend on the weights. The rounds
interleave the three models; min / median / max per model. Methodology: `bench/machine.py` (refuses a
busy machine unless --allow-busy).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

from bench import machine

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--nfe-steps", type=int, default=10, help="midpoint steps (2 evaluations each)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latent.md"))
    machine.add_load_arguments(ap)
    args = ap.parse_args()
    load = machine.check_idle(args)
    threads = machine.pin_threads(args.threads)

    import diffjax as dj

    dj.configure_xla_cpu()
    import functools

    import jax
    import numpy as np
    from flax import nnx

    from diffjax.latent import LatentSpace, decode_latents
    from diffjax.models import build_model, count_params
    from diffjax.training import create_train_state, make_optimizer, make_train_step, model_loss
    from experiments.builders import network_spec
    from experiments.configs import mnist_autoencoder, mnist_dit, mnist_fm, mnist_latent_dit

    path = dj.CondOTPath()
    ae_cfg = mnist_autoencoder.get_config()
    autoencoder = build_model({"kind": "autoencoder", **dict(ae_cfg.model.kwargs)})
    space = LatentSpace(autoencoder, 0.0, 1.0)
    configs = {"U-Net, pixels": mnist_fm, "DiT, pixels (4×4 patches)": mnist_dit,
               "DiT, latents (1×1 patches)": mnist_latent_dit}  # fmt: skip
    jobs, info = {}, {}

    def sample_once(network, shape) -> np.ndarray:
        res = dj.sample("midpoint", network, path, jax.random.key(2), (args.samples, *shape), args.nfe_steps)
        return np.asarray(jax.block_until_ready(res.samples))

    for name, module in configs.items():
        cfg = module.get_config()
        spec = network_spec(cfg)
        network = build_model(spec)  # sampled; the train step gets (and donates) copies of its parameters
        shape = (spec["image_size"], spec["image_size"], spec["in_channels"])
        graphdef, params = nnx.split(network)
        params = jax.tree.map(jax.numpy.copy, params)
        optimizer, schedule = make_optimizer(learning_rate=1e-3, total_steps=1000, warmup_steps=10)
        loss_fn = model_loss(graphdef, functools.partial(dj.cfm_loss, process=path))
        step = jax.jit(make_train_step(loss_fn, optimizer, schedule=schedule), donate_argnums=0)
        x = jax.random.normal(jax.random.key(1), (args.batch, *shape))
        state = {"s": create_train_state(params, optimizer, jax.random.key(0))}
        start = time.perf_counter()
        compiled = step.lower(state["s"], (x, None)).compile()
        compile_train = time.perf_counter() - start

        def train(compiled=compiled, state=state, x=x):
            state["s"], metrics = compiled(state["s"], (x, None))
            jax.block_until_ready(metrics["loss"])

        start = time.perf_counter()
        z = sample_once(network, shape)
        if "latents" in name:
            decode_latents(space, z, batch_size=args.samples)
        compile_sample = time.perf_counter() - start
        jobs[name] = (train, network, shape, "latents" in name)
        info[name] = dict(params=count_params(params), shape=shape, compile_train=compile_train,
                          compile_sample_first=compile_sample)  # fmt: skip
    times = {name: {"train": [], "sample": [], "decode": []} for name in jobs}
    for _ in range(args.rounds):
        for name, (train, network, shape, latent) in jobs.items():
            start = time.perf_counter()
            train()
            times[name]["train"].append(time.perf_counter() - start)
            start = time.perf_counter()
            z = sample_once(network, shape)
            times[name]["sample"].append(time.perf_counter() - start)
            if latent:
                start = time.perf_counter()
                decode_latents(space, z, batch_size=args.samples)
                times[name]["decode"].append(time.perf_counter() - start)
    load.finish()
    med = {n: {k: machine.spread(v)[1] if v else 0.0 for k, v in t.items()} for n, t in times.items()}
    lines = [
        f"## Pixel vs latent space on MNIST — {'BUSY — ' if load.busy else ''}"
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, {threads} threads",
        "",
        f"jax {jax.__version__}, {os.cpu_count()} CPUs; {load.describe()}",
        f"train step: batch {args.batch}, `make_train_step` (AdamW, EMA, guard); sampling: "
        f"{args.samples} images, midpoint {args.nfe_steps} steps ({2 * args.nfe_steps} evaluations); "
        f"{args.rounds} interleaved rounds "
        "(min / median / max). Autoencoder: mnist_autoencoder.py "
        f"({count_params(nnx.state(autoencoder, nnx.Param)):,} parameters).",
        "",
        "| model | parameters | data | train step ms | train img/s (median) | sample ms | decode ms "
        "| sample img/s incl. decode (median) | compile train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in times.items():
        m = med[name]
        total = m["sample"] + m["decode"]
        decode = machine.format_spread(t["decode"]) if t["decode"] else "–"
        lines.append(
            f"| {name} | {info[name]['params']:,} | {'×'.join(map(str, info[name]['shape']))} "
            f"| {machine.format_spread(t['train'])} | {args.batch / m['train']:.1f} "
            f"| {machine.format_spread(t['sample'], unit='ms')} | {decode} | {args.samples / total:.1f} "
            f"| {info[name]['compile_train']:.1f} |"
        )  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
