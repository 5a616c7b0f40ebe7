"""A model's generative dynamics under a process: the term every sampler integrates.

For a network that predicts `prediction` ('eps', 'x0', 'score', 'v' or 'velocity') under a process
with marginals x_t = α x0 + σ ε, the denoiser (x̂0, ε̂) follows exactly (`diffjax.parameterization`)
and from it

    probability-flow ODE   dx/dt = α̇ x̂0 + σ̇ ε̂                      (`velocity`)
                           = (σ̇/σ) x + α·(dl/dt)·x̂0,  l = ½λ           (`scales`, `data_prediction`:
                                                                         the semi-linear form of
                                                                         exponential integrators)
    reverse-time SDE       dx = [v + ½g² ∇log p_t · s] dt + g dW̄      (`sde`; s = ±1 makes the
                                                                         correction point towards the
                                                                         data on either time axis)

with ∇log p_t = −ε̂/σ (`score`), all on the process's own time axis. `ProbabilityFlow` is a pytree:
new parameters, labels or guidance scales inside the model reuse compiled samplers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass, static_field
from diffjax.parameterization import PREDICTIONS, from_x0_eps, to_x0_eps
from diffjax.processes.base import Coefficients, GaussianProcess
from diffjax.solvers.base import Solver


def check_model_output(out: Array, x: Array, owner: str) -> None:
    """A model's prediction must have x's shape and a floating dtype (checked at trace time)."""
    if out.shape != x.shape:
        raise ValueError(
            f"{owner}: the model returned shape {out.shape} for x of shape {x.shape}; a prediction "
            "('eps', 'x0', 'score', 'v' or 'velocity') must have the shape of its input x."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{owner}: the model returned dtype {out.dtype}; predictions must be floats.")


def model_prediction(model) -> str:
    """The prediction type a model declares (its `prediction` attribute), for calls that omit it."""
    prediction = getattr(model, "prediction", None)
    if prediction is None:
        raise ValueError(
            "The model does not declare what it predicts: pass prediction='eps' | 'x0' | 'score' | "
            "'v' | 'velocity' (diffjax's networks declare it as model.prediction)."
        )
    return prediction


def finite_at_data(process: GaussianProcess, prediction: str | None) -> bool:
    """Whether a model's probability-flow velocity may be evaluated at t_data: σ(t_data) > 0 (the cosine
    VP SDE, σ(0) = 5.5e-4), or the model predicts the velocity itself on a process with finite rates
    there (`default_t_eps` = 0: flow paths, where a flow-matching network is trained on the closed
    interval). An ε-, x0-, score- or v-model reaches the velocity through ε̂ = (x − αx̂0)/σ or an
    ill-posed ε̂ at σ = 0, so Runge–Kutta steps take no stage at t_data there
    (`ProbabilityFlow.no_evaluation_at`). (EDM's Heun always takes an Euler step to σ = 0, as Karras et
    al.'s Alg. 1 does.)"""
    if not process.sigma_is_zero_at_data():
        return True
    return prediction == "velocity" and process.default_t_eps == 0.0


@pytree_dataclass
class ProbabilityFlow:
    """The term of `model(x, t) -> prediction` under `process` (see the module docstring)."""

    model: Callable
    process: GaussianProcess
    prediction: str = static_field(default="eps")
    # `finite_at_data`, decided where the flow is built (`as_flow`: the process is concrete there) and
    # kept static, so a compiled sampler whose process is traced decides as the NFE count did
    evaluable_at_data: bool | None = static_field(default=None)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"Unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}.")

    @property
    def no_evaluation_at(self) -> float | None:
        """t_data where the model must not be evaluated (`finite_at_data` is False), else None: a
        Runge–Kutta step that ends there uses only its earlier stages."""
        finite = self.evaluable_at_data
        if finite is None:
            finite = finite_at_data(self.process, self.prediction)
        return None if finite else self.process.t_data

    def _predict(self, x: Array, t) -> tuple[Array, Coefficients]:
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        out = self.model(x, t)
        check_model_output(out, x, "sampling")
        return out, self.process.coefficients(t)

    def _denoise(self, x: Array, t) -> tuple[Array, Array, Coefficients]:
        out, c = self._predict(x, t)
        return *to_x0_eps(out, self.prediction, x, c), c

    def denoise(self, x: Array, t) -> tuple[Array, Array]:
        """(x̂0, ε̂) = (E[x0 | x_t = x], E[ε | x_t = x]) as the model estimates them; t scalar or (batch,)."""
        return self._denoise(x, t)[:2]

    def velocity(self, x: Array, t) -> Array:
        """dx/dt = α̇ x̂0 + σ̇ ε̂ of the probability-flow ODE, on the process's time axis (a velocity
        model's output as it is)."""
        out, c = self._predict(x, t)
        if self.prediction == "velocity":
            return out
        return from_x0_eps(*to_x0_eps(out, self.prediction, x, c), "velocity", x, c)

    def score(self, x: Array, t) -> Array:
        """∇log p_t(x) = −ε̂/σ(t)."""
        return -self.denoise(x, t)[1] / expand(self.process.sigma(t), x)

    def data_prediction(self, x: Array, t) -> Array:
        """x̂0: the prediction P of the semi-linear form (DPM-Solver++)."""
        return self.denoise(x, t)[0]

    def scales(self, t) -> tuple[Array, Array]:
        """(s, s·e^l) = (σ(t), α(t)): the linear scale of x and its signal weight."""
        return self.process.sigma(t), self.process.alpha(t)

    def sde(self, x: Array, t) -> tuple[Array, Array]:
        """(drift, g) of the reverse-time SDE with the marginals of the process; where g² is infinite
        (α = 0 at a flow's noise end) the step is the ODE step."""
        x0, eps, c = self._denoise(x, t)
        p = self.process
        g2 = p.diffusion_squared(t)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0.0)
        towards_data = jnp.sign(p.t_data - p.t_noise)
        score = -eps / expand(c.sigma, x)
        drift = from_x0_eps(x0, eps, "velocity", x, c) + 0.5 * towards_data * g2 * score
        return drift, jnp.sqrt(g2)


