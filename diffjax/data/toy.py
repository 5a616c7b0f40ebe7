"""Generated 2D datasets: pure functions `(key, n) -> (x (n, 2) float32, labels (n,) int32)`.

Each is scaled to (about) unit std per coordinate, exactly where a closed form exists:

    checkerboard     uniform on the dark squares of a squares×squares board on [−√3, √3]²;
                     each coordinate is marginally U(−√3, √3): mean 0, std exactly 1.
                     Label: index of the dark square.
    moons            two interleaved half circles, upper (cos θ, sin θ), lower
                     (1 − cos θ, ½ − sin θ), θ ~ U(0, π), plus N(0, noise²); standardised with
                     the exact mean (½, ¼) and variances (¾, ⅝ − 1/π − 1/16) + noise².
                     Label: moon index.
    eight_gaussians  8 equal Gaussians on a circle, the exact `GaussianMixture`
                     `eight_gaussians_mixture()`, per-coordinate variance radius²/2 + std² = 1.
                     Label: component.
    spirals          two arms r(θ) ∝ θ, θ = 3π √u, the second arm the first rotated by π,
                     scaled so that E|x|² = 2 (before noise). Label: arm index.

`sample_mixture(key, n, mixture)` draws from any `diffjax.oracle.GaussianMixture`.
`TOY_LOG_PROBS` holds the exact log-densities where a closed form exists (checkerboard:
−log 6 on its support, whose area is half the board's (2√3)²; eight_gaussians: the mixture's) —
the reference for a model's likelihood: E_data[−log p_model] − E_data[−log p_data] = KL(data‖model).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from diffjax.oracle import GaussianMixture, ring_mixture

ToySample = tuple[Float[Array, "n 2"], Int[Array, " n"]]
HALF_WIDTH = float(np.sqrt(3.0))  # U(−√3, √3) has unit variance


def checkerboard(key, n: int, squares: int = 4) -> ToySample:
    """Uniform points on the dark squares ((i + j) even) of a squares² board on [−√3, √3]²."""
    if squares % 2:
        raise ValueError(f"checkerboard: squares must be even (balanced board), got {squares}.")
    k_cell, k_pos = jax.random.split(key)
    cell = jax.random.randint(k_cell, (n,), 0, squares * squares // 2)
    row = cell // (squares // 2)
    col = 2 * (cell % (squares // 2)) + row % 2  # (row + col) even
    u = jax.random.uniform(k_pos, (n, 2))
    side = 2 * HALF_WIDTH / squares
    x = -HALF_WIDTH + side * (jnp.stack([col, row], axis=-1) + u)
    return x.astype(jnp.float32), cell.astype(jnp.int32)


def in_checkerboard(x: Float[Array, "n 2"], squares: int = 4) -> Bool[Array, " n"]:
    """Whether points lie on the board's dark squares (the support of `checkerboard`)."""
    side = 2 * HALF_WIDTH / squares
    ij = jnp.floor((x + HALF_WIDTH) / side).astype(jnp.int32)
    inside = jnp.all((ij >= 0) & (ij < squares), axis=-1)
    return inside & (jnp.sum(ij, axis=-1) % 2 == 0)


MOONS_MEAN = (0.5, 0.25)
MOONS_VAR = (0.75, 0.625 - 1.0 / np.pi - 0.0625)  # exact variances of the noiseless moons


CHECKERBOARD_AREA = (2 * HALF_WIDTH) ** 2 / 2  # = 6: the dark half of the board, for any `squares`


def checkerboard_log_prob(x: Float[Array, "n 2"], squares: int = 4) -> Float[Array, " n"]:
    """Exact log-density of `checkerboard`: −log 6 on the dark squares, −∞ elsewhere."""
    return jnp.where(in_checkerboard(x, squares), -np.log(CHECKERBOARD_AREA), -jnp.inf)


def moons(key, n: int, noise: float = 0.1) -> ToySample:
    """Two moons with Gaussian noise, standardised to mean 0 and unit std per coordinate."""
    k_lab, k_ang, k_noise = jax.random.split(key, 3)
    lab = jax.random.bernoulli(k_lab, 0.5, (n,)).astype(jnp.int32)
    theta = jax.random.uniform(k_ang, (n,), maxval=jnp.pi)
    upper = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    lower = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=-1)
    x = jnp.where(lab[:, None] == 0, upper, lower) + noise * jax.random.normal(k_noise, (n, 2))
    std = jnp.sqrt(jnp.asarray(MOONS_VAR) + noise**2)
    return ((x - jnp.asarray(MOONS_MEAN)) / std).astype(jnp.float32), lab


def eight_gaussians_mixture(std: float = 0.2) -> GaussianMixture:
    """The exact 8-Gaussian ring with per-coordinate variance radius²/2 + std² = 1."""
    if not 0 < std < 1:
        raise ValueError(f"eight_gaussians: std must lie in (0, 1), got {std}.")
    return ring_mixture(8, radius=float(np.sqrt(2.0 * (1.0 - std**2))), std=std)


def eight_gaussians(key, n: int, std: float = 0.2) -> ToySample:
    """Samples of `eight_gaussians_mixture(std)` with their component labels."""
    return sample_mixture(key, n, eight_gaussians_mixture(std))


SPIRAL_TURNS = 1.5  # θ ranges over [0, 2π · turns]


def spirals(key, n: int, noise: float = 0.05) -> ToySample:
    """Two spiral arms r = θ/c, θ = 3π √u (u uniform), c = 3π/2 so that E|x|² = 2 before noise."""
    k_lab, k_u, k_noise = jax.random.split(key, 3)
    lab = jax.random.bernoulli(k_lab, 0.5, (n,)).astype(jnp.int32)
    theta_max = 2 * np.pi * SPIRAL_TURNS
    theta = theta_max * jnp.sqrt(jax.random.uniform(k_u, (n,)))
    r = theta / (theta_max / 2.0)  # E[θ²] = θ_max²/2 → E[r²] = 2
    phase = theta + jnp.pi * lab
    x = r[:, None] * jnp.stack([jnp.cos(phase), jnp.sin(phase)], axis=-1)
    x = x + noise * jax.random.normal(k_noise, (n, 2))
    return x.astype(jnp.float32), lab


def sample_mixture(key, n: int, mixture: GaussianMixture) -> ToySample:
    """(x, labels) from a `GaussianMixture` (any dimension D: x is (n, D))."""
    x, labels = mixture.sample(key, n)
    return x.astype(jnp.float32), labels.astype(jnp.int32)


def eight_gaussians_log_prob(x: Float[Array, "n 2"], std: float = 0.2) -> Float[Array, " n"]:
    """Exact log-density of `eight_gaussians`."""
    return eight_gaussians_mixture(std).log_prob(x)


TOY_DATASETS: dict[str, Callable[..., ToySample]] = {
    "checkerboard": checkerboard,
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "spirals": spirals,
}

# exact log p_data(x) for the toys with default arguments (moons and spirals are noise-convolved curves:
# no closed form)
TOY_LOG_PROBS: dict[str, Callable[[Array], Array]] = {
    "checkerboard": checkerboard_log_prob,
    "eight_gaussians": eight_gaussians_log_prob,
}
