"""A learned variance-preserving noise schedule (Kingma et al. 2021, "Variational diffusion models").

The schedule is the negative log-SNR γ(t) = −λ(t), monotonically increasing on t ∈ [0, 1] (data at
t = 0, noise at t = 1), with α² = sigmoid(−γ), σ² = sigmoid(γ). Its shape is a monotone network

    γ̃(t) = softplus(a)·t + Σ_k softplus(v_k)·sigmoid(softplus(w_k)·t + b_k)       (positive weights)
    γ(t) = γ_min + (γ_max − γ_min)·(γ̃(t) − γ̃(0))/(γ̃(1) − γ̃(0)),

so the endpoints γ(0) = γ_min, γ(1) = γ_max are parameters of their own (learned or fixed) and the
shape between them is free. `LearnedSchedule` is a `GaussianProcess` whose parameters are array
leaves of the pytree: losses, samplers and likelihoods take it like any process, and `jax.grad`
reaches its parameters through α(t), σ(t) and their time derivatives (g² = σ²·γ'(t)).

The continuous-time diffusion loss of `diffjax.likelihood.continuous_elbo`, ½ E_t[γ'(t)‖ε − ε̂‖²],
depends on the schedule only through its endpoints (VDM eq. 13, for a model that sees x_t through the
SNR, as every diffjax network does through the process); the shape changes only the variance of its
Monte Carlo estimate, which `variance_gradient` minimises (VDM §4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._pytree import pytree_dataclass
from diffjax.processes.base import GaussianProcess


@pytree_dataclass
class LearnedSchedule(GaussianProcess):
    """VP process with the learned negative log-SNR γ(t) of the module docstring (t ∈ [0, 1])."""

    linear: Array  # a, ()
    in_weight: Array  # w, (K,)
    in_bias: Array  # b, (K,)
    out_weight: Array  # v, (K,)
    gamma_min: Array  # ()
    gamma_max: Array  # ()

    @classmethod
    def create(cls, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 16, key=None):
        """A schedule close to linear in γ (VDM's initialisation: γ from −13.3 to 5); random shape
        parameters from `key` (default a fixed key)."""
        if not gamma_min < gamma_max:
            raise ValueError(f"LearnedSchedule: need gamma_min < gamma_max, got {gamma_min}, {gamma_max}.")
        k1, k2 = jax.random.split(jax.random.key(0) if key is None else key)
        return cls(
            linear=jnp.asarray(1.0),
            in_weight=jnp.full((hidden,), 0.5) + 0.1 * jax.random.normal(k1, (hidden,)),
            in_bias=jnp.linspace(-2.0, 2.0, hidden),
            out_weight=-4.0 + 0.1 * jax.random.normal(k2, (hidden,)),
            gamma_min=jnp.asarray(float(gamma_min)),
            gamma_max=jnp.asarray(float(gamma_max)),
        )

    @property
    def t_data(self) -> float:
        return 0.0

    @property
    def t_noise(self) -> float:
        return 1.0

    def _shape(self, t: Array) -> Array:
        t = jnp.asarray(t)[..., None]
        hidden = jax.nn.sigmoid(jax.nn.softplus(self.in_weight) * t + self.in_bias)
        steps = jnp.sum(jax.nn.softplus(self.out_weight) * hidden, -1)
        return jax.nn.softplus(self.linear) * t[..., 0] + steps

    def gamma(self, t: ArrayLike) -> Array:
        """γ(t) = −λ(t), increasing from gamma_min at t = 0 to gamma_max at t = 1."""
        t = jnp.asarray(t, jnp.result_type(float))
        g0, g1 = self._shape(jnp.zeros((), t.dtype)), self._shape(jnp.ones((), t.dtype))
        unit = (self._shape(t) - g0) / (g1 - g0)
        return (self.gamma_min + (self.gamma_max - self.gamma_min) * unit).astype(t.dtype)

    def alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self.gamma(t)))

    def sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self.gamma(t)))

    def log_snr(self, t):
        return -self.gamma(self.check_time(t))

    @property
    def default_t_eps(self) -> float:
        return 0.0  # σ(0)² = sigmoid(γ_min) > 0: the data end is a proper noise level


def variance_gradient(per_example_loss, schedule: LearnedSchedule, *args):
    """(mean loss, gradient of the mean in the other arguments, gradient of the mean *square* in the
    schedule) from one forward pass: `per_example_loss(schedule, *args) -> (batch,)`. Since the
    expected continuous-time loss depends only on the schedule's endpoints, descending the mean
    square in its shape parameters descends the variance of the estimate (VDM §4.2); pass the
    endpoints through `jax.lax.stop_gradient` in the schedule, or zero their gradient, to keep them."""
    losses, vjp = jax.vjp(lambda s, *a: per_example_loss(s, *a), schedule, *args)
    n = losses.shape[0]
    mean_grads = vjp(jnp.full_like(losses, 1.0 / n))
    square_grads = vjp(2.0 * losses / n)
    return jnp.mean(losses), mean_grads[1:], square_grads[0]


__all__ = ["LearnedSchedule", "variance_gradient"]
