"""Benchmark: per-sample endpoint error of diffjax's samplers and the peers' at a fixed NFE budget.

Sliced Wasserstein on a few thousand samples is dominated by its noise floor; this benchmark measures
what a deterministic sampler is for: how far each sample lands from where the *exact* probability-flow
ODE takes the *same* initial noise. Every sampler is driven by the exact model of a Gaussian mixture
(`bench_samplers.py`'s problems and torch closed forms, checked against diffjax's oracle), so the
error is the sampler's discretisation error alone.

Per library, the reference is an accurate solve of the ODE that library was given, from its own start:
  * diffjax on `VPSDE()` from t = 1, on `CondOTPath()` from t = 0;
  * diffusers (DPMSolverMultistep, UniPCMultistep, DEISMultistep; `DDPMChain.linear(1000)`): from the
    chain's σ/α at its first timestep, solved in the continuous VP process with the same log-SNR (the
    probability-flow ODE in log-SNR depends only on the schedule's λ range); with `use_flow_sigmas`
    (CondOT, x_t = (1 − σ)x0 + σε) from t = 1 − σ_first, the model evaluated at the scheduler's σ;
  * flow_matching's ODESolver (torchdiffeq euler / midpoint / rk4) on CondOT from t = 0.
The reference integrates the exact model in float64 with Dopri8 (rtol = atol = 1e-10) to t = 1e-6
from the data end and returns E[x0 | x] there (an O(σ²) ≈ 1e-12 difference from the data end).

Endpoint error per sample = ‖x − x_ref‖₂; reported: median, RMSE and the number of evaluations. Every
configuration of each library (solver × order × grid/spacing, DEIS and SA-Solver with their polynomial
in the log-SNR and in the flow time, and on VP diffjax's exponential integrators also to t_eps = 0) is
run; at budgets 5 and 10 diffjax also runs grids optimised by `dj.optimize_grid` (both objectives) on
128 other noises. The table gives every run; the summary compares diffjax's best fixed-grid and
optimised-grid configurations with the best peer configuration at each budget.

    /work/main/.venv-bench/bin/python bench/bench_endpoint.py            # ~45 min on 2 cores
    /work/main/.venv-bench/bin/python bench/bench_endpoint.py --quick    # 2D, NFE 10
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch

# the sibling benchmark's problems and torch models (a script's directory is on its import path)
from bench_samplers import (
    DIFFUSERS_SCHEDULE,
    TORCH_THREADS,
    DiffusersEpsModel,
    TorchMixture,
    check_models,
    condot_velocity_wrapper,
    environment,
    make_problems,
)

import diffjax as dj
from diffjax.flow import as_flow

T_END = 1e-6  # the reference stops this close to the data end, then denoises exactly


@dataclass
class Row:
    problem: str
    family: str
    library: str
    method: str
    budget: int
    nfe: int
    median: float
    rmse: float


# ==============================================================================================
# References: the exact ODE from each library's own start, float64
# ==============================================================================================
REFERENCE_SOLVER = dj.Adaptive(method="dopri8", rtol=1e-10, atol=1e-10, max_steps=20000, norm="per_example")


@jax.jit
def _reference_solve(flow, x, ts):
    """One compiled program for every reference of a problem (flow, x, ts are traced arguments)."""
    y = dj.integrate(REFERENCE_SOLVER, flow, x, ts).y
    return flow.denoise(y, ts[-1])[0]


def reference(mixture: dj.GaussianMixture, process, x_start: np.ndarray, t_start: float) -> np.ndarray:
    """x̂0 of the exact probability flow from (x_start, t_start) to (data end ∓ T_END), float64;
    computed once per (process, start time) for the noises of a run (peers share their start)."""
    key = (id(mixture), repr(process), float(t_start), x_start.shape, hash(x_start.tobytes()))
    if key not in _REFERENCES:
        with _x64():
            pred = "velocity" if process.has_rates and process.alpha_is_zero_at_noise() else "eps"
            flow = as_flow(mixture.model(process, pred), process)
            t_end = process.t_data + (T_END if process.t_noise > process.t_data else -T_END)
            ts = jnp.asarray([t_start, t_end], jnp.float64)
            _REFERENCES[key] = np.asarray(_reference_solve(flow, jnp.asarray(x_start, jnp.float64), ts))
    return _REFERENCES[key]


_REFERENCES: dict = {}


def _x64():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


def errors(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = np.linalg.norm(np.asarray(x, np.float64) - ref, axis=-1)
    return float(np.median(d)), float(np.sqrt(np.mean(d**2)))


# ==============================================================================================
# diffjax
# ==============================================================================================
SKIP: set[str] = set()  # diffjax solver names left out (--skip)
OPTIMIZE_BUDGETS: set[int] = set()  # budgets at which optimised grids are run (--optimize)


EXPONENTIAL = ("dpm_solver_pp", "unipc", "deis", "sa_solver")


def diffjax_configs(family: str) -> list[tuple[str, str, dict, str, float | None]]:
    """(label, solver, options, grid, t_eps) tried at each budget. On VP the exponential integrators
    also run to t_eps = 0, like diffusers (`final_sigmas_type='zero'`): their step to σ = 0 is first
    order, i.e. returns x̂0 at the previous time, so no evaluation is spent at t = 1e-3."""
    names = [(f"dpm_solver_pp {k}", "dpm_solver_pp", {"order": k}) for k in (2, 3)]
    names += [(f"unipc {k}", "unipc", {"order": k}) for k in (2, 3)]
    # DEIS and the deterministic (τ = 0) SA-Solver with their polynomial in either variable ('auto'
    # is the flow time on CondOT, the log-SNR on VP)
    adams = [("deis 2", "deis", {"order": 2}), ("deis 3", "deis", {"order": 3})]
    adams += [(f"sa_solver {p}+{q}", "sa_solver", dict(predictor_order=p, corrector_order=q, tau=0.0))
              for p, q in ((2, 2), (2, 3), (3, 4))]  # fmt: skip
    for label, name, opts in adams:
        for variable in ("log_snr", "flow_time"):
            tag = " · v" if variable == "flow_time" else ""
            names.append((label + tag, name, dict(opts, interpolate_in=variable)))
    names += [("heun", "heun", {}), ("rk4", "rk4", {})]
    if family == "CondOT":
        names += [("midpoint", "midpoint", {}), ("euler", "euler", {})]
    out = []
    for label, name, opts in names:
        if name in SKIP:
            continue
        ends = (None, 0.0) if family == "VP" and name in EXPONENTIAL else (None,)
        for t_eps in ends:
            for grid in ("uniform", "logsnr", "edm"):
                tag = f"{label} · {grid}" + (" · t_eps 0" if t_eps == 0.0 else "")
                out.append((tag, name, opts, grid, t_eps))
    return out


OPTIMIZE: list[tuple[str, str, dict]] = [("dpm_solver_pp 2", "dpm_solver_pp", {"order": 2}),
                                          ("unipc 2", "unipc", {"order": 2}),
                                          ("deis 2", "deis", {"order": 2}),
                                          ("sa_solver 2+3", "sa_solver",
                                           dict(predictor_order=2, corrector_order=3, tau=0.0))]  # fmt: skip
OPTIMIZE_ITERATIONS = 100
OBJECTIVES = ("mse", "log")  # optimize_grid's objective: the mean e² or the mean log e² (the typical error)


def run_optimized(prob, family, process, x_T, ref, budget) -> list[Row]:
    """Grids optimised by `dj.optimize_grid` (Adam on the grid's log-SNR logits, 100 iterations, either
    objective) on 128 *other* noises against the model's own accurate solve, then run on the
    benchmark's noises (on VP also to t_eps = 0, see `diffjax_configs`)."""
    model = prob.mixture.model(process, "velocity" if family == "CondOT" else "eps")
    rows = []
    for label, name, opts in OPTIMIZE:
        for t_eps in (None, 0.0) if family == "VP" else (None,):
            solver = dj.make_solver(name, **opts)
            n = dj.steps_for_budget(solver, process, budget, t_eps=t_eps)
            for objective in OBJECTIVES:
                res = dj.optimize_grid(solver, model, process, jax.random.key(7), (128, prob.dim), n,
                                       t_eps=t_eps, iterations=OPTIMIZE_ITERATIONS, learning_rate=0.05,
                                       heldout=128, objective=objective)  # fmt: skip
                out = dj.sample(solver, model, process, jax.random.key(0),
                                x_init=jnp.asarray(x_T, jnp.float32), num_steps=n, grid=res.ts,
                                t_eps=t_eps)  # fmt: skip
                med, rmse = errors(out.samples, ref)
                tag = (f"{label} · optimised grid ({objective}, from {res.init})"
                       + (" · t_eps 0" if t_eps == 0.0 else ""))  # fmt: skip
                rows.append(Row(prob.name, family, "diffjax", tag, budget, int(out.nfe), med, rmse))
    return rows


