"""Frozen dataclasses that are JAX pytrees.

Fields marked with `static_field()` are hashable metadata (schedule constants, sizes); the other
fields are array leaves that `jit`, `vmap` and `grad` trace through.
"""

from __future__ import annotations

import dataclasses
import functools

import jax


def static_field(**kwargs):
    """A dataclass field stored in the treedef (must be hashable, e.g. a float)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls=None, *, eq: bool = True):
    """Decorate `cls` as a frozen dataclass registered as a pytree. eq=False keeps identity equality
    and hashing: for callables holding arrays (models), which `jax.jit` must be able to hash."""
    if cls is None:
        return functools.partial(pytree_dataclass, eq=eq)
    cls = dataclasses.dataclass(frozen=True, eq=eq)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
