"""Forward simulation of SDEs dX = f(X, t) dt + G(t) dW by the Euler–Maruyama scheme.

    X_{k+1} = X_k + f(X_k, t_k) Δt_k + G(t_k) √|Δt_k| z_k,    z_k ~ N(0, I),  Δt_k = t_{k+1} − t_k

(Kloeden & Platen 1992, §9.1: strong order ½, weak order 1). The grid may decrease (Δt < 0, e.g.
a reverse-time SDE run from T to 0); the noise scale is then √|Δt|. The loop is one `lax.scan`;
wrap the call in `jax.jit` (closing over the drift and diffusion) to compile it once for repeated
use.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._validate import is_concrete
from diffjax.processes.base import expand

DriftFn = Callable[[Array, Array], Array]
DiffusionFn = Callable[[Array], Array]


def euler_maruyama(
    key: Array,
    x0: Float[Array, "batch ..."],
    drift_fn: DriftFn,
    diffusion_fn: DiffusionFn,
    ts: Float[ArrayLike, " n_plus_1"],
    save_path: bool = False,
) -> Array | tuple[Array, Array]:
    """Simulate dX = f(X, t) dt + G(t) dW from X(ts[0]) = x0 along the grid `ts`.

    Args:
      key: PRNG key (one fresh normal draw per step is split from it).
      x0: initial states, shape (batch, *event); (batch, D) when G is a matrix.
      drift_fn: f(x, t) with x (batch, *event) and t (batch,) (every entry the current grid time,
        the model-function convention) -> (batch, *event).
      diffusion_fn: G(t) for a scalar time t, returning either a rate g(t) of shape () or (batch,)
        (isotropic noise g·dW, dW of x's shape), or a matrix of shape (D, M) (noise G·dW with
        dW ∈ R^M; (D, D) for a square G).
      ts: time grid of shape (n+1,), strictly monotone (increasing or decreasing).
      save_path: also return the whole path.

    Returns:
      x_final of shape (batch, *event); with `save_path`, (x_final, path) where path has shape
      (n+1, batch, *event) and path[0] = x0, path[-1] = x_final.
    """
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    ts = jnp.asarray(ts, dtype=x0.dtype)
    if x0.ndim < 2:
        raise ValueError(
            f"euler_maruyama: x0 must have shape (batch, *event), e.g. (batch, D); got {x0.shape}. "
            "Add a leading batch axis (x0[None]) for a single path."
        )
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(
            f"euler_maruyama: ts must be a 1-D grid of >= 2 times, got shape {ts.shape}."
        )
    if is_concrete(ts):
        steps = np.diff(np.asarray(ts))
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError(
                "euler_maruyama: ts must be strictly increasing or strictly decreasing."
            )
    batch = x0.shape[0]

    t_batch = jax.ShapeDtypeStruct((batch,), ts.dtype)
    drift_shape = jax.eval_shape(drift_fn, jax.ShapeDtypeStruct(x0.shape, x0.dtype), t_batch).shape
    if drift_shape != x0.shape:
        raise ValueError(
            f"euler_maruyama: drift_fn(x, t) must return x's shape {x0.shape}, got {drift_shape}."
        )
    g_shape = jax.eval_shape(diffusion_fn, jax.ShapeDtypeStruct((), ts.dtype)).shape
    if len(g_shape) == 2:
        if x0.ndim != 2 or g_shape[0] != x0.shape[1]:
            raise ValueError(
                f"euler_maruyama: a diffusion matrix G(t) of shape {g_shape} needs x0 of shape "
                f"(batch, {g_shape[0]}), got {x0.shape}."
            )
        noise_shape = (batch, g_shape[1])
    elif g_shape in ((), (batch,)):
        noise_shape = x0.shape
    else:
        raise ValueError(
            f"euler_maruyama: diffusion_fn(t) must return a scalar, a (batch,) = ({batch},) rate "
            f"or a (D, M) matrix; got shape {g_shape}."
        )

    def step(x, inputs):
        t, t_next, k = inputs
        dt = t_next - t
        z = jax.random.normal(k, noise_shape, x.dtype)
        g = diffusion_fn(t)
        noise = z @ g.T if len(g_shape) == 2 else expand(g, x) * z
        x_next = x + drift_fn(x, jnp.full((batch,), t)) * dt + jnp.sqrt(jnp.abs(dt)) * noise
        x = x_next.astype(x.dtype)
        return x, (x if save_path else None)

    keys = jax.random.split(key, ts.shape[0] - 1)
    x_final, path = jax.lax.scan(step, x0, (ts[:-1], ts[1:], keys))
    if save_path:
        return x_final, jnp.concatenate([x0[None], path], axis=0)
    return x_final
