"""Post-hoc EMA (EDM2 §3): power-function EMAs, their profiles, and the least-squares reconstruction of
an EMA length that was not tracked, checked against the exact power-function average of a synthetic
parameter trajectory; a tracked length is reproduced to float rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.training.posthoc_ema import (
    SnapshotStore,
    combine,
    gamma_to_sigma_rel,
    posthoc_weights,
    reconstruct_from_store,
    sigma_rel_to_gamma,
    update_power_emas,
)


def trajectory(t):
    """θ(t): a drifting, oscillating 3-vector (what an optimiser's iterates look like, smoothly)."""
    t = np.asarray(t, np.float64)[..., None]
    return np.concatenate([np.sin(t / 150.0), np.log1p(t / 300.0), np.cos(t / 37.0) * np.exp(-t / 900.0)], -1)


def run_emas(total, gammas, every):
    """Discrete power EMAs over steps 1..total (float64 numpy: the exact discrete averages), with
    snapshots every `every` steps."""
    emas = [np.zeros(3) for _ in gammas]
    snapshots = {}
    for t in range(1, total + 1):
        theta = trajectory(t)
        for i, g in enumerate(gammas):
            beta = (1.0 - 1.0 / t) ** (g + 1.0)
            emas[i] = beta * emas[i] + (1.0 - beta) * theta
        if t % every == 0:
            snapshots[t] = [e.copy() for e in emas]
    return snapshots


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert abs(gamma_to_sigma_rel(sigma_rel_to_gamma(s)) - s) < 1e-12
    assert abs(sigma_rel_to_gamma(0.05) - 16.97) < 0.01  # EDM2: σ_rel 0.05 ↔ γ ≈ 16.97; 0.10 ↔ 6.94
    assert abs(sigma_rel_to_gamma(0.10) - 6.94) < 0.01
    with pytest.raises(ValueError, match="sigma_rel must lie in"):
        sigma_rel_to_gamma(0.5)


def test_power_ema_is_the_power_function_average():
    """The discrete EMA with β_t = (1 − 1/t)^{γ+1} weights θ_τ ∝ τ^γ (to O(1/t)): compare with
    Σ τ^γ θ_τ / Σ τ^γ."""
    gamma, total = sigma_rel_to_gamma(0.1), 3000
    ema = run_emas(total, [gamma], total)[total][0]
    tau = np.arange(1, total + 1)
    exact = (tau[:, None] ** gamma * trajectory(tau)).sum(0) / (tau**gamma).sum()
    np.testing.assert_allclose(ema, exact, atol=5.0 / total)


def test_reconstruction_reproduces_a_tracked_length_and_bounds_an_untracked_one():
    sigma_rels, total, every = (0.05, 0.10), 4000, 250
    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    snaps = run_emas(total, gammas, every)
    steps = sorted(snaps)
    snap_steps = [s for s in steps for _ in gammas]
    snap_gammas = [g for _ in steps for g in gammas]
    values = [v for s in steps for v in snaps[s]]
    # a tracked length at the last snapshot: exactly that snapshot
    x, residual = posthoc_weights(snap_steps, snap_gammas, total, gammas[1])
    assert residual < 1e-6
    np.testing.assert_allclose(combine(values, x), snaps[total][1], rtol=1e-9, atol=1e-12)
    # untracked lengths: the error against the exact discrete EMA of that length stays within the
    # Cauchy–Schwarz bound residual·‖p*‖·‖θ‖ (norms on [0, T]) plus the O(1/T) discretisation
    tau = np.arange(1, total + 1)
    theta_norm = np.sqrt((trajectory(tau) ** 2).sum(0))  # per coordinate, ‖θ‖ with dτ = 1
    for target in (0.03, 0.07, 0.15, 0.2):
        g = sigma_rel_to_gamma(target)
        x, residual = posthoc_weights(snap_steps, snap_gammas, total, g)
        exact = run_emas(total, [g], total)[total][0]
        p_norm = np.sqrt((g + 1) ** 2 / ((2 * g + 1) * total))
        bound = residual * p_norm * theta_norm + 5.0 / total
        error = np.abs(combine(values, x) - exact)
        assert np.all(error <= bound), (target, error, bound, residual)
        assert residual < 0.05, (target, residual)  # the series of 16 snapshots covers these widths


def test_snapshots_round_trip_through_orbax_and_reconstruct(tmp_path):
    gammas = [sigma_rel_to_gamma(s) for s in (0.05, 0.1)]
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    emas = (params, params)
    store = SnapshotStore(str(tmp_path / "snaps"))
    for step in range(300):
        theta = jax.tree.map(lambda p, s=step: p + jnp.sin(s / 40.0), params)
        emas = update_power_emas(emas, theta, jnp.asarray(step), gammas)
        if (step + 1) % 50 == 0:
            store.save(step + 1, emas)
    store.save(300, emas)  # a repeated save (a resumed run) is a no-op
    assert store.steps() == [50, 100, 150, 200, 250, 300]
    rebuilt, residual, count = reconstruct_from_store(store, emas, (0.05, 0.1), 0.1)
    assert count == 6 and residual < 1e-6
    np.testing.assert_allclose(rebuilt["w"], emas[1]["w"], rtol=1e-5, atol=1e-6)
    store.close()
