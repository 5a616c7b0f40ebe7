"""Noising processes: every diffusion SDE, flow-matching path and the DDPM chain is a
`GaussianProcess` x_t = α(t)·x0 + σ(t)·ε on its own time axis (see `base`).

`build_process({"name": "vp", "beta_max": 20.0})` builds one from a JSON-able spec (configs and the
run record saved with checkpoints).
"""

from __future__ import annotations

from diffjax.processes.base import Coefficients, GaussianProcess, NoisedSample
from diffjax.processes.convention import (
    DiffusionTime,
    FlowTime,
    VPPath,
    flow_path_from_sde,
    sde_from_flow_path,
)
from diffjax.processes.ddpm import DDPMChain
from diffjax.processes.learned import LearnedSchedule, variance_gradient
from diffjax.processes.linear import LinearSDE
from diffjax.processes.paths import CondOTPath, CosinePath, GaussianPath, PolynomialPath
from diffjax.processes.sde import SDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

# the names configs and checkpoints use
PROCESSES = {
    "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine_vp": CosineVPSDE,
    "condot": CondOTPath, "cosine_path": CosinePath, "polynomial_path": PolynomialPath,
    "vp_path": VPPath, "ddpm": DDPMChain.linear, "ddpm_cosine": DDPMChain.cosine,
    "learned": LearnedSchedule.create,  # VDM: the initial schedule; a trained one lives in the network
}  # fmt: skip


def build_process(spec: dict) -> GaussianProcess:
    """The process named spec['name'] with the other entries as its parameters."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in PROCESSES:
        raise ValueError(f"Unknown process {name!r}; choose one of {tuple(PROCESSES)}.")
    try:
        return PROCESSES[name](**spec)
    except TypeError as err:
        raise ValueError(f"process {name!r}: invalid parameters {spec} ({err}).") from None


__all__ = [
    "PROCESSES", "SDE", "VESDE", "VPSDE", "Coefficients", "CondOTPath", "CosinePath", "CosineVPSDE",
    "DDPMChain", "DiffusionTime", "FlowTime", "GaussianPath", "GaussianProcess", "LearnedSchedule",
    "LinearSDE", "NoisedSample", "PolynomialPath", "SubVPSDE", "VPPath", "build_process",
    "flow_path_from_sde", "sde_from_flow_path", "variance_gradient",
]  # fmt: skip

