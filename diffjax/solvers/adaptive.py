"""Adaptive-step integration with diffrax: an embedded Runge–Kutta pair (Tsit5, Dopri5, Dopri8) and a
PID step-size controller on dy/dt = term.velocity(y, t), behind the same `integrate` entry point.

The error norm is the RMS over all entries (`norm='rms'`, diffrax's default) or the worst example's
RMS over every leaf (`norm='per_example'`: each example of a batch meets rtol/atol, as likelihoods
need). The number of model evaluations is read from the solver's step counts: 6 new stages per
attempted step for the 7-stage first-same-as-last pairs (13 for Dopri8), plus the first stage.

Reverse-mode gradients (`jax.grad` with respect to y0 or the arrays inside the term, e.g. a model's
parameters) use diffrax's adjoint, chosen by `adjoint`:

  'recursive_checkpoint' (default; `diffrax.RecursiveCheckpointAdjoint`, "discretise then
      optimise"): the exact derivative of the computed solution along the accepted steps (the
      controller's step sizes are not differentiated), so it agrees with finite differences of
      the solve to rounding whenever the step sequence does not change. Memory: O(√(2·max_steps))
      checkpoints of the solver state (≈ 90 for max_steps = 4096), with recomputation.
  'backsolve' (`diffrax.BacksolveAdjoint`, "optimise then discretise", Chen et al. 2018): solves
      the continuous adjoint ODE backwards from t1 with the same method and tolerances (RMS norm:
      the adjoint state has parameter leaves without a batch axis). Memory independent of the
      number of steps, but the gradient is only as accurate as that backward solve (an error of the
      order of the tolerances, which is not the derivative of the forward solution), and it costs
      a second adaptive solve re-integrating x backwards.

The term travels as diffrax's `args`, so the adjoints see every array in it (a model's parameters
included); nothing is closed over.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp

from diffjax._pytree import pytree_dataclass, static_field
from diffjax.solvers.base import Solution, Solver

# name → (diffrax solver, order, new stages per step)
METHODS = {"tsit5": (diffrax.Tsit5, 5, 6), "dopri5": (diffrax.Dopri5, 5, 6),
           "dopri8": (diffrax.Dopri8, 8, 13)}  # fmt: skip
NORMS = ("rms", "per_example")
ADJOINTS = ("recursive_checkpoint", "backsolve")


def _per_example_rms(err) -> jax.Array:
    """Worst example's RMS over all leaves (each leaf has a leading batch axis)."""
    leaves = jax.tree.leaves(err)
    b = leaves[0].shape[0]
    sq = sum(jnp.sum(leaf.reshape(b, -1) ** 2, axis=-1) for leaf in leaves)
    return jnp.sqrt(jnp.max(sq) / sum(leaf[0].size for leaf in leaves))


@pytree_dataclass
class Adaptive(Solver):
    method: str = static_field(default="tsit5")
    rtol: float = static_field(default=1e-3)
    atol: float = static_field(default=1e-3)
    max_steps: int = static_field(default=4096)
    initial_steps: int | None = static_field(default=16)  # first step (t1 − t0)/initial_steps; None: guessed
    norm: str = static_field(default="rms")
    throw: bool = static_field(default=True)  # raise on failure; else report it in Solution.success
    adjoint: str = static_field(default="recursive_checkpoint")  # reverse mode: see the module docstring
    needs_rates: ClassVar[bool] = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown adaptive method {self.method!r}; choose one of {tuple(METHODS)}.")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"adaptive: need rtol > 0 and atol > 0, got {self.rtol}, {self.atol}.")
        if self.norm not in NORMS:
            raise ValueError(f"adaptive: norm must be one of {NORMS}, got {self.norm!r}.")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"adaptive: adjoint must be one of {ADJOINTS}, got {self.adjoint!r}.")

    @property
    def order(self) -> int:
        return METHODS[self.method][1]

    def num_evaluations(self, num_steps, *, ends_at_data=False, starts_at_zero_alpha=False,
                        finite_at_data=False):  # fmt: skip
        raise NotImplementedError("an adaptive solver chooses its steps at run time: its count is "
                                  "Solution.nfe (SampleResult.nfe).")  # fmt: skip

    def solve(self, term, y0, ts, key, save_every):
        if save_every:
            raise ValueError("adaptive solvers do not save a trajectory on a grid (save_every = 0).")
        cls, _, new_stages = METHODS[self.method]
        t0, t1 = ts[0], ts[-1]
        dt0 = None if self.initial_steps is None else (t1 - t0) / self.initial_steps
        norm = {"norm": _per_example_rms} if self.norm == "per_example" else {}
        controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol, **norm)
        dtypes = jax.tree.map(lambda leaf: leaf.dtype, y0)

        def field(t, y, term):
            return jax.tree.map(lambda v, d: v.astype(d), term.velocity(y, t), dtypes)

        if self.adjoint == "backsolve":
            adjoint = diffrax.BacksolveAdjoint(
                solver=cls(), stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
                max_steps=self.max_steps)  # fmt: skip
        else:
            adjoint = diffrax.RecursiveCheckpointAdjoint()
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            cls(), t0, t1, dt0, y0, args=term, stepsize_controller=controller, max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True), throw=self.throw, adjoint=adjoint,
        )  # fmt: skip
        y = jax.tree.map(lambda leaf, d: leaf[-1].astype(d), sol.ys, dtypes)
        nfe = 1 + new_stages * sol.stats["num_steps"]
        return Solution(y, None, nfe, sol.result == diffrax.RESULTS.successful)
