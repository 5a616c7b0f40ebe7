"""The one bridge between the diffusion and the flow-matching conventions.

Diffusion: data at t = 0, noise at t = T, x_t = α(t) x_0 + σ(t) ε.
Flow matching: noise at τ = 0, data at τ = 1, x_τ = α_τ x_1 + σ_τ x_0.
(The translation table at the end of `shared/seeds/003`.)

The time change is τ = 1 − t/T, so dt/dτ = −T. Under it any diffusion SDE *is* a Gaussian path
(`flow_path_from_sde`) and any Gaussian path is a diffusion SDE (`sde_from_flow_path`, with the
drift f = d log α/dt and g² = dσ²/dt − 2fσ² of `GaussianProcess`). The probability-flow ODE of the
SDE and the flow-matching ODE of its path are the same ODE: u_τ(x) = −T · v_pf(x, t(τ)).
"""

from __future__ import annotations

from jaxtyping import Array

from diffjax._pytree import pytree_dataclass
from diffjax.paths.gaussian import GaussianPath
from diffjax.processes.base import GaussianProcess
from diffjax.processes.sde import SDE


def flow_time(t, T: float = 1.0):
    """Diffusion time t ∈ [0, T] → flow-matching time τ = 1 − t/T."""
    return 1.0 - t / T


def diffusion_time(tau, T: float = 1.0):
    """Flow-matching time τ ∈ [0, 1] → diffusion time t = T(1 − τ)."""
    return T * (1.0 - tau)


def velocity_to_flow_time(velocity: Array, T: float = 1.0) -> Array:
    """dx/dτ = (dt/dτ)·dx/dt = −T·dx/dt."""
    return -T * velocity


def velocity_to_diffusion_time(velocity: Array, T: float = 1.0) -> Array:
    """dx/dt = −dx/dτ / T."""
    return -velocity / T


def time_scale(process: GaussianProcess) -> float:
    """|dt_own / dτ|: T for a diffusion SDE, 1 for a flow-matching path."""
    return abs(process.t_noise - process.t_data)


@pytree_dataclass
class FlowPathOfSDE(GaussianPath):
    """A diffusion SDE read in flow-matching time: α_τ = α_sde(T(1 − τ)), σ likewise."""

    sde: SDE

    def _alpha(self, tau):
        return self.sde._alpha(diffusion_time(tau, self.sde.T))

    def _sigma(self, tau):
        return self.sde._sigma(diffusion_time(tau, self.sde.T))


@pytree_dataclass
class SDEOfFlowPath(SDE):
    """A Gaussian path read as a diffusion SDE on t ∈ [0, 1]: α(t) = α_path(1 − t).

    Its drift and diffusion are the generic f = d log α/dt, g² = dσ²/dt − 2fσ², which lets SDE
    samplers (Euler–Maruyama, predictor–corrector) run on flow-matching models.
    """

    path: GaussianPath

    @property
    def T(self) -> float:
        return 1.0

    def _alpha(self, t):
        return self.path._alpha(flow_time(t))

    def _sigma(self, t):
        return self.path._sigma(flow_time(t))


def flow_path_from_sde(sde: SDE) -> GaussianPath:
    """The Gaussian path (flow-matching convention) with the marginals of `sde`."""
    return FlowPathOfSDE(sde)


def sde_from_flow_path(path: GaussianPath) -> SDE:
    """The diffusion-convention SDE (T = 1) with the marginals of `path`."""
    return SDEOfFlowPath(path)