def run_diffjax(prob, family, process, x_T, ref, budget) -> list[Row]:
    model = prob.mixture.model(process, "velocity" if family == "CondOT" else "eps")
    rows = []
    for label, name, opts, grid, t_eps in diffjax_configs(family):
        try:
            res = dj.sample(name, model, process, jax.random.key(0), x_init=jnp.asarray(x_T, jnp.float32),
                            nfe=budget, grid=grid, t_eps=t_eps, **opts)  # fmt: skip
        except ValueError:  # the budget is below one step of this solver
            continue
        med, rmse = errors(res.samples, ref)
        rows.append(Row(prob.name, family, "diffjax", label, budget, int(res.nfe), med, rmse))
    return rows


# ==============================================================================================
# peers
# ==============================================================================================
def diffusers_vp_configs():
    out = []
    for karras in (False, True):
        tag = " karras" if karras else ""
        for order in (2, 3):
            out.append((f"DPMSolverMultistep {order}{tag}", "DPMSolverMultistepScheduler",
                        dict(solver_order=order, use_karras_sigmas=karras)))  # fmt: skip
            for bh in ("bh1", "bh2"):
                out.append((f"UniPC {order} {bh}{tag}", "UniPCMultistepScheduler",
                            dict(solver_order=order, solver_type=bh, use_karras_sigmas=karras)))  # fmt: skip
            out.append((f"DEIS {order}{tag}", "DEISMultistepScheduler",
                        dict(solver_order=order, use_karras_sigmas=karras)))  # fmt: skip
    return out


