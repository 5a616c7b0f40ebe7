"""Shared test helpers."""

import jax
import pytest

from diffjax.xla_cpu import configure_xla_cpu

configure_xla_cpu()  # the options the experiments run under (before any test starts JAX)


def x64():
    """Context manager enabling float64 for one block (new and old JAX spellings)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. A pytest-xdist worker runs hundreds of
    modules in one process; without this every executable it ever compiled stays mapped (one worker
    crashed in XLA's compiler after ~400 tests, as a benchmark process did after ~500 compiles, with
    'LLVM compilation error: Cannot allocate memory'). Modules do not share compiled programs."""
    yield
    jax.clear_caches()
