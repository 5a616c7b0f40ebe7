"""diffjax: diffusion models and flow matching in JAX, with exact checks.

    import diffjax as dj
    process = dj.VPSDE()
    mixture = dj.ring_mixture(8)
    res = dj.sample("dpm_solver_pp", mixture.model(process, "eps"), process, key, (512, 2), 10)

The layers, bottom up: `processes` (every process states α(t), σ(t); the rest is derived once) →
`parameterization` (exact conversions between predictions) → `losses` → `solvers` (small frozen
objects run by one integrator) → `sampling`, `likelihood`, `guidance` → `models` → `training`.
The core imports only JAX, Flax, Optax and diffrax; training (Orbax), data, evaluation and plotting
are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata

try:
    __version__ = importlib.metadata.version("diffjax")
except importlib.metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

from diffjax.consistency import (
    ConsistencyModel,
    DDIMConsistencyModel,
    consistency_distillation_loss,
    consistency_training_loss,
    continuous_consistency_loss,
    ict_noise_levels,
    ict_num_levels,
)
from diffjax.distillation import progressive_distillation_loss
from diffjax.flow import ProbabilityFlow
from diffjax.flow_map import AverageVelocityMap, InstantaneousVelocity, flow_map_sample, solve_flow_map
from diffjax.grid_optimization import OptimizedGrid, optimize_grid
from diffjax.grids import edm_grid, logsnr_grid, make_grid, uniform_grid
from diffjax.guidance import (
    apg,
    autoguidance,
    bind_labels,
    cfg_model,
    cfgpp_equivalent_scales,
    cfgpp_sample,
    classifier_guided_model,
    guidance_interval,
)
from diffjax.langevin import langevin_dynamics
from diffjax.likelihood import (
    SampleLogProb,
    bits_per_dim,
    continuous_elbo,
    log_likelihood,
    sample_with_log_prob,
    variational_bound,
    vdm_loss,
)
from diffjax.losses import (
    EDMWeighting,
    MinSNRWeighting,
    antithetic_uniform_time,
    cfm_loss,
    conditional_loss,
    constant_time,
    denoising_loss,
    dsm_loss,
    effective_weighting,
    logit_normal_time,
    lognormal_time,
    make_weighting,
    uniform_time,
)
from diffjax.meanflow import average_velocity_and_derivative, meanflow_loss, meanflow_times
from diffjax.oracle import GaussianMixture, gaussian, ring_mixture
from diffjax.parameterization import PREDICTIONS, as_prediction, clip_denoised, convert
from diffjax.preconditioning import Preconditioned, edm_scalings, precondition
from diffjax.processes import (
    VESDE,
    VPSDE,
    CondOTPath,
    CosinePath,
    CosineVPSDE,
    DDPMChain,
    GaussianPath,
    GaussianProcess,
    LearnedSchedule,
    LinearSDE,
    PolynomialPath,
    SubVPSDE,
    VPPath,
    build_process,
    flow_path_from_sde,
    sde_from_flow_path,
)
from diffjax.reflow import (
    Couplings,
    load_couplings,
    make_couplings,
    pair_distillation_loss,
    reflow_loss,
    save_couplings,
    straightness,
)
from diffjax.sampling import SampleResult, make_solver, sample, steps_for_budget
from diffjax.shortcut import shortcut_loss, shortcut_times
from diffjax.solvers import (
    DDIM,
    DEIS,
    EDM,
    RK4,
    SOLVERS,
    Adaptive,
    Ancestral,
    DPMSolverPP,
    DPMSolverPPSDE,
    Euler,
    EulerMaruyama,
    Heun,
    Midpoint,
    PredictorCorrector,
    SASolver,
    UniPC,
    integrate,
)
from diffjax.xla_cpu import configure_xla_cpu

_LAZY = {  # heavier subpackages and helpers, imported on first use
    "models": "diffjax.models",
    "training": "diffjax.training",
    "data": "diffjax.data",
    "evaluation": "diffjax.evaluation",
    "metrics": "diffjax.metrics",
    "viz": "diffjax.viz",
    "load_model": "diffjax.training.workdir",
    "pretrained": "diffjax.pretrained",
    "load_pretrained": "diffjax.pretrained",
    "available_pretrained": "diffjax.pretrained",
    "pretrained_card": "diffjax.pretrained",
    "save_pretrained": "diffjax.pretrained",
    "latent": "diffjax.latent",  # latent diffusion (Rombach et al. 2022)
    "LatentSpace": "diffjax.latent",
    "autoencoder_loss": "diffjax.latent",
    "encode_dataset": "diffjax.latent",
    "decode_latents": "diffjax.latent",
    "load_latent_space": "diffjax.training.workdir",
    "WithSchedule": "diffjax.models",  # a network with VDM's learned schedule
    "process_of": "diffjax.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith("." + name) else getattr(module, name)
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")


__all__ = [
    "DDIM", "EDM", "EDMWeighting", "MinSNRWeighting", "PREDICTIONS", "Preconditioned",
    "antithetic_uniform_time", "edm_scalings", "effective_weighting", "lognormal_time", "make_weighting",
    "precondition", "continuous_elbo", "vdm_loss", "LearnedSchedule",
    "WithSchedule", "process_of", "RK4", "SOLVERS", "VESDE", "VPSDE", "Adaptive",
    "Ancestral",
    "CondOTPath", "CosinePath", "CosineVPSDE", "DDPMChain", "DPMSolverPP", "Euler", "EulerMaruyama",
    "GaussianMixture", "GaussianPath", "GaussianProcess", "Heun", "LinearSDE", "Midpoint",
    "PolynomialPath", "PredictorCorrector", "ProbabilityFlow", "SampleResult", "SubVPSDE", "VPPath",
    "as_prediction", "bits_per_dim", "build_process", "cfg_model", "cfm_loss", "classifier_guided_model",
    "clip_denoised", "conditional_loss", "constant_time", "convert",
    "denoising_loss", "dsm_loss", "edm_grid", "flow_path_from_sde", "gaussian", "integrate",
    "langevin_dynamics", "load_model", "log_likelihood", "logit_normal_time", "logsnr_grid",
    "make_grid", "make_solver", "ring_mixture", "sample", "sde_from_flow_path", "steps_for_budget",
    "uniform_grid", "SampleLogProb", "sample_with_log_prob", "UniPC", "DEIS", "DPMSolverPPSDE", "SASolver",
    "OptimizedGrid", "optimize_grid", "apg", "autoguidance", "bind_labels", "cfgpp_equivalent_scales",
    "cfgpp_sample", "guidance_interval",
    "uniform_time", "variational_bound",
    "AverageVelocityMap", "InstantaneousVelocity", "flow_map_sample", "solve_flow_map",
    "progressive_distillation_loss", "ConsistencyModel", "DDIMConsistencyModel",
    "consistency_distillation_loss",
    "consistency_training_loss", "continuous_consistency_loss", "ict_noise_levels", "ict_num_levels",
    "Couplings", "load_couplings",
    "make_couplings", "average_velocity_and_derivative", "meanflow_loss", "meanflow_times",
    "pair_distillation_loss", "reflow_loss", "save_couplings", "straightness",
    "available_pretrained", "load_pretrained", "pretrained_card", "save_pretrained", "shortcut_loss",
    "shortcut_times", "configure_xla_cpu", "LatentSpace", "autoencoder_loss", "decode_latents",
    "encode_dataset",
    "load_latent_space",
]  # fmt: skip
