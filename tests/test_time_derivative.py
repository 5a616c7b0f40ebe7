"""`experiments.time_derivative`: the jvp total derivative against finite-difference slopes along
the ODE — the gap closes at order 1 in Δt for a smooth field, and stays at the jvp's own size over a
Δt that spans the wiggles of a fast time oscillation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from conftest import x64

from experiments.time_derivative import time_derivative_table


def test_gap_closes_at_order_one_for_a_smooth_field_and_stays_for_a_wiggly_one():
    with x64():
        x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 3)))

        def smooth(x, t):  # a smooth field: the Euler step along it is O(Δt²), the slope O(Δt)
            return -x * (1.0 + t)[:, None]

        def wiggly(x, t):  # ∂_t v = 10 cos(1000 t)·x: large, averaging out over Δt ≫ 2π/1000
            return x * (1.0 + 0.01 * jnp.sin(1000.0 * t))[:, None]

        row = time_derivative_table(smooth, x, 0.4, steps=(1e-2, 1e-3))
        ratio = row["gap_0.001"] / row["gap_0.01"]
        assert 0.08 < ratio < 0.12, ratio  # order 1: ten times smaller step, ten times smaller gap
        assert row["gap_0.001"] < 1e-2 * row["jvp"]

        row = time_derivative_table(wiggly, x, 0.4, steps=(1e-2, 1e-5))
        assert row["jvp"] > 3 * row["v"], row  # the derivative is the wiggle's, not the trend's
        assert row["gap_0.01"] > 0.5 * row["jvp"], row
        assert row["gap_1e-05"] < 0.05 * row["jvp"], row  # the jvp is the true derivative
