"""XLA:CPU options under which diffjax's convolutional networks run fastest — set before JAX starts.

jaxlib 0.10 sends every convolution on the CPU to YNNPACK by default. For the networks diffjax
trains on the CPU, XLA's own convolutions are much faster: on the MNIST U-Net of `bench/` (4.1 M
parameters, batch 128, an idle 2-core AVX-512 machine) one train step takes 2.44–2.55 s instead of
3.37–3.86 s and one forward pass 0.62–0.65 s instead of 1.01–1.18 s, with the same first-step loss
to all printed digits (`bench/results/profile_unet.md`, `bench/results/unet.md`): XLA's
convolutions keep both cores busy (process CPU time / wall 1.85 vs 1.48).

XLA reads `XLA_FLAGS` once, when the first computation starts its backend, so `configure_xla_cpu()`
must run before any array is created:

    import diffjax as dj
    dj.configure_xla_cpu()      # then use jax as usual

`python -m experiments.*` and the test suite call it at start. A flag already named in `XLA_FLAGS`
is left as the user set it (set `--xla_cpu_experimental_ynn_fusion_type=...` yourself to opt out),
and nothing is added for a jaxlib whose flag set was not checked (an unknown flag aborts XLA).
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import MutableMapping

FAST_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
"""Flags `configure_xla_cpu` adds: convolutions stay with XLA's own emitter, not YNNPACK."""

CHECKED_JAXLIB = ((0, 10), (0, 12))
"""jaxlib releases (major, minor), inclusive, on which `FAST_CPU_FLAGS` were checked to exist."""


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - jax always has it today
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def configure_xla_cpu(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    """Append `FAST_CPU_FLAGS` to `XLA_FLAGS` in `environ` (default `os.environ`) and return the
    flags added. Adds nothing for a flag the user already set, for a jaxlib outside
    `CHECKED_JAXLIB`, or once JAX's backends have started (then it warns: the flags would be
    ignored)."""
    env = os.environ if environ is None else environ
    version = _jaxlib_version()
    if version is None or not CHECKED_JAXLIB[0] <= version <= CHECKED_JAXLIB[1]:
        return ()
    current = env.get("XLA_FLAGS", "")
    missing = tuple(f for f in FAST_CPU_FLAGS if f.split("=")[0] not in current)
    if not missing:
        return ()
    if environ is None and _backends_started():
        warnings.warn(
            "diffjax.configure_xla_cpu(): JAX's backends have already started, so XLA_FLAGS can "
            "no longer change; call it before creating any array.",
            stacklevel=2,
        )
        return ()
    env["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return missing
