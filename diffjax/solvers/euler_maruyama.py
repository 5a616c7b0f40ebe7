"""Euler–Maruyama for any SDE term dY = f(Y, t) dt + G(t) dW (Kloeden & Platen 1992, §9.1):

    y_next = y + f(y, t)·Δt + G(t)·√|Δt|·z,    z ~ N(0, I),  Δt = t_next − t

(strong order ½, weak order 1), in either time direction. `term.sde(y, t)` returns (f, G) with G a
rate of shape () or (batch,) (isotropic noise) or a (D, M) matrix (noise G·dW, dW ∈ R^M, for a state
of shape (batch, D)). For a model's probability flow the term's SDE is the reverse-time SDE with the
same marginals (Song et al. 2021, eq. 6), so one solver simulates forward SDEs
(`diffjax.solvers.SDE`), samples, and runs Langevin dynamics (`diffjax.solvers.Langevin`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax._array import expand
from diffjax._pytree import pytree_dataclass
from diffjax.solvers.base import Solver


def _noise(key, y, g):
    """G(t)·z with the noise shape G asks for; shapes are checked at trace time."""
    batch = y.shape[0]
    if g.ndim == 2:
        if y.ndim != 2 or g.shape[0] != y.shape[1]:
            raise ValueError(
                f"euler_maruyama: a diffusion matrix G(t) of shape {g.shape} needs a state of shape "
                f"(batch, {g.shape[0]}), got {y.shape}."
            )
        return jax.random.normal(key, (batch, g.shape[1]), y.dtype) @ g.T
    if g.shape not in ((), (batch,)):
        raise ValueError(
            f"euler_maruyama: the diffusion must be a scalar, a (batch,) = ({batch},) rate or a (D, M) "
            f"matrix; got shape {g.shape}."
        )
    return expand(g, y) * jax.random.normal(key, y.shape, y.dtype)


@pytree_dataclass
class EulerMaruyama(Solver):
    def step(self, term, y, carry, t, t_next, key):
        drift, g = term.sde(y, t)
        if drift.shape != y.shape:
            raise ValueError(f"euler_maruyama: the drift must have the state's shape {y.shape}, "
                             f"got {drift.shape}.")  # fmt: skip
        dt = t_next - t
        return y + drift * dt + jnp.sqrt(jnp.abs(dt)) * _noise(key, y, jnp.asarray(g)), carry