def diffusers_flow_configs():
    out = []
    for order in (2, 3):
        out.append((f"DPMSolverMultistep {order} flow", "DPMSolverMultistepScheduler",
                    dict(solver_order=order)))  # fmt: skip
        for bh in ("bh1", "bh2"):
            out.append((f"UniPC {order} {bh} flow", "UniPCMultistepScheduler",
                        dict(solver_order=order, solver_type=bh)))  # fmt: skip
    return out


def run_diffusers_vp(prob, x_T, budget, vp) -> list[Row]:
    import diffusers

    chain = dj.DDPMChain.linear(1000)
    model = DiffusersEpsModel(prob, chain)
    rows = []
    for label, cls_name, kwargs in diffusers_vp_configs():
        sched = getattr(diffusers, cls_name)(**DIFFUSERS_SCHEDULE, **kwargs)
        sched.set_timesteps(budget)
        x = torch.tensor(x_T, dtype=torch.float32) * sched.init_noise_sigma
        model.nfe = 0
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
        ratio0 = float(sched.sigmas[0])  # σ/α where the chain starts (VP scaling of x)
        t0 = float(vp.time_at_log_snr(-2.0 * math.log(ratio0)))
        ref = reference(prob.mixture, vp, x_T, t0)
        med, rmse = errors(x.numpy(), ref)
        rows.append(Row(prob.name, "VP", "diffusers", label, budget, model.nfe, med, rmse))
    return rows


