"""Samplers: pure step functions run by one compiled `lax.scan` driver (`sample`), time grids, and
an adaptive ODE solver.

    from diffjax.samplers import sample
    res = sample("dpm_solver_pp", model_fn, VPSDE(), key, (512, 2), 20, prediction="eps")
    res.samples, res.nfe

`SAMPLERS` maps each name to its constructor (denoise, process, num_steps, **options) -> Sampler.
"""

from diffjax.samplers.adaptive import sample_adaptive
from diffjax.samplers.driver import Sampler, SampleResult, integrate, sample
from diffjax.samplers.grids import edm_grid, logsnr_grid, make_grid, time_at_log_snr, uniform_grid
from diffjax.samplers.ode import ddim, dpm_solver_pp, euler, heun, midpoint
from diffjax.samplers.sde import ancestral, edm, euler_maruyama, predictor_corrector

SAMPLERS = {
    # probability-flow ODE
    "euler": euler,
    "heun": heun,
    "midpoint": midpoint,
    "ddim": ddim,  # eta = 0 deterministic; eta > 0 stochastic
    "dpm_solver_pp": dpm_solver_pp,
    # stochastic
    "euler_maruyama": euler_maruyama,
    "ancestral": ancestral,
    "pc": predictor_corrector,
    "edm": edm,  # s_churn = 0: EDM's deterministic Heun in σ/α
}

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "Sampler",
    "ancestral",
    "ddim",
    "dpm_solver_pp",
    "edm",
    "edm_grid",
    "euler",
    "euler_maruyama",
    "heun",
    "integrate",
    "logsnr_grid",
    "make_grid",
    "midpoint",
    "predictor_corrector",
    "sample",
    "sample_adaptive",
    "time_at_log_snr",
    "uniform_grid",
]
