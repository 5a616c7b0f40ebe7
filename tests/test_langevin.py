"""Unadjusted Langevin dynamics with an exact score reaches the target mixture."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.langevin import langevin_dynamics
from diffjax.metrics import sliced_wasserstein
from diffjax.oracle import GaussianMixture


def test_ula_with_exact_score_reaches_a_2d_mixture():
    """Start far from the target (N(0, 4²I)); after 3000 steps of size 0.01 the sliced W2 to fresh
    target samples is within 1.5× the two-sample noise floor (median over 5 floor draws). ULA's
    O(ε) bias at ε = 0.01 inflates each component's variance by ~0.5% — far below that margin."""
    mix = GaussianMixture.create(
        np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]]), covs=0.3, weights=[0.3, 0.3, 0.4]
    )
    n = 4000
    x_init = 4.0 * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    run = jax.jit(lambda x, k: langevin_dynamics(lambda z: mix.score(z), x, k, 0.01, 3000))
    x = run(x_init, jax.random.PRNGKey(1))
    ref = mix.sample(jax.random.PRNGKey(2), n)[0]
    kp = jax.random.PRNGKey(3)
    dist = float(sliced_wasserstein(x, ref, kp))
    floor = np.median([
        float(sliced_wasserstein(mix.sample(jax.random.PRNGKey(10 + i), n)[0], ref, kp))
        for i in range(5)
    ])  # fmt: skip
    start = float(sliced_wasserstein(x_init, ref, kp))
    assert dist < 1.5 * floor, (dist, floor)
    assert start > 10 * floor  # the test can fail: the initial samples are far away


def test_langevin_trajectory_saving_and_compile_once():
    score = lambda z: -z  # noqa: E731  (standard normal)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(x, key):
        return langevin_dynamics(score, x, key, 0.05, 100, save_every=25)

    x0 = jnp.full((500, 3), 5.0)
    for i in range(2):
        x, traj = run(x0, jax.random.PRNGKey(i))
    assert traj.shape == (5, 500, 3)
    np.testing.assert_array_equal(traj[-1], x)
    np.testing.assert_array_equal(traj[0], x0)
    with pytest.raises(ValueError, match="multiple of save_every"):
        langevin_dynamics(score, x0, jax.random.PRNGKey(0), 0.1, 10, save_every=3)
