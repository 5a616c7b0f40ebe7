"""Input checks that raise clear errors.

Checks on *values* (times, schedule parameters) run only when the value is concrete, i.e. in eager
calls from a notebook or script; inside `jax.jit` the values are tracers and the check is skipped
(checks on *shapes* are static and always run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds actual values (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_positive(name: str, value: float, owner: str) -> None:
    if is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"{owner}: {name} must be > 0, got {value}.")


def check_less(lo_name: str, lo: float, hi_name: str, hi: float, owner: str) -> None:
    if is_concrete((lo, hi)) and not np.all(np.asarray(lo) < np.asarray(hi)):
        raise ValueError(f"{owner}: need {lo_name} < {hi_name}, got {lo_name}={lo}, {hi_name}={hi}.")


def check_time(t, lo: float, hi: float, owner: str):
    """Raise if a concrete `t` leaves [lo, hi]; returns `t` as an array."""
    t = jnp.asarray(t)
    if is_concrete(t) and t.size:
        tn = np.asarray(t)
        if not np.all(np.isfinite(tn)) or tn.min() < lo - 1e-6 or tn.max() > hi + 1e-6:
            raise ValueError(
                f"{owner}: time t must lie in [{lo}, {hi}], got values in "
                f"[{tn.min():.6g}, {tn.max():.6g}]. Diffusion processes put data at t=0 and noise at "
                "t=T; flow-matching paths put noise at t=0 and data at t=1 (diffjax.processes.convention)."
            )
    return t


def check_batch_time(x, t, owner: str):
    """`t` must be a scalar or have one entry per leading batch element of `x`."""
    t = jnp.asarray(t)
    if t.ndim > 1 or (t.ndim == 1 and (x.ndim == 0 or t.shape[0] != x.shape[0])):
        raise ValueError(
            f"{owner}: t must be a scalar or of shape (batch,) = ({x.shape[0] if x.ndim else '?'},)"
            f" matching x of shape {x.shape}; got t of shape {t.shape}."
        )
    return t


def check_same_shape(a, b, names: str, owner: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{owner}: {names} must have the same shape, got {a.shape} and {b.shape}.")


def check_key(key, owner: str):
    """`key` must be a PRNG key (a typed `jax.random.key` or a raw uint32 (2,) key); returns it."""
    dtype = getattr(key, "dtype", None)
    ok = dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key)
                                or (dtype == jnp.uint32 and key.shape[-1:] == (2,)))  # fmt: skip
    if not ok:
        shown = f"{type(key).__name__} {key!r}" if dtype is None else f"an array of dtype {dtype}"
        raise TypeError(f"{owner}: key must be a PRNG key, e.g. jax.random.key(0); got {shown}.")
    return key
