"""A network that carries its own learned noise schedule (VDM, Kingma et al. 2021).

`WithSchedule` bundles a network with the parameters of a `diffjax.LearnedSchedule` (a monotone
γ(t) = −λ(t) with endpoints of its own): the schedule trains, is averaged (EMA), checkpointed and
exported with the network, and `process` is the schedule of the current parameters — the process
its samplers, likelihoods and losses must use (`process_of`).

The network is fed the schedule's normalised γ instead of t,

    ε̂(x_t, t) = network(x_t, τ(t)),    τ(t) = (γ(t) − γ_min)/(γ_max − γ_min) ∈ [0, 1],

so that with fixed endpoints it sees x_t through the SNR alone. That makes the expected
continuous-time loss independent of the schedule's shape (VDM eq. 13), and descending the shape's
variance gradient (`diffjax.processes.learned.mean_with_variance_gradient`) changes only how noisy the
loss's estimate is, not what it estimates.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from diffjax.processes.base import GaussianProcess
from diffjax.processes.learned import LearnedSchedule

ARRAY_FIELDS = tuple(f.name for f in dataclasses.fields(LearnedSchedule) if f.name != "learn_endpoints")


class ScheduleParameters(nnx.Module):
    """The arrays of a `LearnedSchedule`, one `nnx.Param` per field (same names)."""

    def __init__(self, schedule: LearnedSchedule):
        for name in ARRAY_FIELDS:
            setattr(self, name, nnx.Param(getattr(schedule, name)))


class WithSchedule(nnx.Module):
    """`network` (time input τ(t) of the module docstring) plus a learned schedule; called as the
    network is called by samplers and losses, with the process's time t."""

    def __init__(self, network: nnx.Module, *, gamma_min: float = -13.3, gamma_max: float = 5.0,
                 hidden: int = 16, learn_endpoints: bool = True, rngs: nnx.Rngs):  # fmt: skip
        schedule = LearnedSchedule.create(gamma_min, gamma_max, hidden, key=rngs.params(),
                                          learn_endpoints=learn_endpoints)  # fmt: skip
        self.network = network
        self.schedule = ScheduleParameters(schedule)
        self.learn_endpoints = bool(learn_endpoints)
        self.prediction = getattr(network, "prediction", None)

    @property
    def process(self) -> LearnedSchedule:
        """The learned schedule of the current parameters (a `GaussianProcess`)."""
        arrays = {name: getattr(self.schedule, name)[...] for name in ARRAY_FIELDS}
        return LearnedSchedule(**arrays, learn_endpoints=self.learn_endpoints)

    def __call__(self, x, t, *args, **kwargs):
        return self.network(x, self.process.unit_gamma(t), *args, **kwargs)


def process_of(network, process: GaussianProcess) -> GaussianProcess:
    """The process `network` carries (a `WithSchedule`'s learned schedule), else `process`."""
    return network.process if isinstance(network, WithSchedule) else process


def is_schedule_shape(path: tuple) -> bool:
    """Whether the key path of a leaf of a `WithSchedule`'s `nnx.State` is one of its schedule's shape
    parameters (`LearnedSchedule.SHAPE_FIELDS`): the leaves that descend the loss's variance."""
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path[:2]]
    return len(names) == 2 and names[0] == "schedule" and names[1] in LearnedSchedule.SHAPE_FIELDS


__all__ = ["ScheduleParameters", "WithSchedule", "is_schedule_shape", "process_of"]
