"""Explicit Runge–Kutta methods on dy/dt = term.velocity(y, t), each given by its Butcher tableau.

    k_i = v(t + c_i h, y + h Σ_{j<i} a_ij k_j),   y_next = y + h Σ_i b_i k_i,   h = t_next − t

A stage at the very end of a step (c_i = 1) would evaluate the model exactly at t_data on a last step
that reaches the data, where σ = 0 and an ε- or x0-prediction is singular; where the term says so
(`term.no_evaluation_at`, `diffjax.flow.finite_at_data`) the method uses only the stages before it
with the weights `b_data_end` (Heun falls back to Euler, RK4 to its midpoint stage), so such a step
costs fewer evaluations — `num_evaluations` counts them from the tableau. A velocity model on a flow
path is finite at the data end and gets the full method (RK4 stays fourth order to t_data).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax

from diffjax._pytree import pytree_dataclass
from diffjax.solvers.base import Solver, tree_axpy


class Tableau(NamedTuple):
    """Butcher tableau: a (rows of the strictly lower triangle), b (weights), c (nodes), the method's
    order, and the weights b_data_end of the stages before the first c = 1 stage (None: no c = 1)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_data_end: tuple[float, ...] | None = None


EULER = Tableau((), (1.0,), (0.0,), 1)
HEUN = Tableau(((1.0,),), (0.5, 0.5), (0.0, 1.0), 2, b_data_end=(1.0,))
MIDPOINT = Tableau(((0.5,),), (0.0, 1.0), (0.0, 0.5), 2)
RK4_TABLEAU = Tableau(
    ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0), 4,
    b_data_end=(0.0, 0.0, 1.0),  # y + h·k3: second order (k3 is a midpoint slope)
)  # fmt: skip


class RungeKutta(Solver):
    """An explicit Runge–Kutta method; subclasses set the class attribute `tableau`."""

    tableau: ClassVar[Tableau]
    needs_rates: ClassVar[bool] = True

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def evals_per_step(self) -> int:
        return len(self.tableau.b)

    def _safe_stages(self) -> int:
        """Number of stages before the first one at c = 1 (all of them without a fallback)."""
        tab = self.tableau
        return len(tab.b_data_end) if tab.b_data_end is not None else len(tab.b)

    def num_evaluations(self, num_steps, *, ends_at_data=False, starts_at_zero_alpha=False,
                        finite_at_data=False):  # fmt: skip
        saved = self.evals_per_step - self._safe_stages() if ends_at_data and not finite_at_data else 0
        return self.evals_per_step * num_steps - saved

    def step(self, term, y, carry, t, t_next, key):
        a, b, c, _, b_end = self.tableau
        h = t_next - t

        def stages(ks, upto):
            for i in range(len(ks), upto):
                y_i = tree_axpy(y, h, ks, a[i - 1]) if i else y
                ks = ks + [term.velocity(y_i, t + c[i] * h)]
            return ks

        ks = stages([], self._safe_stages())
        if b_end is None:
            return tree_axpy(y, h, stages(ks, len(b)), b), carry
        end = getattr(term, "no_evaluation_at", None)
        full = lambda: tree_axpy(y, h, stages(ks, len(b)), b)  # noqa: E731
        if end is None:
            return full(), carry
        at_data = lambda: tree_axpy(y, h, ks, b_end)  # noqa: E731
        return jax.lax.cond(t_next == end, at_data, full), carry


@pytree_dataclass
class Euler(RungeKutta):
    """The explicit Euler step y ← y + h·v(y, t) (order 1; 1 evaluation per step)."""

    tableau: ClassVar[Tableau] = EULER


@pytree_dataclass
class Heun(RungeKutta):
    """Heun's method (explicit trapezoid, order 2; Karras et al. 2022, Alg. 1 in t): 2 evaluations per
    step, Euler on a last step that reaches a t_data where the model is not evaluated."""

    tableau: ClassVar[Tableau] = HEUN


@pytree_dataclass
class Midpoint(RungeKutta):
    """Explicit midpoint rule (RK2, order 2): y ← y + h·v(y + ½h·v(y, t), t + ½h). It never evaluates
    the model at a step's end, so it stays second order to t_data: 2 evaluations per step."""

    tableau: ClassVar[Tableau] = MIDPOINT


@pytree_dataclass
class RK4(RungeKutta):
    """The classical fourth-order Runge–Kutta method: 4 evaluations per step (3 on a last step that
    reaches a t_data where the model is not evaluated: it takes its midpoint stage there)."""

    tableau: ClassVar[Tableau] = RK4_TABLEAU
