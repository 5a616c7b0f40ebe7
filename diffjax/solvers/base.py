"""The solver contract and the one integrator that runs every solver.

A solver is a small frozen pytree (its options are static fields) with

    order                 the convergence order it is built for (tests measure it)
    evals_per_step        model evaluations per step; `num_evaluations` counts a whole grid
    needs_rates           whether it uses dα/dt, dσ/dt or g² (a discrete chain has none)
    init(term, y0, ts)    -> carry (what a multistep method remembers; None for one-step methods)
    step(term, y, carry, t, t_next, key) -> (y, carry)   pure: moves the state from t to t_next

and asks the *term* only for what it needs: `velocity(y, t)` (Runge–Kutta, adaptive), the data
prediction and linear scales of a semi-linear ODE (exponential integrators: DDIM, DPM-Solver++),
`denoise(x, t) -> (x̂0, ε̂)` (ancestral, EDM, predictor–corrector) or `sde(y, t) -> (drift,
diffusion)` (Euler–Maruyama). Terms live in `diffjax.flow` (a model's probability flow and reverse
SDE), `diffjax.likelihood` (the flow augmented with its divergence) and here (any ODE or SDE).

`integrate(solver, term, y0, ts, key)` runs the solver over the consecutive times of the grid `ts`
as one `lax.scan` on a pytree state (sampling: the image batch; likelihood: (x, Δ log p); linear
moments: (Φ, m, V)); adaptive solvers (diffrax) override `solve` behind the same entry point.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from diffjax._validate import is_concrete

PyTree = Any


class Solution(NamedTuple):
    """y: the state at ts[-1]; trajectory: the states at ts[::save_every] (leading axis) or None;
    nfe: model evaluations counted at run time (adaptive solvers) or None (fixed grids: see
    `Solver.num_evaluations`); success: False if an adaptive solve failed (e.g. hit max_steps);
    carry: the solver's carry after the last step (fixed grids; e.g. a model's state)."""

    y: PyTree
    trajectory: PyTree | None = None
    nfe: Array | None = None
    success: Array | None = None
    carry: Any = None


class Solver:
    """Base class of the solvers; subclasses are `pytree_dataclass`es (see the module docstring)."""

    order: ClassVar[int] = 1
    evals_per_step: ClassVar[int] = 1
    needs_rates: ClassVar[bool] = True

    def init(self, term, y0: PyTree, ts: Array) -> Any:
        return None

    def step(self, term, y: PyTree, carry: Any, t: Array, t_next: Array, key: Array):
        raise NotImplementedError

    def num_evaluations(
        self, num_steps: int, *, ends_at_data: bool = False, starts_at_zero_alpha: bool = False,
        finite_at_data: bool = False,
    ) -> int:  # fmt: skip
        """Model evaluations of `num_steps` steps (static). ends_at_data: the last step reaches
        t_data exactly; starts_at_zero_alpha: the first step starts where α = 0 (flow paths);
        finite_at_data: the model may be evaluated at t_data (`diffjax.flow.finite_at_data`)."""
        return self.evals_per_step * num_steps

    def solve(self, term, y0: PyTree, ts: Float[Array, " n_plus_1"], key: Array, save_every: int):
        """The fixed-grid driver: one `lax.scan` over (ts[i], ts[i+1]) with a fresh key per step."""
        n = ts.shape[0] - 1
        keys = jax.random.split(key, n)
        carry0 = jax.tree.map(jnp.asarray, self.init(term, y0, ts))
        dtypes = jax.tree.map(lambda leaf: leaf.dtype, (y0, carry0))

        def body(state, inputs):  # the state keeps its dtypes (e.g. float32 x with float64 times)
            y, carry = state
            t, t_next, k = inputs
            state = self.step(term, y, carry, t, t_next, k)
            return jax.tree.map(lambda leaf, d: leaf.astype(d), state, dtypes), None

        xs = (ts[:-1], ts[1:], keys)
        if not save_every:
            (y, carry), _ = jax.lax.scan(body, (y0, carry0), xs)
            return Solution(y, carry=carry)

        def chunk(state, chunk_xs):  # save_every steps, then save the state
            state, _ = jax.lax.scan(body, state, chunk_xs)
            return state, state[0]

        chunks = jax.tree.map(lambda a: a.reshape(n // save_every, save_every, *a.shape[1:]), xs)
        (y, carry), saved = jax.lax.scan(chunk, (y0, carry0), chunks)
        trajectory = jax.tree.map(lambda a, s: jnp.concatenate([a[None], s]), y0, saved)
        return Solution(y, trajectory, carry=carry)


def integrate(
    solver: Solver,
    term,
    y0: PyTree,
    ts: Float[Array, " n_plus_1"],
    key: Array | None = None,
    *,
    save_every: int = 0,
) -> Solution:
    """Integrate `term` from ts[0] to ts[-1] with `solver` on the grid `ts` (an adaptive solver uses
    only the two ends). y0 is any pytree of arrays (leading batch axis where the term needs one);
    key feeds stochastic solvers (one fresh key per step; default a fixed key). With save_every = k
    the trajectory holds the states at ts[0], ts[k], ts[2k], … (n must be a multiple of k).
    Pure and jit-able; wrap it in `jax.jit` (or call it inside a jitted function) to compile."""
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"integrate: ts must be a 1-D grid of >= 2 times, got shape {ts.shape}.")
    n = ts.shape[0] - 1
    if not isinstance(save_every, int) or save_every < 0 or (save_every and n % save_every):
        raise ValueError(
            f"integrate: save_every must be an int >= 0 dividing the {n} steps, got {save_every!r}."
        )
    if is_concrete(ts):
        steps = np.diff(np.asarray(ts))
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError("integrate: ts must be strictly increasing or strictly decreasing.")
    key = jax.random.key(0) if key is None else key
    return solver.solve(term, y0, ts, key, save_every)


def tree_axpy(y: PyTree, h: Array, ks: list[PyTree], weights) -> PyTree:
    """y + h·Σ_j w_j k_j over the leaves of the pytrees y and k_j (zero weights skipped)."""
    pairs = [(w, k) for w, k in zip(weights, ks, strict=False) if w != 0]
    if not pairs:
        return y
    return jax.tree.map(lambda yi, *kj: yi + h * sum(w * k for (w, _), k in zip(pairs, kj, strict=True)),
                        y, *[k for _, k in pairs])  # fmt: skip