def run_diffusers_flow(prob, x_T, budget, ot) -> list[Row]:
    import diffusers

    mix = TorchMixture(prob)
    rows = []
    for label, cls_name, kwargs in diffusers_flow_configs():
        sched = getattr(diffusers, cls_name)(use_flow_sigmas=True, prediction_type="flow_prediction",
                                             **kwargs)  # fmt: skip
        sched.set_timesteps(budget)
        sigmas = [float(s) for s in sched.sigmas]
        x = torch.tensor(x_T, dtype=torch.float32)
        nfe = 0
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps):
                s = sigmas[i]  # x = (1 − s)x0 + s ε; diffusers' flow prediction is ε − x0
                x0, eps = mix.posterior(x, 1.0 - s, s)
                nfe += 1
                x = sched.step(eps - x0, t, x).prev_sample
        ref = reference(prob.mixture, ot, x_T, 1.0 - sigmas[0])
        med, rmse = errors(x.numpy(), ref)
        rows.append(Row(prob.name, "CondOT", "diffusers", label, budget, nfe, med, rmse))
    return rows


def run_flow_matching(prob, x_T, budget, ref) -> list[Row]:
    from flow_matching.solver import ODESolver

    velocity = condot_velocity_wrapper(prob)
    solver = ODESolver(velocity_model=velocity)
    rows = []
    for method, evals in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        n = budget // evals
        if n < 1:
            continue
        velocity.nfe = 0
        with torch.no_grad():
            x = solver.sample(torch.tensor(x_T, dtype=torch.float32), step_size=None, method=method,
                              time_grid=torch.linspace(0.0, 1.0, n + 1))  # fmt: skip
        med, rmse = errors(x.numpy(), ref)
        rows.append(Row(prob.name, "CondOT", "flow_matching", method, budget, velocity.nfe, med, rmse))
    return rows


# ==============================================================================================
def bench(prob, family, budgets, n, seed) -> list[Row]:
    vp, ot = dj.VPSDE(), dj.CondOTPath()
    process = vp if family == "VP" else ot
    x_T = np.asarray(jax.random.normal(jax.random.key(seed), (n, prob.dim)), np.float64)
    ref = reference(prob.mixture, process, x_T, process.t_noise)
    rows = []
    for budget in budgets:
        rows += run_diffjax(prob, family, process, x_T, ref, budget)
        if OPTIMIZE_BUDGETS and budget in OPTIMIZE_BUDGETS:
            rows += run_optimized(prob, family, process, x_T, ref, budget)
        if family == "VP":
            rows += run_diffusers_vp(prob, x_T, budget, vp)
        else:
            rows += run_diffusers_flow(prob, x_T, budget, ot)
            rows += run_flow_matching(prob, x_T, budget, ref)
    return rows


def summary(rows: list[Row]) -> list[str]:
    """Per (problem, budget): the best diffjax configuration on a fixed grid, the best with an optimised
    grid, the best peer configuration (by median; runs with NaN results are left out and counted)."""
    out = ["| problem | NFE | best diffjax, fixed grid | best diffjax, optimised grid | best peer | "
           "ratio of medians (fixed / optimised vs peer) |", "|---|---|---|---|---|---|"]  # fmt: skip
    cell = lambda r: f"{r.method}: {r.median:.2e} / {r.rmse:.2e} (NFE {r.nfe})"  # noqa: E731
    for p, f, b in sorted({(r.problem, r.family, r.budget) for r in rows}):
        sel = [r for r in rows if (r.problem, r.family, r.budget) == (p, f, b) and r.nfe <= b
               and math.isfinite(r.median)]  # fmt: skip
        fixed = [r for r in sel if r.library == "diffjax" and "optimised" not in r.method]
        opt = [r for r in sel if r.library == "diffjax" and "optimised" in r.method]
        peers = [r for r in sel if r.library != "diffjax"]
        ours, peer = min(fixed, key=lambda r: r.median), min(peers, key=lambda r: r.median)
        best_opt = min(opt, key=lambda r: r.median) if opt else None
        ratio = f"{ours.median / peer.median:.2f}"
        if best_opt is not None:
            ratio += f" / {best_opt.median / peer.median:.2f}"
        out.append(f"| {p} {f} | {b} | {cell(ours)} | {cell(best_opt) if opt else '–'} | {peer.library} "
                   f"{cell(peer)} | {ratio} |")  # fmt: skip
    nan = sum(not math.isfinite(r.median) for r in rows)
    if nan:
        names = sorted({f"{r.library} {r.method}" for r in rows if not math.isfinite(r.median)})
        out += ["", f"{nan} runs returned NaN samples and are left out: {', '.join(names)}."]
    return out


