"""Sample distances against closed forms for Gaussians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.metrics import mmd_rbf, sliced_wasserstein, sliced_wasserstein_sorted, sorted_projections


def gaussian(key, n, mean, std):
    return mean + std * jax.random.normal(key, (n, len(mean)))


def test_sliced_wasserstein_of_isotropic_gaussians_matches_the_closed_form():
    """θᵀx ~ N(0, 1), θᵀy ~ N(θᵀm, s²): W2² = (θᵀm)² + (1 − s)², E_θ (θᵀm)² = ‖m‖²/D."""
    mean, s, d = jnp.array([1.0, -0.5, 0.3]), 1.5, 3
    exact = np.sqrt(float(jnp.sum(mean**2)) / d + (1 - s) ** 2)
    x = gaussian(jax.random.PRNGKey(0), 20_000, jnp.zeros(d), 1.0)
    y = gaussian(jax.random.PRNGKey(1), 15_000, mean, s)  # n ≠ m: interpolated quantiles
    got = float(sliced_wasserstein(x, y, jax.random.PRNGKey(2), 512))
    assert got == pytest.approx(exact, rel=0.04)  # 512 directions: relative SE ≈ 1.3% (cos²φ has sd 0.3)
    # a reference projected once gives the same number
    key = jax.random.PRNGKey(2)
    reuse = sliced_wasserstein_sorted(sorted_projections(x, key, 512), sorted_projections(y, key, 512))
    assert float(reuse) == pytest.approx(got, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        sliced_wasserstein(x, y[:, :2], key)


def test_mmd_matches_the_gaussian_kernel_expectation():
    """E k(x, y) = (h²/(h² + s₁² + s₂²))^{D/2} exp(−‖μ₁ − μ₂‖²/(2(h² + s₁² + s₂²)))."""
    d, h, s1, s2 = 2, 1.0, 0.7, 1.2
    m1, m2 = jnp.zeros(d), jnp.array([1.0, 0.5])

    def ek(sa, sb, dm):
        v = h**2 + sa**2 + sb**2
        return (h**2 / v) ** (d / 2) * np.exp(-float(jnp.sum(dm**2)) / (2 * v))

    exact = ek(s1, s1, 0 * m1) + ek(s2, s2, 0 * m1) - 2 * ek(s1, s2, m1 - m2)
    vals = [float(mmd_rbf(gaussian(jax.random.PRNGKey(2 * i), 1500, m1, s1),
                          gaussian(jax.random.PRNGKey(2 * i + 1), 1500, m2, s2), h))
            for i in range(8)]  # fmt: skip
    se = np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - exact) < 4 * se + 1e-4
    same = [float(mmd_rbf(gaussian(jax.random.PRNGKey(100 + i), 1500, m1, s1),
                          gaussian(jax.random.PRNGKey(200 + i), 1500, m1, s1), h))
            for i in range(8)]  # fmt: skip
    assert abs(np.mean(same)) < 4 * np.std(same, ddof=1) / np.sqrt(8) + 1e-5  # unbiased: mean 0
