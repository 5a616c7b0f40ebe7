"""Shared test helpers."""

import os

# JAX's persistent compilation cache, shared by the tests, both xdist workers and the scripts the tests
# run as subprocesses (they inherit the environment): the suite compiles the same small programs many
# times (a U-Net's initializers alone are ~130 programs, 15-25 s on 2 cores), and a hit costs
# milliseconds. Keyed by the program, the compile options and the JAX version: a hit is the same
# executable. Set JAX_COMPILATION_CACHE_DIR to use another folder.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

from diffjax.xla_cpu import configure_xla_cpu  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))  # fmt: skip
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))  # fmt: skip
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
