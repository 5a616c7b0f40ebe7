"""Networks with a second time input (`second_time=True`): net(x, t, y, s=s) conditions on (t, t − s)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.models import DiT, DiTConfig, ResidualMLP, ResidualMLPConfig, UNet, UNetConfig, build_model

MLP = dict(dim=3, width=16, depth=2)
UNET = dict(in_channels=1, image_size=8, channels=8, channel_mults=(1,), num_res_blocks=1,
            attention_resolutions=(), head_channels=8, num_groups=4)  # fmt: skip
DIT = dict(in_channels=1, image_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, time_features=16)
BASE = {"mlp": MLP, "unet": UNET, "dit": DIT}
NETWORKS = {"mlp": (ResidualMLP, ResidualMLPConfig), "unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig)}


def _param_paths(module) -> set[tuple]:
    return {path for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _inputs(kind, batch=4):
    shape = (batch, 3) if kind == "mlp" else (batch, 8, 8, 1)
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.linspace(0.2, 0.9, batch)
    return x, t


@pytest.mark.parametrize("kind", ["mlp", "unet", "dit"])
def test_second_time_shapes_and_dependence_on_s(kind):
    """The output has x's shape and dtype and changes with s (the interval embedding reaches the
    output); s = t is a valid input (the instantaneous velocity); a scalar s broadcasts."""
    spec = dict(BASE[kind], kind=kind, second_time=True)
    net = build_model(spec, seed=0)
    if kind != "mlp":  # the image networks' last layers (and the DiT's adaLN) are zero-initialised
        state = nnx.state(net, nnx.Param)
        leaves, treedef = jax.tree.flatten(state)
        rng = np.random.default_rng(1)  # numpy: no per-shape compilation
        leaves = [jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype)
                  if a.ndim > 1 and not np.any(np.asarray(a)) else a for a in leaves]  # fmt: skip
        nnx.update(net, jax.tree.unflatten(treedef, leaves))
    x, t = _inputs(kind)
    b = x.shape[0]  # one call: the same x and t with s = t/2, s = t and s = 0.1
    x3, t3 = jnp.concatenate([x, x, x]), jnp.tile(t, 3)
    out = net(x3, t3, s=jnp.concatenate([0.5 * t, t, jnp.full(b, 0.1)]))
    out_a, out_b, out_c = out[:b], out[b : 2 * b], out[2 * b :]
    assert out.shape == (3 * b, *x.shape[1:]) and out.dtype == x.dtype
    np.testing.assert_allclose(net(x3, t3, s=0.1)[2 * b :], out_c, rtol=1e-5, atol=1e-6)  # scalar s
    assert bool(jnp.all(jnp.isfinite(out_a)))
    diff = jnp.abs(out_a - out_b).reshape(x.shape[0], -1).max(axis=-1)
    assert bool(jnp.all(diff > 1e-4)), diff  # every example sees its own s
    assert not bool(jnp.allclose(out_a, out_c))


@pytest.mark.parametrize("kind", ["mlp", "unet", "dit"])
def test_second_time_errors(kind):
    """s missing for a two-time network, or given to a one-time network: a clear ValueError."""
    base = BASE[kind]
    one = build_model(dict(base, kind=kind), seed=0)
    two = build_model(dict(base, kind=kind, second_time=True), seed=0)
    x, t = _inputs(kind)
    with pytest.raises(ValueError, match="second_time=True.*needs the target time s"):
        two(x, t)
    with pytest.raises(ValueError, match="second_time=False"):
        one(x, t, s=t)
    with pytest.raises(ValueError, match="t must be a scalar or of shape"):
        two(x, t, s=jnp.zeros(x.shape[0] + 1))


@pytest.mark.parametrize("kind", ["mlp", "unet", "dit"])
def test_one_time_networks_unchanged(kind):
    """second_time=False (the default) builds exactly the old network: same parameter paths, and
    the same values from the same seed (old checkpoints load); second_time=True only adds the
    `interval_embed` subtree, and the old call net(x, t) is unchanged."""
    module, config = NETWORKS[kind]
    base = BASE[kind]
    assert config().second_time is False
    one = module(config(**base), rngs=nnx.Rngs(0))
    two = module(config(**base, second_time=True), rngs=nnx.Rngs(0))
    paths_one, paths_two = _param_paths(one), _param_paths(two)
    assert not any("interval_embed" in map(str, p) for p in paths_one)
    extra = paths_two - paths_one
    assert paths_one < paths_two and extra and all(p[0] == "interval_embed" for p in extra)
    # the old parameter structure, written down before the option existed (test_models' shapes)
    expected_top = {
        "mlp": {"time_embed", "linear_in", "blocks", "norm_out", "linear_out"},
        "unet": {"time_embed", "conv_in", "down", "mid1", "mid_attn", "mid2", "up", "norm_out", "conv_out"},
        "dit": {"time_embed", "patch_embed", "blocks", "final_layer"},
    }[kind]
    assert {p[0] for p in paths_one} == expected_top
    x, t = _inputs(kind)
    again = module(config(**base), rngs=nnx.Rngs(0))
    assert bool(jnp.array_equal(one(x, t), again(x, t)))
