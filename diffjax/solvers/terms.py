"""Terms that need no model: any ODE dy/dt = f(y, t), any SDE dY = f(Y, t) dt + G(t) dW, and
Langevin dynamics. (A model's probability flow is `diffjax.flow.ProbabilityFlow`.)"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array

from diffjax._pytree import pytree_dataclass


@pytree_dataclass
class ODE:
    """dy/dt = fn(y, t) for a pytree y and a scalar t."""

    fn: Callable

    def velocity(self, y, t):
        return self.fn(y, t)


@pytree_dataclass
class SDE:
    """dX = f(X, t) dt + G(t) dW: drift(x, t) with x (batch, *event) and t (batch,) (the model
    convention), diffusion(t) for a scalar t giving a rate () or (batch,) or a matrix (D, M)."""

    drift: Callable
    diffusion: Callable

    def sde(self, x, t):
        return self.drift(x, jnp.full(x.shape[:1], t)), self.diffusion(t)


@pytree_dataclass
class Langevin:
    """dX = ε ∇log p(X) dτ + √(2ε) dW in τ counted in steps of size ε (stationary law p): Euler–Maruyama
    on the grid τ = 0, 1, 2, … (Δτ = 1 exactly) is the unadjusted Langevin algorithm
    x ← x + ε ∇log p(x) + √(2ε) ξ."""

    score: Callable  # x (batch, *event) -> ∇log p(x)
    step_size: float | Array = 1.0

    def sde(self, x, t):
        eps = jnp.asarray(self.step_size, x.dtype)
        return eps * self.score(x), jnp.sqrt(2.0 * eps)
