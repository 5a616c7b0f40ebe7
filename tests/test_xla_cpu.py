"""`configure_xla_cpu`: which flags it adds when, and that they change no numbers."""

import json
import os
import subprocess
import sys

import pytest

from diffjax import xla_cpu
from diffjax.xla_cpu import FAST_CPU_FLAGS, configure_xla_cpu

FLAG_NAME = FAST_CPU_FLAGS[0].split("=")[0]


def test_adds_the_flags_to_an_environment_without_them():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert configure_xla_cpu(env) == FAST_CPU_FLAGS
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *FAST_CPU_FLAGS]
    assert configure_xla_cpu(env) == ()  # idempotent
    empty = {}
    configure_xla_cpu(empty)
    assert empty["XLA_FLAGS"] == " ".join(FAST_CPU_FLAGS)


def test_a_flag_the_user_set_is_left_alone():
    env = {"XLA_FLAGS": f"{FLAG_NAME}=individual_convolution"}
    assert configure_xla_cpu(env) == ()
    assert env["XLA_FLAGS"] == f"{FLAG_NAME}=individual_convolution"


@pytest.mark.parametrize("version", [None, (0, 9), (0, 13), (1, 0)])
def test_nothing_is_added_for_an_unchecked_jaxlib(monkeypatch, version):
    """An unknown flag in XLA_FLAGS aborts XLA: only releases whose flags were checked get them."""
    monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: version)
    env = {}
    assert configure_xla_cpu(env) == ()
    assert env == {}


def test_too_late_in_a_started_process_warns_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(xla_cpu, "_backends_started", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(UserWarning, match="already started"):
        assert configure_xla_cpu() == ()
    assert os.environ["XLA_FLAGS"] == ""


_FORWARD_AND_GRADIENT = """
import json, jax, jax.flatten_util, jax.numpy as jnp, numpy as np
from flax import nnx
from diffjax.models import UNet, UNetConfig, initialise
jax.config.update("jax_platforms", "cpu")
cfg = UNetConfig(in_channels=1, image_size=8, channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), num_groups=4)
model = initialise(lambda: UNet(cfg, rngs=nnx.Rngs(0)))
graphdef, params = nnx.split(model)
def perturb(p):  # one compiled program, not one per parameter shape
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    return unravel(flat + 0.05 * jax.random.normal(jax.random.key(1), flat.shape))
params = jax.jit(perturb)(params)
x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
t = jnp.linspace(0.1, 0.9, 4)
def loss(p):
    return jnp.mean(nnx.merge(graphdef, p)(x, t) ** 2)
value, grads = jax.jit(jax.value_and_grad(loss))(params)
flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
print(json.dumps({"loss": float(value), "grad": flat.tolist()}))
"""


def _run(xla_flags: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _FORWARD_AND_GRADIENT], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(xla_cpu._jaxlib_version() is None
                    or not xla_cpu.CHECKED_JAXLIB[0] <= xla_cpu._jaxlib_version()
                    <= xla_cpu.CHECKED_JAXLIB[1], reason="flags not checked for this jaxlib")  # fmt: skip
def test_the_flags_are_accepted_and_change_no_numbers_beyond_float_rounding():
    """The same U-Net loss and gradient (with perturbed, non-zero weights) under XLA's defaults and
    under `FAST_CPU_FLAGS` (a process each; an unknown flag would abort it). Only the convolution
    kernels differ, so the results agree to float32 rounding accumulated over a few dozen layers:
    relative 1e-4 on the gradient's norm-scaled maximum difference."""
    import numpy as np

    default, fast = _run(""), _run(" ".join(FAST_CPU_FLAGS))
    assert fast["loss"] == pytest.approx(default["loss"], rel=1e-5)
    g0, g1 = np.asarray(default["grad"]), np.asarray(fast["grad"])
    assert np.max(np.abs(g1 - g0)) <= 1e-4 * np.max(np.abs(g0))