@pytree_dataclass
class Evaluated:
    """A model whose output at the point where it is called was computed beforehand (`out`)."""

    out: Array

    def __call__(self, x, t):
        return self.out


def evaluate_with_state(flow: ProbabilityFlow, x: Array, t, state) -> tuple[ProbabilityFlow, Any]:
    """Evaluate a stateful model (`model.call_with_state(x, t, state) -> (prediction, state)`) at
    (x, t): the flow with that prediction fixed (valid at (x, t) only) and the new state."""
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    out, state = flow.model.call_with_state(x, t, state)
    check_model_output(out, x, "sampling")
    return dataclasses.replace(flow, model=Evaluated(out)), state


@pytree_dataclass
class ThreadModelState(Solver):
    """`solver` on the flow of a model with state across steps (APG's momentum): each step evaluates
    the model once at (y, t) with the carried state, then takes the inner step with that prediction.
    Only solvers of one evaluation per step, all at (y, t), qualify (`diffjax.sample` checks);
    the model's state rides in the carry, so the whole sampler stays one `lax.scan`."""

    solver: Solver

    @property
    def order(self) -> int:
        return self.solver.order

    @property
    def needs_rates(self) -> bool:
        return self.solver.needs_rates

    def num_evaluations(self, num_steps, *, ends_at_data=False, starts_at_zero_alpha=False,
                        finite_at_data=False):  # fmt: skip
        return self.solver.num_evaluations(num_steps, ends_at_data=ends_at_data,
                                           starts_at_zero_alpha=starts_at_zero_alpha,
                                           finite_at_data=finite_at_data)  # fmt: skip

    def init(self, term, y0, ts):
        return self.solver.init(term, y0, ts), term.model.init_state(y0)

    def step(self, term, y, carry, t, t_next, key):
        inner, state = carry
        fixed, state = evaluate_with_state(term, y, t, state)
        y, inner = self.solver.step(fixed, y, inner, t, t_next, key)
        return y, (inner, state)


def as_flow(model, process: GaussianProcess, prediction: str | None = None) -> ProbabilityFlow:
    """The `ProbabilityFlow` of a model (any callable (x, t) -> prediction: an NNX module, a pytree
    such as `jax.tree_util.Partial`, or a plain function); prediction defaults to the model's own."""
    prediction = prediction or model_prediction(model)
    return ProbabilityFlow(model, process, prediction, finite_at_data(process, prediction))


__all__ = [
    "Evaluated", "ProbabilityFlow", "ThreadModelState", "as_flow", "check_model_output",
    "evaluate_with_state", "finite_at_data", "model_prediction",
]

