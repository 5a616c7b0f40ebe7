"""Consistency models on the 2D ring: distillation from the exact teacher (CD, CondOT and VP),
improved consistency training from scratch (iCT, CondOT) and continuous-time consistency
distillation / training (sCD / sCT, both processes), sampled in 1, 2 and 4 evaluations.

    python -m experiments.fewstep.consistency [--num_steps 4000] [--ict_steps 8000] [--process condot|vp]
        [--methods cd,ict,scd,sct,scd_flow] [--seed 0]

CD   `consistency_distillation_loss`: one Heun step of the exact teacher between neighbours of the EDM
     grid with N = 18 steps (ρ = 7 in σ̃ = σ/α, reversed: data end → noise end), l2 distance,
     θ⁻ = stop_gradient(θ), adam 5e-4 (chosen on this metric: l2 at 2e-3 gave a 1-NFE median of 0.68,
     pseudo-Huber at 2e-3 0.86, N = 40 at 2e-3 0.83, l2 at 5e-4 0.45).
iCT  `consistency_training_loss` (pseudo-Huber, levels from `ict_num_levels`' curriculum 11 → 1281,
     log-normal level draws, λ = 1/Δσ̃), adam 2e-3, one compile for the whole curriculum (the level
     count is traced). Its levels end at σ̃ = 80, so sampling starts there: x = σ(t_80)·z (iCT's
     x_T = σ_max z; the oracle row 'exact f* from σ̃ = 80' measures what this start costs).

sCD  `continuous_consistency_loss` with the exact teacher (sCM, Lu & Song 2024: the tangent of f by
     one jax.jvp, normalised with c = 0.1 in units of σ_d/0.5, TrigFlow's log-normal τ), warm-up r
     rising from 0 (x0-regression) to 1 over the first ¾ of the steps (without it, or with r = 1 from
     ½ of the steps on, the low-noise levels settle near f = x/α), adam 5e-4 (at 2e-3 one or two of
     three seeds fell off the ring at 2–4 evaluations); TrigFlow's τ as the
     network's noise input (`noise_input='trig'`, time_scale 100: the noise end τ = π/2 lies next to
     the trained levels, where EDM's ¼ ln σ̃ jumps to its clip), sCM's learned adaptive weighting
     (`WithUncertainty`; at 2e-3 it lowered the mean 2-step error but did not stop the collapses).
     Sampled from z at t_noise.
sCT  the same without a teacher (conditional velocity, x̂0 = x0).
sCD from a trained flow (`--methods scd_flow`): sCM's recipe — a velocity network trained by flow
     matching (num_steps, adam 2e-3) is the teacher and, read as its own one-step DDIM jump
     (`DDIMConsistencyModel`: f = x̂0, TrigFlow's parameterisation of a velocity network), the student's
     start; then sCD as above. Rows for the start itself ('flow network's own jump') and the student.
     The flow's time features are 100·t (`--flow_time_scale`): with flow matching's usual 1000·t the
     jvp through them makes the tangent noisy (CondOT 1-step medians 0.61 / 0.81 against 0.17 / 0.10).

CD and iCT train a `ConsistencyModel` around `common.make_network(prediction='x0', time_scale=250)`
(σ_d = the ring's std per dimension) and evaluate the EMA parameters. Sampling: one evaluation
f(z, t_start), then multistep consistency sampling (`flow_map_sample`) through intermediate times of
the EDM grid (for CD snapped to its training grid), re-noised with fresh noise (Song et al. 2023,
Alg. 1) or with the noise the model implies, ε̂ = (x − α f)/σ (deterministic). Both leave z's
trajectory, so for NFE ≥ 2 the endpoint error also measures that departure (the exact f* itself
scores 0 at NFE 1 and 0.5–5 at NFE 2, 4): read log_p_gap beside it.

Rows (`experiments.fewstep.common`): method 'consistency', variants 'CD (Heun, N=18, l2), re-noised',
'…, implied noise', 'iCT, re-noised', 'iCT, implied noise', 'sCD (exact teacher), warm-up 0.75,
adaptive weight, …', 'sCT, …'; method 'oracle', the exact consistency
function `mixture.consistency_function` through the same samplers. Extra keys: times (the sampling
grid), final_loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import diffjax as dj
from diffjax.consistency import (
    ConsistencyModel,
    DDIMConsistencyModel,
    consistency_distillation_loss,
    consistency_training_loss,
    continuous_consistency_loss,
    ict_noise_levels,
    ict_num_levels,
)
from diffjax.flow_map import flow_map_sample
from diffjax.models import WithUncertainty
from experiments.fewstep import common

MAX_LEVELS = 1281  # iCT's s1 + 1
CD_GRID_STEPS = 18
METHODS = ("cd", "ict", "scd", "sct", "scd_flow")
SCM_TIME_SCALE = 100.0  # features of 100·τ: sCT 1-step medians 0.69/0.73/0.58/4.0 at 10/30/100/600


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


def consistency_rows(f, problem: common.Problem, method: str, name: str, x_start, t_start, snap_to=None,
                     how=("re-noised", "implied noise"), **extra) -> list[dict]:  # fmt: skip
    """Rows of the consistency function f(x, t) from x_start at t_start: one evaluation, then multistep
    consistency sampling at NFE 2 and 4, re-noised with fresh noise (Song et al. Alg. 1) and/or with
    the implied noise (`implied_noise_map`)."""
    process, rows = problem.process, []
    for mode in how:
        for nfe in common.NFES:
            ts = sampling_grid(process, t_start, process.data_end(), nfe, snap_to)
            if mode == "implied noise":
                x = flow_map_sample(implied_noise_map(f, process), process, x_start, ts)
            else:
                x = flow_map_sample(lambda x, t, s: f(x, t), process, x_start, ts, key=jax.random.key(11),
                                    renoise=True)  # fmt: skip
            metrics = common.endpoint_metrics(x, problem, nfe)
            rows.append(common.row(problem, method, f"{name}, {mode}", metrics,
                                   times=[round(float(t), 5) for t in ts], **extra))  # fmt: skip
    return rows


def train_consistency(loss, problem: common.Problem, *, num_steps: int, seed: int, lr: float, batch_size: int,
                      levels_at=None, t_eps: float | None = None, time_scale: float = 250.0,
                      noise_input: str = "log_sigma", adaptive: bool = False,
                      start: nnx.Module | None = None):  # fmt: skip
    """Train ConsistencyModel(network, t_eps) on loss(model, x0, key[, level]) (level: iCT's number
    of levels or sCM's warm-up factor, from levels_at(step)); adaptive: the network carries a learned
    weighting u(λ) (`WithUncertainty`) passed to the loss as log_uncertainty; start: a trained velocity
    network to fine-tune as its own one-step jump (`DDIMConsistencyModel`) in place of a fresh
    x0-network. Returns (EMA model, losses, wall time in s)."""
    process, sigma_data = problem.process, problem.sigma_data
    network = common.make_network(seed, prediction="x0", time_scale=time_scale) if start is None else start
    if adaptive:
        network = WithUncertainty(network, rngs=nnx.Rngs(seed))

    def wrap(net):
        if start is not None:
            return DDIMConsistencyModel(net, process, "velocity", sigma_data, t_eps=t_eps)
        return ConsistencyModel(net, process, sigma_data, t_eps=t_eps, noise_input=noise_input)

    def model_loss(net, batch, key):
        weight = {"log_uncertainty": net.uncertainty} if adaptive else {}
        if levels_at is None:
            return loss(wrap(net), batch, key, **weight)
        return loss(wrap(net), batch[0], key, batch[1], **weight)

    net, losses, wall = common.train(network, model_loss, problem.data_batch(batch_size), num_steps=num_steps,
                                     seed=seed, lr=lr, levels_at=levels_at)  # fmt: skip
    return wrap(net), losses, wall


def train_scm(problem: common.Problem, *, distil: bool, num_steps: int, seed: int, lr: float, batch_size: int,
              warmup_steps: int = 0, tangent_c: float | None = None, time_scale: float = SCM_TIME_SCALE,
              noise_input: str = "trig", adaptive: bool = True, flow: nnx.Module | None = None):  # fmt: skip
    """sCT (distil=False) or sCD from the exact teacher: `continuous_consistency_loss` on a
    ConsistencyModel with its boundary at σ̃ = 0 (t_eps = 0: TrigFlow's parameterisation) and TrigFlow's
    τ as the network's noise input, the warm-up factor r rising linearly from 0 to 1 over
    warmup_steps (0: r = 1 throughout); tangent_c None: sCM's 0.1 in units of σ_d/0.5; adaptive: sCM's
    learned weighting (EDM2's u(λ), `diffjax.models.WithUncertainty`). flow: sCM's recipe instead — a
    trained velocity network is the teacher and, read as its own one-step jump, the student's start."""
    c = 0.1 * problem.sigma_data / 0.5 if tangent_c is None else tangent_c
    teacher = (problem.teacher() if flow is None else nnx.merge(*nnx.split(flow))) if distil else None
    loss = functools.partial(continuous_consistency_loss, process=problem.process, tangent_c=c,
                             teacher=teacher)  # fmt: skip
    common_args = dict(num_steps=num_steps, seed=seed, lr=lr, batch_size=batch_size, t_eps=0.0, start=flow,
                       time_scale=time_scale, noise_input=noise_input, adaptive=adaptive)  # fmt: skip
    if warmup_steps <= 0:
        return train_consistency(loss, problem, **common_args)
    return train_consistency(lambda m, x0, k, r, **kw: loss(m, x0, k, warmup=r, **kw), problem,
                             levels_at=lambda step: min(step / warmup_steps, 1.0), **common_args)  # fmt: skip


def run(problem: common.Problem, num_steps: int = 4000, seed: int = 0, ict_steps: int | None = None,
        batch_size: int = 512, cd_lr: float = 5e-4, ict_lr: float = 2e-3, scm_lr: float = 5e-4,
        scm_warmup: float = 0.75, methods: tuple[str, ...] = ("cd", "ict", "scd", "sct"),
        modes: tuple[str, ...] = ("re-noised", "implied noise"),
        flow_time_scale: float = SCM_TIME_SCALE) -> list[dict]:  # fmt: skip
    """CD (num_steps), on CondOT iCT (ict_steps, default 2·num_steps), and sCD / sCT (num_steps, r
    warmed up over the fraction scm_warmup of them): rows (module docstring); modes: the multistep
    samplers evaluated."""
    process = problem.process
    ict_steps = 2 * num_steps if ict_steps is None else ict_steps
    exact_f = problem.mixture.consistency_function(process)
    rows = []
    if "cd" in methods:
        ts = dj.edm_grid(process, CD_GRID_STEPS)[::-1]
        cd = functools.partial(consistency_distillation_loss, teacher=problem.teacher(), solver=dj.Heun(),
                               process=process, ts=ts, distance="l2")  # fmt: skip
        model, losses, wall = train_consistency(cd, problem, num_steps=num_steps, seed=seed, lr=cd_lr,
                                                batch_size=batch_size)  # fmt: skip
        start = dict(x_start=problem.z, t_start=process.t_noise, snap_to=ts)
        rows += consistency_rows(model, problem, "consistency", f"CD (Heun, N={CD_GRID_STEPS}, l2)", **start,
                                 how=modes, train_wall_s=wall, train_steps=num_steps,
                                 final_loss=float(losses[-250:].mean()))  # fmt: skip
        rows += consistency_rows(exact_f, problem, "oracle", "exact f*", **start, how=modes)
    if problem.process_name == "condot" and "ict" in methods:
        ict = functools.partial(consistency_training_loss, process=process, max_levels=MAX_LEVELS)
        model, losses, wall = train_consistency(
            lambda m, x0, k, n: ict(m, x0, k, num_levels=n), problem, num_steps=ict_steps, seed=seed,
            lr=ict_lr, batch_size=batch_size,
            levels_at=functools.partial(ict_num_levels, total_steps=ict_steps))  # fmt: skip
        t_top = float(ict_noise_levels(process, 2, process.data_end()).times[-1])  # σ̃ = 80
        start = dict(x_start=process.sigma(t_top) * problem.z, t_start=t_top)
        rows += consistency_rows(model, problem, "consistency", "iCT", **start, how=modes, train_wall_s=wall,
                                 train_steps=ict_steps, final_loss=float(losses[-250:].mean()))  # fmt: skip
        rows += consistency_rows(exact_f, problem, "oracle", "exact f* from σ̃ = 80", **start,
                                 how=("implied noise",))  # fmt: skip
    warmup = round(scm_warmup * num_steps)
    for name in ("scd", "sct"):
        if name not in methods:
            continue
        model, losses, wall = train_scm(problem, distil=name == "scd", num_steps=num_steps, seed=seed,
                                        lr=scm_lr, batch_size=batch_size, warmup_steps=warmup)  # fmt: skip
        method = "sCD (exact teacher)" if name == "scd" else "sCT"
        variant = f"{method}, warm-up {scm_warmup:g}, adaptive weight"
        rows += consistency_rows(model, problem, "consistency", variant, problem.z, process.t_noise,
                                 how=modes, train_wall_s=wall, train_steps=num_steps,
                                 final_loss=float(losses[-250:].mean()))  # fmt: skip
    if "scd_flow" in methods:  # sCM's recipe: a trained flow teaches its own one-step jump
        cfm = functools.partial(dj.cfm_loss, process=process)
        flow_net = common.make_network(seed, time_scale=flow_time_scale)
        flow, _, flow_wall = common.train(flow_net, cfm, problem.data_batch(batch_size), num_steps=num_steps,
                                          seed=seed)  # fmt: skip
        flow_jump = DDIMConsistencyModel(flow, process, "velocity", problem.sigma_data, t_eps=0.0)
        rows += consistency_rows(flow_jump, problem, "consistency", "flow network's own jump (sCD's start)",
                                 problem.z, process.t_noise, how=modes, train_wall_s=flow_wall,
                                 train_steps=num_steps)  # fmt: skip
        model, losses, wall = train_scm(problem, distil=True, num_steps=num_steps, seed=seed, lr=scm_lr,
                                        batch_size=batch_size, warmup_steps=warmup, flow=flow)  # fmt: skip
        variant = (f"sCD from and by a trained flow (time scale {flow_time_scale:g}), "
                   f"warm-up {scm_warmup:g}, adaptive weight")
        rows += consistency_rows(model, problem, "consistency", variant, problem.z, process.t_noise,
                                 how=modes, train_wall_s=flow_wall + wall, train_steps=2 * num_steps,
                                 final_loss=float(losses[-250:].mean()))  # fmt: skip
    return rows


def main(argv=None) -> list[dict]:
    p = common.parser(__doc__, default_steps=4000)
    p.add_argument("--ict_steps", type=int, default=None, help="iCT training steps (default 2 × num_steps)")
    p.add_argument("--flow_time_scale", type=float, default=SCM_TIME_SCALE,
                   help="scd_flow: the trained flow's time-feature scale (t ∈ [0, 1])")
    p.add_argument("--methods", default="cd,ict,scd,sct",
                   help=f"comma-separated subset of {','.join(METHODS)}")
    args = p.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    if not methods or set(methods) - set(METHODS):
        p.error(f"--methods must name some of {', '.join(METHODS)}; got {args.methods!r}")
    return common.run_processes(run, args, ict_steps=args.ict_steps, methods=methods,
                                flow_time_scale=args.flow_time_scale)


if __name__ == "__main__":
    main()
