"""Benchmark: diffjax samplers against diffusers' schedulers and flow_matching's ODESolver.

Every sampler is driven by the *exact* model of the same Gaussian mixture (no training), so the
only error left is the sampler's: discretisation (and, for stochastic samplers, their Monte Carlo
error). Problems: a 2D ring of 8 Gaussians and a 16D mixture of 4 isotropic Gaussians, each under

  * VP:     diffjax on `dj.VPSDE()` (β 0.1 → 20, the continuous limit of DDPM's linear schedule) and
            on `dj.DDPMChain.linear(1000)`; diffusers' DDIM, DPMSolverMultistep (dpmsolver++), Euler and
            Heun discrete, and DDPM schedulers with the same chain (their timestep index i is the
            chain's time i + 1), driven by the exact ε-model;
  * CondOT: diffjax on `dj.CondOTPath()`; flow_matching's ODESolver (euler, midpoint, dopri5) driven
            by the exact velocity.

Fairness: both sides evaluate the same closed form of isotropic components (C_k = α²s_k² + σ²,
r_k ∝ w_k N(x; αμ_k, C_k I), E[ε|x] = σ Σ r_k (x − αμ_k)/C_k, E[x0|x] = Σ r_k (μ_k + α s_k² (x −
αμ_k)/C_k)), O(KD) per point. diffjax uses the library's exact model
`GaussianMixture.model(process, "eps" | "velocity")` (the mixtures are built with `covs` of shape
(K,), so the oracle takes its isotropic fast path, without eigendecompositions); the peers use the
same formula written in torch, checked against that oracle before timing. diffjax runs jitted
(compile time excluded from the per-batch time, reported separately); torch runs under `no_grad`
with 2 threads.

Metrics per run: sliced W2 (`diffjax.metrics.sliced_wasserstein`, 256 projections) of the samples
to 16384 fresh data points, root-mean-square over the timed batches; the noise floor is the same
statistic for fresh data batches. Wall time: median over the timed batches of one full sampling
call (prior draw included), `block_until_ready` for jax.

    /work/main/.venv-bench/bin/python bench/bench_samplers.py            # ~10 min on 2 cores
    /work/main/.venv-bench/bin/python bench/bench_samplers.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch
from machine import add_load_arguments, check_idle, pin_threads

import diffjax as dj
from diffjax.metrics import sliced_wasserstein_sorted, sorted_projections
from diffjax.xla_cpu import configure_xla_cpu

TORCH_THREADS = 2
TARGET_NFES = (5, 10, 20, 50)
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)
N_REF = 16384  # fresh data points every sample set is compared with
N_PROJ = 256


# ==============================================================================================
# Problems and the exact model in both frameworks
# ==============================================================================================
@dataclass
class Problem:
    """A mixture of isotropic Gaussians: means (K, D), stds (K,), weights (K,)."""

    name: str
    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray
    mixture: dj.GaussianMixture = field(init=False)

    def __post_init__(self):
        self.mixture = dj.GaussianMixture.create(self.means, self.stds**2, weights=self.weights)
        if not self.mixture.isotropic:  # the closed form both sides are timed with
            raise RuntimeError(f"{self.name}: the oracle mixture is not isotropic.")

    @property
    def dim(self) -> int:
        return self.means.shape[1]


def make_problems() -> dict[str, Problem]:
    ring = dj.ring_mixture(8, radius=4.0, std=0.5)
    rng = np.random.default_rng(0)
    return {
        "2D": Problem("2D", np.asarray(ring.means), np.full(8, 0.5), np.full(8, 1 / 8)),
        "16D": Problem(
            "16D",
            3.0 * rng.standard_normal((4, 16)),
            np.array([0.3, 0.5, 0.7, 1.0]),
            np.array([0.1, 0.2, 0.3, 0.4]),
        ),
    }


class TorchMixture:
    """The same closed form in torch, for one scalar (α, σ) per call."""

    def __init__(self, prob: Problem):
        self.means = torch.tensor(prob.means, dtype=torch.float32)
        self.var = torch.tensor(prob.stds**2, dtype=torch.float32)
        self.logw = torch.log(torch.tensor(prob.weights, dtype=torch.float32))
        self.dim = prob.dim

    def posterior(self, x: torch.Tensor, a: float, s: float):
        diff = x[:, None, :] - a * self.means[None]  # (N, K, D)
        c = a * a * self.var + s * s  # (K,)
        logits = self.logw - 0.5 * ((diff * diff).sum(-1) / c + self.dim * torch.log(c))
        r = torch.softmax(logits, dim=1)
        rc = r / c
        eps = s * torch.einsum("nk,nkd->nd", rc, diff)
        x0 = r @ self.means + a * torch.einsum("nk,nkd->nd", rc * self.var, diff)
        return x0, eps


class DiffusersEpsModel:
    """Exact ε-model of the DDPM chain in diffusers' time index: timestep i ↔ chain time i + 1.
    Fractional timesteps (Euler/Heun discrete schedulers) use the σ/α that those schedulers
    interpolate linearly in i, so the model always matches the noise level they assume."""

    def __init__(self, prob: Problem, chain: dj.DDPMChain):
        ab = np.asarray(chain.alpha_bars, np.float64)[1:]
        omab = np.asarray(chain.one_minus_alpha_bars, np.float64)[1:]
        self.ratio = np.sqrt(omab / ab)  # σ/α at index i = 0..T−1
        self.mix = TorchMixture(prob)
        self.nfe = 0

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        self.nfe += 1
        t = float(timestep)
        i0 = min(int(math.floor(t)), len(self.ratio) - 2)
        f = t - i0
        nu = (1.0 - f) * self.ratio[i0] + f * self.ratio[i0 + 1]
        a = 1.0 / math.sqrt(1.0 + nu * nu)
        return self.mix.posterior(x, a, nu * a)[1]


def condot_velocity_wrapper(prob: Problem):
    """flow_matching ModelWrapper returning the exact CondOT velocity E[x0 − ε | x_t = x]."""
    from flow_matching.utils import ModelWrapper

    class ExactVelocity(ModelWrapper):
        def __init__(self):
            super().__init__(None)
            self.mix = TorchMixture(prob)
            self.nfe = 0

        def forward(self, x, t, **extras):
            self.nfe += 1
            a = float(t)
            x0, eps = self.mix.posterior(x, a, 1.0 - a)
            return x0 - eps

    return ExactVelocity()


# ==============================================================================================
# Numerical checks before timing
# ==============================================================================================
def check_models(prob: Problem, chain: dj.DDPMChain, ot: dj.CondOTPath) -> dict:
    """Max abs difference (relative to the output's scale) of the torch closed forms (the peers'
    models) against diffjax's oracle (diffjax's models), on points drawn from p_t; raises if it
    exceeds 1e-4."""
    key = jax.random.PRNGKey(7)
    x0, _ = prob.mixture.sample(key, 512)

    def draw(process, t):
        tb = jnp.full((512,), t, jnp.float32)
        return process.sample_marginal(jax.random.PRNGKey(int(t * 1000) + 1), x0, tb).x_t, tb

    worst = 0.0
    eps_model = DiffusersEpsModel(prob, chain)
    for t in (1, 10, 100, 500, 999, 1000):
        x, tb = draw(chain, t)
        ref = np.asarray(prob.mixture.predict(x, chain, tb, "eps"))
        with torch.no_grad():
            got = eps_model(torch.from_numpy(np.array(x)), t - 1).numpy()
        worst = max(worst, float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
    vel = condot_velocity_wrapper(prob)
    for t in (0.0, 0.3, 0.7, 1.0):
        x, tb = draw(ot, t)
        ref = np.asarray(prob.mixture.predict(x, ot, tb, "velocity"))
        with torch.no_grad():
            got = vel(torch.from_numpy(np.array(x)), torch.tensor(t)).numpy()
        worst = max(worst, float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
    out = {"torch_vs_oracle": worst}
    if worst > 1e-4:
        raise RuntimeError(f"{prob.name}: the torch models disagree with diffjax's oracle: {out}")
    return out


def check_alpha_bars(chain: dj.DDPMChain) -> float:
    """Max relative difference of diffusers' ᾱ (alphas_cumprod[i]) and diffjax's ᾱ_{i+1}."""
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(**DIFFUSERS_SCHEDULE).alphas_cumprod.double().numpy()
    ours = np.asarray(chain.alpha_bars, np.float64)[1:]
    err = float(np.max(np.abs(theirs - ours) / ours))
    if err > 1e-4:
        raise RuntimeError(f"ᾱ of diffusers and DDPMChain.linear(1000) differ by {err:.2e}")
    return err


# ==============================================================================================
# Runners: each returns (list of sample batches as numpy, list of seconds, nfe, compile seconds)
# ==============================================================================================
@dataclass
class Run:
    problem: str
    family: str  # 'VP' or 'CondOT'
    library: str
    method: str
    target_nfe: int | str
    nfe: int = 0
    sw: float = math.nan
    logp_gap: float = math.nan
    ms: float = math.nan
    compile_s: float = math.nan
    note: str = ""


def plan_diffjax(name: str, process, target: int, opts: dict) -> tuple[int, float | None, bool]:
    """(num_steps, t_eps, denoise_final) whose NFE is closest to `target` from below: exact if
    possible, preferring the default t_eps and a final denoising step."""
    solver = dj.make_solver(name, **opts)
    zero_alpha = process.alpha_is_zero_at_noise()
    # flow paths (time runs from noise to data) may also stop short of the data
    t_eps_choices = [None] + ([1e-3] if process.t_data > process.t_noise else [])
    best = None
    for pref_t, t_eps in enumerate(t_eps_choices):
        reaches = process.data_end(t_eps) == process.t_data
        for pref_d, denoise in enumerate((True, False)):
            for n in range(1, target + 1):
                nfe = solver.num_evaluations(n, ends_at_data=reaches, starts_at_zero_alpha=zero_alpha)
                nfe += int(denoise and not reaches)
                if nfe <= target:
                    score = (target - nfe, pref_t, pref_d)
                    if best is None or score < best[0]:
                        best = (score, (n, t_eps, denoise))
    return best[1]


def run_diffjax(fn, reps: int, seed: int):
    """fn(key) -> (samples, nfe). First call = compile + run; then `reps` timed calls."""
    keys = jax.random.split(jax.random.PRNGKey(seed), reps + 1)
    t0 = time.perf_counter()
    x, nfe = fn(keys[0])
    jax.block_until_ready(x)
    first = time.perf_counter() - t0
    outs, times = [], []
    for k in keys[1:]:
        t0 = time.perf_counter()
        x, nfe = fn(k)
        jax.block_until_ready(x)
        times.append(time.perf_counter() - t0)
        outs.append(np.asarray(x))
    return outs, times, int(nfe), max(first - statistics.median(times), 0.0)


def run_torch(fn, reps: int, seed: int):
    """fn(generator) -> (samples, nfe): one warm-up call, then `reps` timed calls."""
    outs, times = [], []
    with torch.no_grad():
        fn(torch.Generator().manual_seed(seed))
        for r in range(reps):
            g = torch.Generator().manual_seed(seed + 1 + r)
            t0 = time.perf_counter()
            x, nfe = fn(g)
            times.append(time.perf_counter() - t0)
            outs.append(x.numpy())
    return outs, times, nfe, math.nan


DIFFUSERS_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
)


def diffusers_sampler(cls_name: str, kwargs: dict, model: DiffusersEpsModel, shape, n: int):
    import diffusers

    sched = getattr(diffusers, cls_name)(**DIFFUSERS_SCHEDULE, **kwargs)
    stochastic = cls_name == "DDPMScheduler"

    def fn(g):
        model.nfe = 0
        sched.set_timesteps(n)
        x = torch.randn(shape, generator=g) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t), t)
            extra = {"generator": g} if stochastic else {}
            x = sched.step(eps, t, x, **extra).prev_sample
        return x, model.nfe

    return fn


def flow_matching_sampler(velocity, method: str, shape, n: int | None, tol: float | None):
    from flow_matching.solver import ODESolver

    solver = ODESolver(velocity_model=velocity)

    def fn(g):
        velocity.nfe = 0
        x = torch.randn(shape, generator=g)
        if n is None:  # adaptive
            grid = torch.tensor([0.0, 1.0])
            x = solver.sample(x, step_size=None, method=method, atol=tol, rtol=tol, time_grid=grid)
        else:  # fixed grid of n steps (step_size=None: torchdiffeq steps on the given grid)
            grid = torch.linspace(0.0, 1.0, n + 1)
            x = solver.sample(x, step_size=None, method=method, time_grid=grid)
        return x, velocity.nfe

    return fn


# ==============================================================================================
# The benchmark
# ==============================================================================================
# (label, sampler name, options, grid); the default options of each sampler unless stated.
DIFFJAX_SAMPLERS = [
    ("euler", "euler", {}, "uniform"),
    ("heun", "heun", {}, "uniform"),
    ("midpoint", "midpoint", {}, "uniform"),
    ("rk4", "rk4", {}, "uniform"),
    ("ddim", "ddim", {}, "uniform"),
    ("dpm_solver_pp 1", "dpm_solver_pp", {"order": 1}, "uniform"),
    ("dpm_solver_pp 2", "dpm_solver_pp", {"order": 2}, "uniform"),
    ("dpm_solver_pp 3", "dpm_solver_pp", {"order": 3}, "uniform"),
    ("euler_maruyama", "euler_maruyama", {}, "uniform"),
    ("ancestral", "ancestral", {}, "uniform"),
    ("pc", "pc", {}, "uniform"),
    ("edm", "edm", {}, "uniform"),
    ("dpm_solver_pp 3 logsnr", "dpm_solver_pp", {"order": 3}, "logsnr"),
    ("edm edm-grid", "edm", {}, "edm"),
]
CHAIN_SAMPLERS = ("ddim", "dpm_solver_pp 2", "dpm_solver_pp 3", "ancestral")
# (label, class, kwargs, model evaluations for n steps)
DIFFUSERS = [
    ("DDIM", "DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}, "n"),
    ("DPMSolverMultistep++ 2M", "DPMSolverMultistepScheduler",
     {"algorithm_type": "dpmsolver++", "solver_order": 2}, "n"),
    ("DPMSolverMultistep++ 3M", "DPMSolverMultistepScheduler",
     {"algorithm_type": "dpmsolver++", "solver_order": 3}, "n"),
    ("EulerDiscrete", "EulerDiscreteScheduler", {}, "n"),
    ("HeunDiscrete", "HeunDiscreteScheduler", {}, "2n-1"),
    ("EulerDiscrete karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, "n"),
    ("HeunDiscrete karras", "HeunDiscreteScheduler", {"use_karras_sigmas": True}, "2n-1"),
    ("DDPM", "DDPMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}, "n"),
]  # fmt: skip
FLOW_MATCHING = [("euler", 1), ("midpoint", 2)]
# diffjax method ↔ its peer counterpart (same algorithm family), for the speed target.
COUNTERPARTS = {
    "VP": [
        ("ddim (DDPM chain)", "DDIM"),
        ("dpm_solver_pp 2 (DDPM chain)", "DPMSolverMultistep++ 2M"),
        ("dpm_solver_pp 3 (DDPM chain)", "DPMSolverMultistep++ 3M"),
        ("ancestral (DDPM chain)", "DDPM"),
        ("ddim", "DDIM"),
        ("dpm_solver_pp 2", "DPMSolverMultistep++ 2M"),
        ("dpm_solver_pp 3", "DPMSolverMultistep++ 3M"),
        ("euler", "EulerDiscrete"),
        ("heun", "HeunDiscrete"),
        ("edm", "HeunDiscrete"),
        ("edm edm-grid", "HeunDiscrete karras"),
        ("ancestral", "DDPM"),
    ],
    "CondOT": [("euler", "euler"), ("heun", "midpoint"), ("midpoint", "midpoint")],
}


class Evaluator:
    """Sliced W2 to fixed fresh data, and the log-density gap, for one problem."""

    def __init__(self, prob: Problem, batch: int, reps: int):
        self.prob = prob
        mix = prob.mixture
        self.ref = mix.sample(jax.random.PRNGKey(1001), N_REF)[0]
        key = jax.random.PRNGKey(1002)
        ref_sorted = sorted_projections(self.ref, key, N_PROJ)  # projected and sorted once
        self._sw = jax.jit(
            lambda x: sliced_wasserstein_sorted(sorted_projections(x, key, N_PROJ), ref_sorted)
        )
        self._logp = jax.jit(mix.log_prob)
        data = mix.sample(jax.random.PRNGKey(1003), 65536)[0]
        self.data_logp = float(self._logp(data).mean())
        floors = []
        for j in range(8):  # noise floor: the same statistic for `reps` fresh data batches
            keys = jax.random.split(jax.random.PRNGKey(2000 + j), reps)
            floors.append(self.sw([np.asarray(mix.sample(k, batch)[0]) for k in keys]))
        self.floor, self.floor_sd = float(np.mean(floors)), float(np.std(floors, ddof=1))

    def sw(self, batches) -> float:
        vals = [float(self._sw(jnp.asarray(b, jnp.float32))) ** 2 for b in batches]
        return math.sqrt(float(np.mean(vals)))

    def logp_gap(self, batches) -> float:
        lp = np.concatenate([np.asarray(self._logp(jnp.asarray(b, jnp.float32))) for b in batches])
        return (float(lp.mean()) - self.data_logp) / self.prob.dim


def finish(run: Run, result, ev: Evaluator, log) -> Run:
    outs, times, nfe, compile_s = result
    run.nfe, run.ms, run.compile_s = nfe, 1e3 * statistics.median(times), compile_s
    if all(np.all(np.isfinite(o)) for o in outs):
        run.sw, run.logp_gap = ev.sw(outs), ev.logp_gap(outs)
    else:
        run.note = "non-finite samples"
    log(run)
    return run


def bench_problem(prob: Problem, args, log) -> tuple[list[Run], dict]:
    chain, vp, ot = dj.DDPMChain.linear(1000), dj.VPSDE(), dj.CondOTPath()
    info = {"checks": check_models(prob, chain, ot)}
    ev = Evaluator(prob, args.batch, args.reps)
    info["floor"], info["floor_sd"] = ev.floor, ev.floor_sd
    shape = (args.batch, prob.dim)
    runs: list[Run] = []
    want = (lambda label: any(s in label for s in args.only)) if args.only else (lambda _: True)

    # -- diffjax -------------------------------------------------------------------------
    # the library's exact models (pytrees declaring their prediction: sample compiles once each)
    models = {
        "VP": prob.mixture.model(vp, "eps"),
        "chain": prob.mixture.model(chain, "eps"),
        "CondOT": prob.mixture.model(ot, "velocity"),
    }
    setups = [("VP", vp, "VP", s) for s in DIFFJAX_SAMPLERS]
    setups += [("VP", chain, "chain", s) for s in DIFFJAX_SAMPLERS if s[0] in CHAIN_SAMPLERS]
    setups += [("CondOT", ot, "CondOT", s) for s in DIFFJAX_SAMPLERS]
    for family, process, mkey, (label, name, opts, grid) in setups:
        method = label + (" (DDPM chain)" if mkey == "chain" else "")
        if not want("diffjax " + method):
            continue
        for target in args.nfe:
            n, t_eps, denoise = plan_diffjax(name, process, target, opts)

            def fn(key, n=n, t_eps=t_eps, denoise=denoise, process=process, name=name, opts=opts,
                   grid=grid, model=models[mkey]):  # fmt: skip
                res = dj.sample(name, model, process, key, shape, n, grid=grid, t_eps=t_eps,
                                denoise_final=denoise, **opts)  # fmt: skip
                return res.samples, res.nfe

            run = Run(prob.name, family, "diffjax", method, target)
            runs.append(finish(run, run_diffjax(fn, args.reps, seed=target), ev, log))
    for family, process in (("VP", vp), ("CondOT", ot)):
        model = models[family]
        for solver in ("tsit5", "dopri5"):
            if not want(f"diffjax adaptive {solver}"):
                continue
            for tol in args.tols:

                def fn(key, process=process, solver=solver, tol=tol, model=model):
                    res = dj.sample(solver, model, process, key, shape, rtol=tol, atol=tol, initial_steps=4)
                    return res.samples, res.nfe

                run = Run(prob.name, family, "diffjax", f"adaptive {solver}", f"tol {tol:g}")
                runs.append(finish(run, run_diffjax(fn, args.reps, seed=3), ev, log))

    # -- diffusers ------------------------------------------------------------------------
    eps_model = DiffusersEpsModel(prob, chain)
    for label, cls_name, kwargs, evals in DIFFUSERS:
        if not want("diffusers " + label):
            continue
        for target in args.nfe:
            n = target if evals == "n" else math.ceil((target + 1) / 2)
            fn = diffusers_sampler(cls_name, kwargs, eps_model, shape, n)
            run = Run(prob.name, "VP", "diffusers", label, target)
            runs.append(finish(run, run_torch(fn, args.reps, seed=target), ev, log))

    # -- flow_matching --------------------------------------------------------------------
    velocity = condot_velocity_wrapper(prob)
    for method, evals in FLOW_MATCHING:
        if not want("flow_matching " + method):
            continue
        for target in args.nfe:
            fn = flow_matching_sampler(velocity, method, shape, math.ceil(target / evals), None)
            run = Run(prob.name, "CondOT", "flow_matching", method, target)
            runs.append(finish(run, run_torch(fn, args.reps, seed=target), ev, log))
    if want("flow_matching dopri5"):
        for tol in args.tols:
            fn = flow_matching_sampler(velocity, "dopri5", shape, None, tol)
            run = Run(prob.name, "CondOT", "flow_matching", "dopri5", f"tol {tol:g}")
            runs.append(finish(run, run_torch(fn, args.reps, seed=3), ev, log))
    return runs, info


# ==============================================================================================
# Reporting
# ==============================================================================================
def environment() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": str(jax.devices()),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "(unset: XLA's CPU defaults, one intra-op "
                                    "thread pool over all cores)"),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "diffjax": getattr(dj, "__version__", "editable"),
        "diffusers": _version("diffusers"),
        "flow_matching": _version("flow_matching"),
    }


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg.replace("_", "-"))
    except Exception:
        return "?"


def _cell(run: Run | None, floor: float) -> str:
    if run is None:
        return ""
    err = "nan" if math.isnan(run.sw) else f"{run.sw:.3f}"
    nfe = f" ({run.nfe})" if run.nfe != run.target_nfe else ""
    return f"{err}{nfe} · {run.ms:.1f}"


def markdown(runs: list[Run], infos: dict, env: dict, args) -> str:
    lines = [
        f"## Sampler benchmark — {env['date']}, {env['cpus']} CPU cores ({env['machine']}), "
        f"batch {args.batch}, median of {args.reps} runs",
        "",
        f"jax {env['jax']} ({env['jax_backend']}, XLA_FLAGS {env['XLA_FLAGS']}, "
        f"x64 {env['jax_enable_x64']}), "
        f"torch {env['torch']} ({env['torch_threads']} threads), diffusers {env['diffusers']}, "
        f"flow_matching {env['flow_matching']}. Cell: sliced W2 to fresh data · ms per batch; "
        "(n) = actual NFE where it differs from the column's target. Compile time (diffjax, "
        "first call minus a run) at the smallest NFE column.",
        "",
    ]
    for pname, info in infos.items():
        for family in ("VP", "CondOT"):
            sel = [r for r in runs if r.problem == pname and r.family == family]
            if not sel:
                continue
            lines += [
                f"### {pname}, {family} — noise floor {info['floor']:.3f} ± {info['floor_sd']:.3f}",
                "",
            ]
            fixed = [r for r in sel if isinstance(r.target_nfe, int)]
            targets = sorted({r.target_nfe for r in fixed})
            head = "| library | method | " + " | ".join(f"NFE {t}" for t in targets)
            lines += [head + " | compile s |", "|---|---|" + "---|" * (len(targets) + 1)]
            methods = list(dict.fromkeys((r.library, r.method) for r in fixed))
            for lib, meth in methods:
                cells = []
                for t in targets:
                    r = next((r for r in fixed if (r.library, r.method, r.target_nfe)
                              == (lib, meth, t)), None)  # fmt: skip
                    cells.append(_cell(r, info["floor"]))
                first = next(r for r in fixed if (r.library, r.method) == (lib, meth))
                comp = "" if math.isnan(first.compile_s) else f"{first.compile_s:.2f}"
                lines.append(f"| {lib} | {meth} | " + " | ".join(cells) + f" | {comp} |")
            adaptive = [r for r in sel if not isinstance(r.target_nfe, int)]
            if adaptive:
                lines += ["", "| library | adaptive solver | rtol = atol | NFE | sliced W2 | ms |",
                          "|---|---|---|---|---|---|"]  # fmt: skip
                for r in adaptive:
                    lines.append(f"| {r.library} | {r.method} | {r.target_nfe[4:]} | {r.nfe} | "
                                 f"{r.sw:.3f} | {r.ms:.1f} |")  # fmt: skip
            lines.append("")
    return "\n".join(lines)


def targets_summary(runs: list[Run], infos: dict, nfe: int = 10) -> str:
    """The two targets of issue 3 at `nfe` (accuracy) and at every NFE (speed)."""
    out = [f"### Targets (accuracy at NFE {nfe}; speed at every NFE)", ""]
    for pname in infos:
        for family in ("VP", "CondOT"):
            sel = [r for r in runs if r.problem == pname and r.family == family
                   and r.target_nfe == nfe and not math.isnan(r.sw)]  # fmt: skip
            ours = [r for r in sel if r.library == "diffjax"]
            peers = [r for r in sel if r.library != "diffjax"]
            if not ours or not peers:
                continue
            b_o, b_p = min(ours, key=lambda r: r.sw), min(peers, key=lambda r: r.sw)
            ok = "met" if b_o.sw <= b_p.sw else "NOT met"
            out.append(f"- {pname} {family}, accuracy: best diffjax {b_o.method} {b_o.sw:.3f} "
                       f"(NFE {b_o.nfe}) vs best peer {b_p.library} {b_p.method} {b_p.sw:.3f} "
                       f"(NFE {b_p.nfe}), floor {infos[pname]['floor']:.3f}: {ok}")  # fmt: skip
    slower = []
    pairs = 0
    for r in runs:
        if r.library != "diffjax" or not isinstance(r.target_nfe, int):
            continue
        for ours, theirs in COUNTERPARTS.get(r.family, []):
            if r.method != ours:
                continue
            for p in runs:
                if (p.library != "diffjax" and p.method == theirs and p.problem == r.problem
                        and p.family == r.family and p.target_nfe == r.target_nfe):  # fmt: skip
                    pairs += 1
                    if not r.ms < p.ms:
                        slower.append(f"{r.problem} {r.method} {r.ms:.1f} ms vs {p.method} "
                                      f"{p.ms:.1f} ms at NFE {r.target_nfe}")  # fmt: skip
    for r in runs:  # adaptive: diffjax dopri5 vs flow_matching dopri5 at the same tolerance
        if r.library == "diffjax" and r.method == "adaptive dopri5" and r.family == "CondOT":
            for p in runs:
                if (p.library == "flow_matching" and p.method == "dopri5"
                        and p.problem == r.problem and p.target_nfe == r.target_nfe):
                    pairs += 1
                    if not r.ms < p.ms:
                        slower.append(f"{r.problem} dopri5 {r.target_nfe}")
    verdict = "met" if not slower else "NOT met: " + "; ".join(slower)
    ratios = _speed_ratios(runs)
    out.append(f"- speed, {pairs} diffjax/peer counterpart pairs at matched NFE: {verdict}; "
               f"peer/diffjax time ratio min {ratios[0]:.1f}×, median {ratios[1]:.1f}×")
    return "\n".join(out) + "\n"


def _speed_ratios(runs):
    ratios = []
    for r in runs:
        if r.library != "diffjax" or not isinstance(r.target_nfe, int):
            continue
        for ours, theirs in COUNTERPARTS.get(r.family, []):
            if r.method == ours:
                ratios += [p.ms / r.ms for p in runs if p.library != "diffjax"
                           and p.method == theirs and p.problem == r.problem
                           and p.family == r.family and p.target_nfe == r.target_nfe]  # fmt: skip
    return (min(ratios), statistics.median(ratios)) if ratios else (math.nan, math.nan)


PLOTTED = {
    "VP": {
        "diffjax": ["euler", "heun", "edm edm-grid", "ddim (DDPM chain)",
                    "dpm_solver_pp 2 (DDPM chain)", "dpm_solver_pp 3 logsnr",
                    "ancestral (DDPM chain)", "adaptive tsit5"],
        "diffusers": [d[0] for d in DIFFUSERS],
    },
    "CondOT": {
        "diffjax": ["euler", "heun", "midpoint", "dpm_solver_pp 2", "dpm_solver_pp 3", "edm",
                    "adaptive dopri5"],
        "flow_matching": ["euler", "midpoint", "dopri5"],
    },
}  # fmt: skip


def plot(runs: list[Run], infos: dict, env: dict, path: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, f) for p in infos for f in ("VP", "CondOT")
              if any(r.problem == p and r.family == f for r in runs)]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 3.6 * len(panels)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row, (pname, family) in enumerate(panels):
        ax_n, ax_t = axes[row]
        i_color = {"diffjax": 0, "diffusers": 0, "flow_matching": 0}
        for lib, methods in PLOTTED[family].items():
            for meth in methods:
                sel = [r for r in runs if r.problem == pname and r.family == family
                       and r.library == lib and r.method == meth and not math.isnan(r.sw)]
                if not sel:
                    continue
                sel.sort(key=lambda r: r.nfe)
                ours = lib == "diffjax"
                style = dict(color=cmap(i_color[lib] % 10), marker="o" if ours else "s",
                             linestyle="-" if ours else "--", mfc=None if ours else "none",
                             ms=4, lw=1.3, label=f"{lib}: {meth}")  # fmt: skip
                i_color[lib] += 1
                ax_n.plot([r.nfe for r in sel], [r.sw for r in sel], **style)
                ax_t.plot([r.ms for r in sel], [r.sw for r in sel], **style)
        floor = infos[pname]["floor"]
        for ax in (ax_n, ax_t):
            ax.axhline(floor, color="gray", lw=1, ls=":", label="noise floor (fresh data)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylabel("sliced W2 to data")
            ax.grid(True, which="both", alpha=0.25)
        ax_n.set_xlabel("model evaluations (NFE)")
        ax_t.set_xlabel(f"wall time per batch of {args.batch} (ms)")
        ax_n.set_title(f"{pname}, {family}: error vs NFE", fontsize=10)
        ax_t.set_title(f"{pname}, {family}: error vs wall time", fontsize=10)
        ax_t.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"Exact-model sampling: diffjax (solid, filled) vs peers (dashed, hollow) — "
                 f"{env['date']}, {env['cpus']} CPU cores", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2D, NFE 10 only, batch 2048 (~1 min)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per configuration (>= 5)")
    ap.add_argument("--dims", nargs="+", default=["2D", "16D"])
    ap.add_argument("--nfe", nargs="+", type=int, default=list(TARGET_NFES))
    ap.add_argument("--tols", nargs="+", type=float, default=list(ADAPTIVE_TOLS))
    ap.add_argument("--only", nargs="*", default=None, help="substrings of 'library method'")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    add_load_arguments(ap)
    ap.set_defaults(threads=TORCH_THREADS)
    args = ap.parse_args()
    load = check_idle(args)
    if args.quick:
        args.dims, args.nfe, args.tols, args.batch = ["2D"], [10], [1e-3], 2048
    configure_xla_cpu()
    pin_threads(args.threads)
    env = environment()
    t_start = time.perf_counter()

    def log(run: Run):
        print(f"  {run.problem:>3} {run.family:<6} {run.library:<13} {run.method:<30} "
              f"NFE {run.nfe:>4}  SW {run.sw:8.4f}  {run.ms:9.2f} ms  compile "
              f"{run.compile_s:5.2f} s  {run.note}", flush=True)  # fmt: skip

    problems = make_problems()
    chain = dj.DDPMChain.linear(1000)
    env["alpha_bar_max_rel_diff"] = check_alpha_bars(chain)
    print(f"ᾱ: diffusers vs DDPMChain.linear(1000), max relative difference "
          f"{env['alpha_bar_max_rel_diff']:.2e}")  # fmt: skip
    runs, infos = [], {}
    for pname in args.dims:
        prob = problems[pname]
        print(f"== {pname} (batch {args.batch})", flush=True)
        r, info = bench_problem(prob, args, log)
        print(f"   torch exact models vs diffjax oracle (max abs / scale): {info['checks']}; "
              f"noise floor {info['floor']:.4f} ± {info['floor_sd']:.4f}")  # fmt: skip
        runs += r
        infos[pname] = info
    env["total_s"] = time.perf_counter() - t_start
    env["load"] = load.finish().describe()

    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(args.out, f"samplers{suffix}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["problem", "family", "library", "method", "target_nfe", "nfe", "sliced_w2",
                    "noise_floor", "logp_gap_nats_per_dim", "ms_per_batch", "compile_s", "note"])
        for r in runs:
            w.writerow([r.problem, r.family, r.library, r.method, r.target_nfe, r.nfe,
                        f"{r.sw:.5f}", f"{infos[r.problem]['floor']:.5f}", f"{r.logp_gap:.4f}",
                        f"{r.ms:.3f}", f"{r.compile_s:.3f}", r.note])  # fmt: skip
    text = markdown(runs, infos, env, args)
    text = f"{env['load']}\n\n" + text
    if not args.only:
        text += "\n" + targets_summary(runs, infos, 10 if 10 in args.nfe else args.nfe[0])
    env_lines = "\n".join(f"- {k}: {v}" for k, v in env.items())
    checks = "\n".join(f"- {p}: torch exact models vs diffjax oracle {i['checks']}"
                       for p, i in infos.items())  # fmt: skip
    text += f"\n### Environment\n\n{env_lines}\n{checks}\n"
    with open(os.path.join(args.out, f"samplers{suffix}.md"), "w") as f:
        f.write(text)
    plot(runs, infos, env, os.path.join(args.out, f"samplers{suffix}.png"), args)
    print()
    print(text)
    print(f"total {env['total_s']:.0f} s; wrote {args.out}/samplers{suffix}.{{csv,md,png}}")


if __name__ == "__main__":
    main()
