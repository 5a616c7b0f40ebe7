"""`filter_jit`: compile a function of arbitrary pytrees, tracing their arrays and hashing the rest.

Models reach samplers, likelihoods and losses in many forms — an NNX module (a pytree of parameter
arrays), a `jax.tree_util.Partial` or pytree dataclass holding arrays, or a plain Python function.
`jax.jit` needs every argument leaf to be an array; `filter_jit` splits every argument into its array
leaves (traced: new parameters, labels or data reuse the compiled program) and everything else
(functions, strings, Python numbers, the tree structure: hashed as a static key). A plain function is
thus static and hashed by identity, while a module or a Partial compiles once per structure — the
equinox idea, in a dozen lines, so that users never wrap a model by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


class _Static:
    """The non-array part of the arguments, hashable and compared by value. Equality also compares
    the hashes: JAX's treedef equality ignores the class of a dataclass node without fields (so
    `Euler()` and `Heun()` would compare equal), while its hash does not."""

    __slots__ = ("_hash", "value")

    def __init__(self, value):
        self.value = value
        self._hash = hash(value)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _Static) and self._hash == other._hash and self.value == other.value


def partition(tree: Any) -> tuple[list, _Static]:
    """(array leaves, static rest) of a pytree; `combine` inverts it."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_array = tuple(isinstance(leaf, _ARRAY_TYPES) for leaf in leaves)
    arrays = [leaf for leaf, a in zip(leaves, is_array, strict=True) if a]
    static = tuple(leaf for leaf, a in zip(leaves, is_array, strict=True) if not a)
    return arrays, _Static((treedef, is_array, static))


def combine(arrays: list, static: _Static) -> Any:
    treedef, is_array, static_leaves = static.value
    it_a, it_s = iter(arrays), iter(static_leaves)
    return jax.tree_util.tree_unflatten(treedef, [next(it_a) if a else next(it_s) for a in is_array])


def filter_jit(fn: Callable | None = None, *, donate_arrays: bool = False) -> Callable:
    """`jax.jit(fn)` where every argument may be any pytree: array leaves are traced, all other leaves
    (and the structure) are static. Usable as `@filter_jit`."""
    if fn is None:
        return functools.partial(filter_jit, donate_arrays=donate_arrays)

    @functools.partial(jax.jit, static_argnums=1, donate_argnums=(0,) if donate_arrays else ())
    def compiled(arrays, static):
        args, kwargs = combine(arrays, static)
        return fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return compiled(*partition((args, kwargs)))

    wrapper.compiled = compiled  # for inspection (e.g. `_cache_size()` in tests)
    return wrapper