def write_table(rows: list[Row], n: int, out: str) -> None:
    env = environment()
    lines = [f"# Endpoint error at a fixed NFE budget ({datetime.date.today()})", "",
             f"{n} initial noises per problem; error = ‖x − x_ref‖₂ per sample against the exact ODE "
             "from the same noise (float64 Dopri8, rtol = atol = 1e-10). "
             f"jax {env['jax']}, torch {env['torch']}, diffusers {env['diffusers']}, "
             f"flow_matching {env['flow_matching']}. Accuracy only: no times are compared here.", "",
             *summary(rows), "", "## Every configuration", "",
             "| problem | family | library | method | budget | NFE | median | RMSE |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r.problem} | {r.family} | {r.library} | {r.method} | {r.budget} | {r.nfe} | "
              f"{r.median:.3e} | {r.rmse:.3e} |" for r in rows]  # fmt: skip
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2D only, NFE 10")
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--n", type=int, default=2000, help="initial noises per problem")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "endpoint.md"))
    ap.add_argument("--optimize", nargs="*", type=int, default=[5, 10],
                    help="budgets at which to add grids optimised by dj.optimize_grid (none: --optimize)")
    ap.add_argument("--skip", nargs="*", default=[], help="diffjax solver names to leave out")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # PROBLEM:FAMILY, run by main itself
    args = ap.parse_args()
    SKIP.update(args.skip)
    OPTIMIZE_BUDGETS.update(args.optimize)
    torch.set_num_threads(TORCH_THREADS)
    problems = make_problems()
    if args.quick:
        problems, args.nfe = {"2D": problems["2D"]}, [10]
    if args.case:  # one (problem, family) in this process: rows as JSON lines on stdout
        pname, family = args.case.split(":")
        prob = problems[pname]
        check_models(prob, dj.DDPMChain.linear(1000), dj.CondOTPath())
        for r in bench(prob, family, args.nfe, args.n, seed=1):
            print("ROW " + json.dumps(dataclasses.asdict(r)), flush=True)
        return
    # each (problem, family) in a fresh process: hundreds of compiled programs in one process
    # exhaust LLVM's memory mappings on this machine
    rows = []
    passthrough = ["--nfe", *map(str, args.nfe), "--n", str(args.n), "--optimize", *map(str, args.optimize),
                   "--skip", *args.skip] + (["--quick"] if args.quick else [])  # fmt: skip
    for pname in problems:
        for family in ("VP", "CondOT"):
            proc = subprocess.run([sys.executable, __file__, "--case", f"{pname}:{family}", *passthrough],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            for line in proc.stdout.splitlines():
                if line.startswith("ROW "):
                    r = Row(**json.loads(line[4:]))
                    rows.append(r)
                    print(f"{r.problem:>3} {r.family:<6} {r.library:<13} {r.method:<40} budget "
                          f"{r.budget:>3} NFE {r.nfe:>3}  median {r.median:.3e}  RMSE {r.rmse:.3e}",
                          flush=True)  # fmt: skip
    write_table(rows, args.n, args.out)
    print("\n".join(summary(rows)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
