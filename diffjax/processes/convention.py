"""The bridge between the diffusion and the flow-matching time conventions.

Diffusion: data at t = 0, noise at t = T, x_t = α(t) x_0 + σ(t) ε.
Flow matching: noise at τ = 0, data at τ = 1, x_τ = α_τ x_1 + σ_τ x_0.
(The translation table at the end of `shared/seeds/003`.)

Every algorithm of diffjax works on a process's own time axis (`diffjax.processes.base`), so neither
convention is privileged; this module re-reads any process in the other one. Under the time change
τ = 1 − t/T (dt/dτ = −T) a diffusion SDE *is* a Gaussian path (`flow_path_from_sde`) and any path is a
diffusion SDE (`sde_from_flow_path`, with the drift f = d log α/dt and g² = dσ²/dt − 2fσ² of
`GaussianProcess`). The probability-flow ODE of the SDE and the flow-matching ODE of its path are the
same ODE: u_τ(x) = −T · v_pf(x, t(τ)).
"""

from __future__ import annotations

from diffjax._pytree import pytree_dataclass
from diffjax.processes.base import GaussianProcess
from diffjax.processes.paths import GaussianPath
from diffjax.processes.sde import SDE, VPSDE


class _TimeChanged:
    """`process` on another time axis u, through the affine map `_base_time(u)` to its own."""

    process: GaussianProcess

    @property
    def default_t_eps(self) -> float:
        """The base process's data-end offset, in the units of u (both axes span [0, 1] here)."""
        return self.process.default_t_eps / abs(self.process.t_noise - self.process.t_data)

    def alpha(self, u):
        return self.process.alpha(self._base_time(u))

    def sigma(self, u):
        return self.process.sigma(self._base_time(u))


@pytree_dataclass
class FlowTime(_TimeChanged, GaussianPath):
    """`process` read in flow-matching time: noise at τ = 0, data at τ = 1, with the base time
    t(τ) = t_noise + (t_data − t_noise)·τ (for a diffusion SDE, t = T(1 − τ))."""

    process: GaussianProcess

    def _base_time(self, tau):
        return self.process.t_noise + (self.process.t_data - self.process.t_noise) * tau


@pytree_dataclass
class DiffusionTime(_TimeChanged, SDE):
    """`process` read as a diffusion SDE on t ∈ [0, 1]: data at 0, noise at 1, base time
    t_data + (t_noise − t_data)·t (for a flow path, 1 − t). Its drift and diffusion are the generic
    f = d log α/dt, g² = dσ²/dt − 2fσ², which lets SDE samplers run on flow-matching models."""

    process: GaussianProcess

    @property
    def T(self) -> float:
        return 1.0

    def _base_time(self, t):
        return self.process.t_data + (self.process.t_noise - self.process.t_data) * t


def flow_path_from_sde(sde: GaussianProcess) -> GaussianPath:
    """The Gaussian path (flow-matching convention) with the marginals of `sde`."""
    return FlowTime(sde)


def sde_from_flow_path(path: GaussianProcess) -> SDE:
    """The diffusion-convention SDE (T = 1) with the marginals of `path`."""
    return DiffusionTime(path)


def VPPath(beta_min: float = 0.1, beta_max: float = 20.0) -> GaussianPath:  # noqa: N802 (a path)
    """The VP path of Lipman et al. (2023): α_τ = e^{−B(1−τ)/2}, σ_τ = √(1 − α_τ²), the linear-β VP
    SDE of `VPSDE(beta_min, beta_max)` read in flow-matching time."""
    return FlowTime(VPSDE(beta_min=beta_min, beta_max=beta_max))
