"""Consistency models on the 2D ring: distillation from the exact teacher (CD) and improved
consistency training from scratch (iCT), sampled in 1, 2 and 4 evaluations.

    python -m experiments.fewstep_consistency               # CondOT: outputs/fewstep/consistency_2d.json
    python -m experiments.fewstep_consistency --process vp  # VP (CD only): consistency_2d_vp.json

Problem (the 2D few-step contract): `dj.ring_mixture(8, radius=4, std=0.5)` (= tests.samplers_util.
mixture_2d) under CondOT or VP; the teacher is the exact model `mixture.model(process, 'velocity')`.

  CD   `consistency_distillation_loss`: one Heun step of the teacher between neighbours of the EDM
       grid with N = 18 steps (ρ = 7 in σ̃ = σ/α, reversed: data end → noise end), l2 distance,
       θ⁻ = stop_gradient(θ), adam 5e-4. (Chosen among four runs on this metric: l2 at 2e-3 gave a
       1-NFE median of 0.68, pseudo-Huber at 2e-3 0.86, N = 40 at 2e-3 0.83, l2 at 5e-4 0.45.)
  iCT  `consistency_training_loss` (pseudo-Huber, levels from `ict_num_levels`' curriculum 11 → 1281,
       log-normal level draws, λ = 1/Δσ̃), adam 2e-3, one compile for the whole curriculum (traced
       N). Its levels end at σ̃ = 80, so sampling starts there: x = σ(t_80)·z (iCT's x_T = σ_max z;
       for the ring, whose mean is 0, the first-order step of the exact flow from the noise end; the
       row "exact f* from σ̃ = 80" measures what this start costs).

Both train a `ConsistencyModel` around a ResidualMLP (σ_d = the ring's std per dimension) with adam
(cosine decay) and evaluate the EMA parameters (0.999). Metric: ‖x_i − Φ_exact(z_i)‖ against the
exact flow map from the same noise (4096 fixed draws), median and RMSE, at NFE 1, 2, 4: one
evaluation f(z, t_start), then multistep consistency sampling (`flow_map_sample`) through
intermediate times of the EDM grid (for CD snapped to its training grid), re-noised with fresh noise
(Song et al. 2023, Alg. 1) or with the noise the model implies, ε̂ = (x − α f)/σ (deterministic).
Both leave z's trajectory, so for NFE ≥ 2 the endpoint error also measures that departure — the
exact f* itself scores 0 at NFE 1 and 0.5–5 at NFE 2, 4 — which is why `log_p_gap` (mean log p_data
of the samples minus that of data, nats/dim; 0 for exact samples) is reported beside it. The
teacher's Euler, Heun and DPM-Solver++ at the same budgets (`dj.sample(..., nfe=k)` from the same
z) complete the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from diffjax.consistency import (
    ConsistencyModel,
    consistency_distillation_loss,
    consistency_training_loss,
    ict_noise_levels,
    ict_num_levels,
)
from diffjax.flow_map import flow_map_sample
from diffjax.models import ResidualMLP, ResidualMLPConfig
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step

OUT_DIR = "outputs/fewstep"
NFES = (1, 2, 4)
NUM_EVAL = 4096
PROCESSES = {"condot": dj.CondOTPath, "vp": dj.VPSDE}
MAX_LEVELS = 1281  # iCT's s1 + 1


def make_network(seed: int, width: int = 128, depth: int = 3) -> nnx.Module:
    """The raw network F(c_in·x, c_noise): c_noise = ¼ ln σ̃ ∈ [−3.75, 3.75], hence time_scale 250."""
    cfg = ResidualMLPConfig(dim=2, width=width, depth=depth, time_scale=250.0, prediction="x0")
    return ResidualMLP(cfg, rngs=nnx.Rngs(seed))


def train_consistency(loss, network, process, mixture, *, sigma_data: float, num_steps: int,
                      batch_size: int, seed: int, lr: float = 2e-3, levels_at=None,
                      chunk: int = 250):  # fmt: skip
    """Train ConsistencyModel(network) on loss(model, x0, key, num_levels) with fresh ring data;
    levels_at(step) -> num_levels per chunk (iCT's curriculum; constant within a chunk). Returns
    (EMA ConsistencyModel, losses (num_steps,), wall time in s)."""
    graphdef, params = nnx.split(network, nnx.Param)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.02))

    def loss_fn(p, batch, key):
        x0, num_levels = batch
        return loss(ConsistencyModel(nnx.merge(graphdef, p), process, sigma_data), x0, key, num_levels)

    step = make_train_step(loss_fn, optimizer, ema_decay=0.999)

    @jax.jit
    def run_chunk(state, key, num_levels):
        def body(state, k):
            state, metrics = step(state, (mixture.sample(k, batch_size)[0], num_levels))
            return state, metrics["loss"]

        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    state = create_train_state(params, optimizer, jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), num_steps // chunk)
    t0, losses = time.perf_counter(), []
    for i, k in enumerate(keys):
        n = levels_at(i * chunk) if levels_at else 0
        state, chunk_losses = run_chunk(state, k, jnp.asarray(n, jnp.int32))
        losses.append(chunk_losses)
    losses = np.asarray(jnp.concatenate(losses))
    wall = time.perf_counter() - t0
    return ConsistencyModel(nnx.merge(graphdef, state.ema_params), process, sigma_data), losses, wall


def endpoint_errors(samples, reference, mixture, data_log_p: float) -> dict:
    """Median and RMSE of ‖x_i − Φ_exact(z_i)‖, and the mean log-density gap per dimension."""
    err = np.linalg.norm(np.asarray(samples, np.float64) - np.asarray(reference, np.float64), axis=1)
    gap = (float(jax.jit(mixture.log_prob)(jnp.asarray(samples)).mean()) - data_log_p) / 2
    return {"median": float(np.median(err)), "rmse": float(np.sqrt(np.mean(err**2))), "log_p_gap": gap}


def teacher_rows(teacher, process, z, reference, mixture, data_log_p) -> dict:
    rows = {}
    for solver in ("euler", "heun", "dpm_solver_pp"):
        rows[solver] = {}
        for nfe in NFES:
            try:
                res = dj.sample(solver, teacher, process, jax.random.key(0), x_init=z, nfe=nfe)
            except ValueError:  # a budget below one step (Heun with a final denoising step on VP)
                continue
            rows[solver][nfe] = {"nfe_used": int(res.nfe),
                                 **endpoint_errors(res.samples, reference, mixture, data_log_p)}  # fmt: skip
    return rows


def sampling_grid(process, t_start: float, t_min: float, nfe: int, snap_to=None) -> jnp.ndarray:
    """t_start, then nfe − 1 intermediate times of the EDM grid (ρ = 7 in σ̃ between σ̃(t_start) and
    0.002), then the data end: the re-noising times of multistep consistency sampling. snap_to: the
    times a model was trained at (CD's grid): each intermediate time moves to the nearest of them."""
    lam = process.log_snr(jnp.asarray(t_start))
    s_max = float(jnp.exp(-0.5 * lam)) if np.isfinite(float(lam)) else 80.0
    i = np.arange(1, nfe) / nfe
    sig = (s_max ** (1 / 7) + i * (0.002 ** (1 / 7) - s_max ** (1 / 7))) ** 7
    mid = process.time_at_log_snr(-2.0 * jnp.log(jnp.asarray(sig)), t_start, t_min)
    if snap_to is not None:
        grid = jnp.asarray(snap_to)
        mid = grid[jnp.argmin(jnp.abs(mid[:, None] - grid[None]), axis=1)]
    return jnp.concatenate([jnp.asarray([t_start]), mid, jnp.asarray([process.t_data])])


def implied_noise_map(f, process):
    """Φ(x, t, s) = α_s f(x, t) + σ_s ε̂, ε̂ = (x − α_t f(x, t))/σ_t: a deterministic jump that keeps the
    noise the consistency model implies (DDIM's update with x̂0 = f), for σ_t > 0."""

    def flow_map(x, t, s):
        x0 = f(x, t)
        eps = (x - process.alpha(t) * x0) / process.sigma(t)
        return process.alpha(s) * x0 + process.sigma(s) * eps

    return flow_map


def consistency_rows(f, process, x_start, t_start, reference, mixture, data_log_p,
                     deterministic: bool = False, snap_to=None) -> dict:  # fmt: skip
    """Errors of the consistency function f(x, t) from x_start at t_start: one evaluation, then
    multistep consistency sampling at NFE 2 and 4, re-noised with fresh noise (Song et al. Alg. 1)
    or, deterministic=True, with the implied noise (`implied_noise_map`)."""
    rows = {}
    for nfe in NFES:
        ts = sampling_grid(process, t_start, process.data_end(), nfe, snap_to)
        if deterministic:
            x = flow_map_sample(implied_noise_map(f, process), process, x_start, ts)
        else:
            x = flow_map_sample(lambda x, t, s: f(x, t), process, x_start, ts, key=jax.random.key(11),
                                renoise=True)  # fmt: skip
        rows[nfe] = {"nfe_used": nfe, "times": [round(float(t), 5) for t in ts],
                     **endpoint_errors(x, reference, mixture, data_log_p)}  # fmt: skip
    return rows


def run(process_name: str = "condot", num_steps: int = 4000, seed: int = 0, ict_steps: int | None = None,
        batch_size: int = 512, cd_grid_steps: int = 18, cd_distance: str = "l2", cd_lr: float = 5e-4,
        ict_lr: float = 2e-3, methods: tuple[str, ...] = ("cd", "ict")) -> dict:  # fmt: skip
    """CD (num_steps) and, on CondOT, iCT (ict_steps, default 2·num_steps) on the 2D ring; the table
    of endpoint errors at NFE 1, 2, 4 with the teacher's solvers beside them (module docstring)."""
    if process_name not in PROCESSES:
        raise ValueError(f"fewstep_consistency: process_name must be one of {tuple(PROCESSES)}.")
    ict_steps = 2 * num_steps if ict_steps is None else ict_steps
    process = PROCESSES[process_name]()
    mixture = dj.ring_mixture(8, radius=4.0, std=0.5)
    teacher = mixture.model(process, "velocity")
    sigma_data = float(jnp.sqrt(jnp.trace(mixture.covariance()) / 2))
    z = process.prior_std() * jax.random.normal(jax.random.key(1234), (NUM_EVAL, 2))
    reference = jax.jit(mixture.consistency_function(process))(z, process.t_noise)
    data_log_p = float(jax.jit(mixture.log_prob)(mixture.sample(jax.random.key(99), 20000)[0]).mean())
    out = {"process": process_name, "num_steps": num_steps, "ict_steps": ict_steps, "seed": seed,
           "cd": {"solver": "Heun", "grid": f"EDM, N={cd_grid_steps}", "distance": cd_distance, "lr": cd_lr},
           "ict": {"distance": "pseudo_huber", "lr": ict_lr, "levels": "ict_num_levels(k, K), 11 -> 1281"},
           "batch_size": batch_size, "sigma_data": sigma_data, "train_wall_s": {}, "final_loss": {},
           "teacher": teacher_rows(teacher, process, z, reference, mixture, data_log_p),
           "consistency": {}}  # fmt: skip
    t_min = process.data_end()  # the models' boundary (their default t_eps)

    # consistency distillation: Heun steps of the exact teacher on the reversed EDM grid
    ts = dj.edm_grid(process, cd_grid_steps)[::-1]
    exact_f = mixture.consistency_function(process)
    if "cd" in methods:
        cd = functools.partial(consistency_distillation_loss, teacher=teacher, solver=dj.Heun(),
                               process=process, ts=ts, distance=cd_distance)  # fmt: skip
        model, losses, wall = train_consistency(lambda m, x0, k, n: cd(m, x0, k), make_network(seed), process,
                                                mixture, sigma_data=sigma_data, num_steps=num_steps,
                                                batch_size=batch_size, seed=seed, lr=cd_lr)  # fmt: skip
        name = f"CD (Heun, N={cd_grid_steps}, {cd_distance})"
        out["train_wall_s"][name], out["final_loss"][name] = wall, float(losses[-250:].mean())
        for det, how in ((False, "re-noised"), (True, "implied noise")):
            rows = functools.partial(consistency_rows, process=process, x_start=z, t_start=process.t_noise,
                                     reference=reference, mixture=mixture, data_log_p=data_log_p,
                                     deterministic=det, snap_to=ts)  # fmt: skip
            out["consistency"][f"{name}, {how}"] = rows(model)
            out["consistency"][f"exact f*, {how}"] = rows(exact_f)

    if process_name == "condot" and "ict" in methods:  # iCT: levels up to σ̃ = 80, sampled from there
        ict = functools.partial(consistency_training_loss, process=process, max_levels=MAX_LEVELS)
        model, losses, wall = train_consistency(
            lambda m, x0, k, n: ict(m, x0, k, num_levels=n), make_network(seed), process, mixture,
            sigma_data=sigma_data, num_steps=ict_steps, batch_size=batch_size, seed=seed, lr=ict_lr,
            levels_at=functools.partial(ict_num_levels, total_steps=ict_steps))  # fmt: skip
        name = "iCT (from scratch)"
        out["train_wall_s"][name], out["final_loss"][name] = wall, float(losses[-250:].mean())
        t_top = float(ict_noise_levels(process, 2, t_min).times[-1])  # σ̃ = 80
        x_top = process.sigma(t_top) * z
        for det, how in ((False, "re-noised"), (True, "implied noise")):
            rows = functools.partial(consistency_rows, process=process, x_start=x_top, t_start=t_top,
                                     reference=reference, mixture=mixture, data_log_p=data_log_p,
                                     deterministic=det)  # fmt: skip
            out["consistency"][f"{name}, {how}"] = rows(model)
        out["consistency"]["exact f* from σ̃ = 80 (iCT's start), implied noise"] = rows(exact_f)
    return out


def table(out: dict) -> str:
    """The markdown table: median / RMSE endpoint error (and log p gap) per method and NFE."""
    head = "| method | " + " | ".join(f"NFE {k}: median / RMSE (log p gap)" for k in NFES) + " |"
    lines = [head, "|" + " --- |" * (len(NFES) + 1)]

    def cells(rows):
        out_ = []
        for k in NFES:
            r = rows.get(k) or rows.get(str(k))
            out_.append("—" if r is None else
                        f"{r['median']:.3f} / {r['rmse']:.3f} ({r['log_p_gap']:+.2f})"
                        + ("" if r["nfe_used"] == k else f" [{r['nfe_used']} used]"))  # fmt: skip
        return out_

    for name, rows in out["teacher"].items():
        lines.append(f"| teacher {name} | " + " | ".join(cells(rows)) + " |")
    for name, rows in out["consistency"].items():
        lines.append(f"| {name} | " + " | ".join(cells(rows)) + " |")
    walls = ", ".join(f"{k}: {v:.0f} s" for k, v in out["train_wall_s"].items())
    return "\n".join(lines) + f"\n\ntraining wall time: {walls}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--process", default="condot", choices=sorted(PROCESSES))
    parser.add_argument("--num_steps", type=int, default=4000, help="CD training steps")
    parser.add_argument("--ict_steps", type=int, default=None, help="iCT training steps (default 2×)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = run(args.process, args.num_steps, args.seed, ict_steps=args.ict_steps)
    print(table(out))
    os.makedirs(OUT_DIR, exist_ok=True)
    suffix = "" if args.process == "condot" else f"_{args.process}"
    with open(os.path.join(OUT_DIR, f"consistency_2d{suffix}.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
