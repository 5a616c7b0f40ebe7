"""Frozen dataclasses that are JAX pytrees.

Fields marked with `static_field()` are hashable metadata (schedule constants, sizes); the other
fields are array leaves that `jit`, `vmap` and `grad` trace through.
"""

from __future__ import annotations

import dataclasses

import jax


def static_field(**kwargs):
    """A dataclass field stored in the treedef (must be hashable, e.g. a float)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls):
    """Decorate `cls` as a frozen dataclass registered as a pytree."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
