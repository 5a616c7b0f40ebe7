"""Shortcut models (Frans et al. 2024): the dyadic times, the loss at the exact average velocity of
Gaussian data (closed forms: zero self-consistency on every level but the finest, whose Euler halves
converge at second order; the flow-matching part at its irreducible value, zero with the exact
velocity as teacher), and its checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order, gaussian_flow_map

import diffjax as dj
from diffjax.losses import irreducible_loss_gaussian
from diffjax.shortcut import shortcut_loss, shortcut_times

MEAN, STD = jnp.array([1.0, -2.0]), 0.5


def exact_u(process):
    def u(x, t, s):  # (Φ_{t→s}(x) − x)/(s − t), and v(x, t) on the diagonal
        same = s == t
        s_safe = jnp.where(same, t + 1e-3, s)
        jump = gaussian_flow_map(process, MEAN, STD, x, t[:, None], s_safe[:, None])
        return jnp.where(same[:, None], exact_v(process)(x, t), (jump - x) / (s_safe - t)[:, None])

    return u


def exact_v(process):
    def v(x, t):  # ∂_s Φ_{t→s}(x) at s = t
        flow = lambda ss: gaussian_flow_map(process, MEAN, STD, x, t[:, None], ss[:, None])  # noqa: E731
        return jax.jvp(flow, (t,), (jnp.ones_like(t),))[1]

    return v


@pytest.mark.parametrize("process", [dj.CondOTPath(), dj.VPSDE()], ids=["condot", "vp"])
def test_shortcut_times_are_dyadic_jumps_inside_the_axis(process):
    t, r, s, finest = shortcut_times(process, jax.random.key(0), 20000, max_steps=16)
    end, noise = process.data_end(), process.t_noise
    tau = lambda x: (np.asarray(x) - noise) / (end - noise)  # noqa: E731
    h = tau(s) - tau(t)
    np.testing.assert_allclose(tau(r) - tau(t), h / 2, atol=1e-6)
    assert tau(t).min() >= 0 and tau(s).max() <= 1 + 1e-6
    levels = np.round(-np.log2(h)).astype(int)
    np.testing.assert_allclose(h, 2.0**-levels, rtol=1e-5)  # h ∈ {1, 1/2, 1/4, 1/8}
    np.testing.assert_allclose(tau(t) / (h / 2), np.round(tau(t) / (h / 2)), atol=1e-4)  # on the half-grid
    counts = np.bincount(levels, minlength=4) / len(levels)
    assert np.all(np.abs(counts - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(levels)))  # uniform levels
    np.testing.assert_array_equal(np.asarray(finest), levels == 3)


def test_exact_average_velocity_zeroes_self_consistency_and_finest_level_is_second_order():
    """Bootstrap part only (fraction 1), Gaussian data on CondOT: at the exact u every level but the
    finest has loss 0 to rounding (the flow map is a semigroup); the finest level's halves are Euler
    steps on the diagonal, so its loss falls as h² (fitted order in max_steps ≈ 2); u = v (one Euler
    step for every jump) is rejected at the coarse levels (its loss there 27× the finest level's floor)."""
    with x64():
        process = dj.CondOTPath()
        x0 = MEAN + STD * jax.random.normal(jax.random.key(1), (4096, 2), jnp.float64)
        key = jax.random.key(2)
        finest_losses = []
        for max_steps in (8, 16, 32):
            per = shortcut_loss(exact_u(process), x0, key, process=process, max_steps=max_steps,
                                bootstrap_fraction=1.0, reduce=False)  # fmt: skip
            finest = np.asarray(shortcut_times(process, jax.random.split(key, 3)[1], 4096, max_steps)[3])
            assert float(jnp.max(per[~finest])) < 1e-20
            finest_losses.append(float(jnp.mean(per[finest])))
        order = fitted_order([8, 16, 32], finest_losses)
        assert 1.8 < order < 2.2, (order, finest_losses)
        euler = lambda x, t, s: exact_v(process)(x, t)  # noqa: E731
        per = shortcut_loss(euler, x0, key, process=process, max_steps=32, bootstrap_fraction=1.0,
                            reduce=False)  # fmt: skip
        finest = np.asarray(shortcut_times(process, jax.random.split(key, 3)[1], 4096, 32)[3])
        assert float(jnp.mean(per[~finest])) > 10 * finest_losses[-1]  # measured 27×; exact u: < 1e-20


def test_flow_matching_part_is_the_irreducible_loss_and_zero_with_the_exact_teacher():
    """Fraction 0 (diagonal only): with the conditional velocity the mean loss is E_t[irreducible
    velocity loss] for t uniform on the axis (z-test over 40000 draws against quadrature); with the
    exact velocity as teacher it is 0 to rounding."""
    with x64():
        process, n = dj.CondOTPath(), 40000
        x0 = MEAN + STD * jax.random.normal(jax.random.key(3), (n, 2), jnp.float64)
        per = shortcut_loss(exact_u(process), x0, jax.random.key(4), process=process, bootstrap_fraction=0.0,
                            reduce=False)  # fmt: skip
        grid = np.linspace(0.0, 1.0, 20001)
        expected = float(np.mean(irreducible_loss_gaussian(process, jnp.asarray(grid), STD, "velocity")))
        mean, se = float(jnp.mean(per)), float(jnp.std(per)) / np.sqrt(n)
        assert abs(mean - expected) < 4 * se, (mean, expected, se)
        zero = shortcut_loss(exact_u(process), x0, jax.random.key(4), process=process, bootstrap_fraction=0.0,
                             velocity=exact_v(process))  # fmt: skip
        assert float(zero) < 1e-20


def test_shortcut_loss_trains_and_checks_its_input():
    net = dj.models.build_model({"kind": "mlp", "prediction": "velocity", "width": 16, "depth": 1,
                                 "second_time": True})  # fmt: skip
    model = lambda x, t, s: net(x, t, s=s)  # noqa: E731
    x0 = jax.random.normal(jax.random.key(0), (8, 2))
    loss = jax.jit(lambda x: shortcut_loss(model, x, jax.random.key(1), process=dj.CondOTPath()))(x0)
    assert np.isfinite(float(loss))
    for kwargs, match in ((dict(max_steps=12), "power of two"), (dict(bootstrap_fraction=1.5), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            shortcut_loss(model, x0, jax.random.key(1), process=dj.CondOTPath(), **kwargs)
    with pytest.raises(ValueError, match="discrete"):
        shortcut_loss(model, x0, jax.random.key(1), process=dj.DDPMChain.linear(10))
