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
Monte Carlo estimate, which `variance_gradient` minimises (VDM §4.2). In training the gradient of
the mean square reaches the shape parameters inside one ordinary gradient step through
`mean_with_variance_gradient` (a custom VJP: the mean's gradient everywhere else); a network that
carries its own schedule is `diffjax.models.WithSchedule`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._pytree import pytree_dataclass, static_field
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
    learn_endpoints: bool = static_field(default=True)  # False: no gradient reaches gamma_min, gamma_max

    SHAPE_FIELDS = ("linear", "in_weight", "in_bias", "out_weight")  # the shape between the endpoints

    @classmethod
    def create(cls, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 16, key=None,
               learn_endpoints: bool = True):  # fmt: skip
        """A schedule close to linear in γ (VDM's initialisation: γ from −13.3 to 5); random shape
        parameters from `key` (default a fixed key). learn_endpoints=False keeps γ(0) and γ(1) out of
        every gradient (`jax.lax.stop_gradient`)."""
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
            learn_endpoints=bool(learn_endpoints),
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

    def endpoints(self) -> tuple[Array, Array]:
        """(γ_min, γ_max), outside every gradient unless `learn_endpoints`."""
        if self.learn_endpoints:
            return self.gamma_min, self.gamma_max
        return jax.lax.stop_gradient(self.gamma_min), jax.lax.stop_gradient(self.gamma_max)

    def unit_gamma(self, t: ArrayLike) -> Array:
        """(γ(t) − γ_min)/(γ_max − γ_min) ∈ [0, 1], the schedule's shape alone: with fixed endpoints a
        function of the SNR only, so a network fed it instead of t sees x_t through the SNR (VDM eq. 13)."""
        t = jnp.asarray(t, jnp.result_type(float))
        g0, g1 = self._shape(jnp.zeros((), t.dtype)), self._shape(jnp.ones((), t.dtype))
        return ((self._shape(t) - g0) / (g1 - g0)).astype(t.dtype)

    def gamma(self, t: ArrayLike) -> Array:
        """γ(t) = −λ(t), increasing from gamma_min at t = 0 to gamma_max at t = 1."""
        unit = self.unit_gamma(t)
        lo, hi = self.endpoints()
        return (lo + (hi - lo) * unit).astype(unit.dtype)

    def alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self.gamma(t)))

    def sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self.gamma(t)))

    def log_snr(self, t):
        return -self.gamma(self.check_time(t))

    @property
    def default_t_eps(self) -> float:
        return 0.0  # σ(0)² = sigmoid(γ_min) > 0: the data end is a proper noise level


def mean_with_variance_gradient(per_example, params, *args, square: Callable[[tuple], bool]):
    """mean_i L_i for L = per_example(params, *args) of shape (batch,), whose gradient in `params` is
    the gradient of the mean square (1/n)·Σ_i L_i² at the leaves whose key path `square(path)` selects
    and the gradient of the mean everywhere else (the other leaves of params and every arg).

    Descending the mean square in a learned schedule's shape descends the variance of the loss's
    estimate (its mean does not depend on the shape: VDM §4.2), while the network (and the endpoints)
    descend the loss itself — in one ordinary `jax.grad`, as a training step takes it. Costs one
    forward and two backward passes (the two cotangents 1/n and 2·L_i/n of the same VJP)."""

    @jax.custom_vjp
    def mean(params, *args):
        return jnp.mean(per_example(params, *args))

    def forward(params, *args):
        losses, vjp = jax.vjp(per_example, params, *args)
        return jnp.mean(losses), (vjp, losses)

    def backward(residuals, g):
        vjp, losses = residuals
        n = losses.shape[0]
        plain = vjp(jnp.full_like(losses, g / n))
        of_square = vjp(2.0 * g * losses / n)[0]
        chosen = jax.tree_util.tree_map_with_path(lambda path, a, b: b if square(path) else a,
                                                  plain[0], of_square)  # fmt: skip
        return (chosen, *plain[1:])

    mean.defvjp(forward, backward)
    return mean(params, *args)


def variance_gradient(per_example_loss, schedule: LearnedSchedule, *args):
    """(mean loss, gradient of the mean in the other arguments, gradient of the mean *square* in the
    schedule) from one forward pass: `per_example_loss(schedule, *args) -> (batch,)`. Since the
    expected continuous-time loss depends only on the schedule's endpoints, descending the mean
    square in its shape parameters descends the variance of the estimate (VDM §4.2); create the
    schedule with learn_endpoints=False, or zero their gradient, to keep them."""
    in_schedule = lambda path: path[0] == jax.tree_util.SequenceKey(0)  # noqa: E731

    def objective(schedule_and_args):
        return mean_with_variance_gradient(lambda p: per_example_loss(*p), schedule_and_args,
                                           square=in_schedule)  # fmt: skip

    value, vjp = jax.vjp(objective, (schedule, *args))  # a VJP, not grad: keys and integers among args
    (grads,) = vjp(jnp.ones_like(value))
    return value, grads[1:], grads[0]


__all__ = ["LearnedSchedule", "mean_with_variance_gradient", "variance_gradient"]
