"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", §3 and App. C): choose the EMA length after training.

A power-function EMA with exponent γ averages the parameter trajectory θ(τ) up to step t with the
profile p_{t,γ}(τ) = (γ + 1) τ^γ / t^{γ+1} on [0, t]; its relative width (standard deviation over t)
is σ_rel = ((γ + 1) / ((γ + 2)² (γ + 3)))^{1/2}, independent of t. In discrete steps it is the EMA
with decay β_t = (1 − 1/t)^{γ+1} at update t = 1, 2, … (β_1 = 0: the first update copies θ).

Training tracks two such EMAs (two σ_rel, e.g. 0.05 and 0.10) and saves snapshots of both every few
thousand steps. Any other profile p_{T,γ*} is then approximated by a linear combination of the
snapshot profiles, the coefficients solving the least-squares problem in L²[0, ∞):

    min_x ‖Σ_i x_i p_i − p*‖²   ⇔   A x = b,  A_ij = ⟨p_i, p_j⟩,  b_i = ⟨p_i, p*⟩,
    ⟨p_{a,γa}, p_{b,γb}⟩ = (γa + 1)(γb + 1) min(a, b)^{γa+γb+1} / ((γa + γb + 1) a^{γa+1} b^{γb+1}),

and the same combination of the snapshot parameters is the reconstructed EMA. When p* is one of the
snapshot profiles the solution is that snapshot exactly; otherwise `posthoc_weights` reports the
relative residual ‖Σ x_i p_i − p*‖/‖p*‖, which bounds the error for any trajectory by Cauchy–Schwarz:
|θ̂ − θ*| ≤ ‖Σ x_i p_i − p*‖·‖θ‖ (norms over [0, T]).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = object


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ of the power-function EMA of relative width σ_rel (the largest real root of
    σ_rel²(γ + 2)²(γ + 3) − (γ + 1) = 0; σ_rel must lie in (0, 12^{-1/2}), the width of γ = 0)."""
    if not 0.0 < sigma_rel < 12**-0.5:
        raise ValueError(f"sigma_rel must lie in (0, {12**-0.5:.4f}) (γ > 0), got {sigma_rel}.")
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def power_ema_decay(step: jax.Array, gamma: float) -> jax.Array:
    """β_t = (1 − 1/t)^{γ+1} for the update t = step + 1 (`step` updates applied before)."""
    t = jnp.asarray(step, jnp.float32) + 1.0
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def update_power_emas(emas: tuple, params: PyTree, step: jax.Array, gammas: Sequence[float]) -> tuple:
    """Each EMA of `emas` moved towards `params` with its decay β_t(γ) (jit-able)."""
    out = []
    for ema, gamma in zip(emas, gammas, strict=True):
        beta = power_ema_decay(step, gamma)
        out.append(jax.tree.map(lambda e, p, b=beta: (b * e + (1.0 - b) * p).astype(e.dtype), ema, params))
    return tuple(out)


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """⟨p_{t_a,γa}, p_{t_b,γb}⟩ in L²[0, ∞) (module docstring), broadcasting."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    g = gamma_a + gamma_b + 1.0
    lo = np.minimum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) * lo**g / (g * t_a ** (gamma_a + 1) * t_b ** (gamma_b + 1))


def posthoc_weights(
    steps: Sequence[float], gammas: Sequence[float], target_step: float, target_gamma: float
) -> tuple[np.ndarray, float]:
    """(x, relative residual): the least-squares coefficients of the snapshot profiles (steps[i],
    gammas[i]) for the target profile (target_step, target_gamma) (module docstring)."""
    steps, gammas = np.asarray(steps, np.float64), np.asarray(gammas, np.float64)
    if steps.shape != gammas.shape or steps.ndim != 1 or steps.size == 0 or np.any(steps <= 0):
        raise ValueError("posthoc_weights: need matching 1-D steps (> 0) and gammas of the snapshots.")
    a = profile_inner(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_inner(steps, gammas, target_step, target_gamma)
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    target_norm2 = float(profile_inner(target_step, target_gamma, target_step, target_gamma))
    residual2 = max(target_norm2 - 2 * float(x @ b) + float(x @ a @ x), 0.0)
    return x, float(np.sqrt(residual2 / target_norm2))


def combine(snapshots: Sequence[PyTree], weights: Sequence[float]) -> PyTree:
    """Σ_i w_i θ_i over pytrees of arrays of equal structure (accumulated in float32 or wider)."""
    def total(*leaves):
        xp = np if isinstance(leaves[0], np.ndarray) else jnp  # numpy trees stay numpy (float64)
        acc = sum(float(w) * xp.asarray(leaf, xp.promote_types(leaf.dtype, np.float32))
                  for w, leaf in zip(weights, leaves, strict=True))  # fmt: skip
        return acc.astype(leaves[0].dtype)

    return jax.tree.map(total, *snapshots)


# -- snapshots on disk ------------------------------------------------------------------------
class SnapshotStore:
    """Snapshots of the tracked EMAs, `<directory>/<step>/` as Orbax checkpoints (all kept: the
    reconstruction needs the whole series). `save(step, emas)`, `steps()`, `load(step, like)`."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp

        self.directory = os.path.abspath(directory)
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
        )

    def save(self, step: int, emas: tuple) -> None:
        if step in self._manager.all_steps():
            return  # a resumed run recomputes the same snapshot bit-identically
        self._manager.save(int(step), args=self._ocp.args.StandardSave(list(emas)))
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def load(self, step: int, like: tuple) -> tuple:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), list(like))
        return tuple(self._manager.restore(int(step), args=self._ocp.args.StandardRestore(abstract)))

    def close(self) -> None:
        self._manager.close()


def reconstruct_from_store(
    store: SnapshotStore, like: tuple, sigma_rels: Sequence[float], target_sigma_rel: float,
    target_step: int | None = None,
) -> tuple[PyTree, float, int]:  # fmt: skip
    """(parameters, relative residual, number of snapshots) of the post-hoc EMA of width
    target_sigma_rel at target_step (default: the last snapshot), from every snapshot up to it."""
    steps = [s for s in store.steps() if target_step is None or s <= target_step]
    if not steps:
        raise FileNotFoundError(f"no EMA snapshots in {store.directory}; train with train.posthoc_ema set.")
    target_step = steps[-1] if target_step is None else target_step
    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    snap_steps = [s for s in steps for _ in gammas]
    snap_gammas = [g for _ in steps for g in gammas]
    target_gamma = sigma_rel_to_gamma(target_sigma_rel)
    weights, residual = posthoc_weights(snap_steps, snap_gammas, target_step, target_gamma)
    snapshots = [ema for s in steps for ema in store.load(s, like)]
    return combine(snapshots, weights), residual, len(steps)


__all__ = [
    "SnapshotStore", "combine", "gamma_to_sigma_rel", "posthoc_weights", "power_ema_decay", "profile_inner",
    "reconstruct_from_store", "sigma_rel_to_gamma", "update_power_emas",
]  # fmt: skip
