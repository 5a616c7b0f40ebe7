"""Networks: shapes, conditioning, attention placement, dtypes, functional use under jit and
dropout."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.losses import drop_labels
from diffjax.models import (
    ResidualMLP,
    ResidualMLPConfig,
    UNet,
    UNetConfig,
    build_model,
    count_params,
    fourier_embedding,
    initialise,
    sinusoidal_embedding,
)

# Small but structurally complete: two levels (one downsampling), attention at the second level.
MNIST_SMALL = UNetConfig(
    in_channels=1, image_size=28, channels=16, channel_mults=(1, 2), num_res_blocks=1,
    attention_resolutions=(14,), head_channels=16, num_groups=8,
)
CIFAR_SMALL = dataclasses.replace(
    MNIST_SMALL, in_channels=3, image_size=32, attention_resolutions=(16,)
)


def random_params(abstract_params, seed=1):
    """Parameters drawn on the host with numpy (no RNG kernels to compile): kernels N(0, 1/fan_in),
    norm scales 1 + N(0, 0.1²), biases and embeddings N(0, 0.1²). Unlike a fresh model, whose
    zero-initialised output layers hide how the output depends on t and y, every path is active."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = next(str(k.key) for k in reversed(path) if hasattr(k, "key")), leaf.shape
        z = rng.standard_normal(shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(z / np.sqrt(np.prod(shape[:-1])))
        return jnp.asarray((1.0 if name == "scale" else 0.0) + 0.1 * z)

    return jax.tree_util.tree_map_with_path(draw, abstract_params)


@functools.cache
def perturbed(cfg):
    """(graphdef, params) of UNet(cfg) with `random_params` (cached per config)."""
    graphdef, params = nnx.split(abstract(cfg))
    return graphdef, random_params(params)


def variant(cfg, **changes):
    """(graphdef, params) of a config differing from `cfg` only in static fields (dtype, dropout,
    time embedding, ...): the variant's graphdef with cfg's parameters."""
    return nnx.split(abstract(dataclasses.replace(cfg, **changes)))[0], perturbed(cfg)[1]


def abstract(cfg):
    """UNet(cfg) built abstractly (shapes only, no initialisation cost)."""
    return nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))


def apply_fn(graphdef):
    """The pure, jitted apply the training code uses."""
    return jax.jit(lambda params, x, t, y, key: nnx.merge(graphdef, params)(x, t, y, rngs=key))


def inputs(cfg, batch=2, seed=0):
    shape = (batch, cfg.image_size, cfg.image_size, cfg.in_channels)
    return jax.random.normal(jax.random.key(seed), shape), jnp.linspace(0.1, 0.9, batch)


def max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("cfg", [MNIST_SMALL, CIFAR_SMALL], ids=["28x28x1", "32x32x3"])
def test_unet_output_shape_equals_input_shape_with_and_without_labels(cfg):
    x, t = inputs(cfg)
    graphdef, params = perturbed(dataclasses.replace(cfg, num_classes=10))
    f = apply_fn(graphdef)
    out_labels = f(params, x, t, jnp.array([3, 7]), None)
    out_null = f(params, x, t, None, None)
    out_null_explicit = f(params, x, t, jnp.array([10, 10]), None)
    assert out_labels.shape == out_null.shape == x.shape
    np.testing.assert_array_equal(out_null, out_null_explicit)  # y=None is the null class 10
    assert max_diff(out_labels, out_null) > 1e-3  # the label matters


def test_unet_out_channels_and_zero_initialised_output():
    cfg = UNetConfig(in_channels=1, out_channels=2, image_size=8, channels=8, channel_mults=(1,),
                     num_res_blocks=1, attention_resolutions=(8,), num_groups=4)
    x, t = inputs(cfg)
    model = UNet(cfg, rngs=nnx.Rngs(0))  # the real initialisation
    out = nnx.jit(lambda m: m(x, t))(model)
    assert out.shape == (2, 8, 8, 2)
    np.testing.assert_array_equal(out, 0.0)  # ADM zero init of the output conv
    assert count_params(nnx.state(model, nnx.Param)) == count_params(model)


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_unet_time_embedding_changes_output(kind):
    graphdef, params = variant(MNIST_SMALL, time_embedding=kind)
    x, _ = inputs(MNIST_SMALL)
    f = apply_fn(graphdef)
    a = f(params, x, jnp.array([0.2, 0.2]), None, None)
    b = f(params, x, jnp.array([0.8, 0.8]), None, None)
    assert max_diff(a, b) > 1e-3


def test_unet_attention_only_at_requested_resolution():
    model = abstract(MNIST_SMALL)
    params = nnx.state(model, nnx.Param)
    # levels: 28 (index 0) and 14 (index 1); the up path lists levels from low to high resolution
    assert "qkv" in params["down"][1]["attns"][0] and "proj" in params["down"][1]["attns"][0]
    assert len(model.down[0].attns) == 0 and len(model.up[1].attns) == 0
    assert len(model.up[0].attns) == MNIST_SMALL.num_res_blocks + 1
    assert params["mid_attn"]["qkv"]["kernel"].shape == (32, 96)
    with pytest.raises(ValueError, match="match no level"):
        dataclasses.replace(MNIST_SMALL, attention_resolutions=(7,))


def test_unet_odd_level_sizes_upsample_back_to_the_skip_size():
    cfg = dataclasses.replace(MNIST_SMALL, channel_mults=(1, 1, 1, 1), attention_resolutions=(4,))
    assert cfg.resolutions == (28, 14, 7, 4)  # 7 → 4 down, 4 → 7 up
    graphdef, params = nnx.split(abstract(cfg))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    out = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x, jnp.zeros(2)), params, x)
    assert out.shape == x.shape


def test_unet_prediction_stored_and_validated():
    assert abstract(dataclasses.replace(MNIST_SMALL, prediction="v")).prediction == "v"
    with pytest.raises(ValueError, match="prediction"):
        dataclasses.replace(MNIST_SMALL, prediction="noise")


def test_unet_bad_inputs_raise():
    graphdef, params = perturbed(MNIST_SMALL)
    model = nnx.merge(graphdef, params)
    x, t = inputs(MNIST_SMALL)
    with pytest.raises(ValueError, match="channels-last"):
        model(jnp.moveaxis(x, -1, 1), t)
    with pytest.raises(ValueError, match="without num_classes"):
        model(x, t, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        dataclasses.replace(MNIST_SMALL, channels=12)
    cond = nnx.merge(*perturbed(dataclasses.replace(MNIST_SMALL, num_classes=10)))
    with pytest.raises(ValueError, match="null class"):
        cond(x, t, jnp.array([1, 11]))


def test_unet_bf16_compute_matches_float32():
    graphdef16, params = variant(MNIST_SMALL, dtype="bfloat16")
    graphdef32, _ = perturbed(MNIST_SMALL)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))  # param_dtype
    x, t = inputs(MNIST_SMALL)
    out16 = apply_fn(graphdef16)(params, x, t, None, None)
    out32 = apply_fn(graphdef32)(params, x, t, None, None)
    assert out16.shape == x.shape and out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 0.002); a dozen layers of rounding give
    # a relative error of order 1e-2, while 0 would mean the bf16 path was never taken.
    assert 1e-4 < rel < 0.05, rel


def test_jit_split_merge_matches_stateful_module_call():
    graphdef, params = perturbed(dataclasses.replace(MNIST_SMALL, num_classes=10))
    model = nnx.merge(graphdef, params)  # a stateful Module again
    x, t = inputs(MNIST_SMALL)
    y = jnp.array([0, 2])
    stateful = nnx.jit(lambda m: m(x, t, y))(model)
    np.testing.assert_allclose(apply_fn(graphdef)(params, x, t, y, None), stateful, atol=1e-5)


def test_dropout_uses_the_key_in_training_and_is_off_without_one():
    graphdef, params = variant(MNIST_SMALL, dropout=0.5)
    graphdef0, _ = perturbed(MNIST_SMALL)  # same parameters, no dropout
    f, f0 = apply_fn(graphdef), apply_fn(graphdef0)
    x, t = inputs(MNIST_SMALL)
    a = f(params, x, t, None, jax.random.key(0))
    assert max_diff(a, f(params, x, t, None, jax.random.key(1))) > 1e-3
    np.testing.assert_array_equal(a, f(params, x, t, None, jax.random.key(0)))
    reference = f0(params, x, t, None, None)
    np.testing.assert_array_equal(f(params, x, t, None, None), reference)  # eval: no dropout
    assert max_diff(a, reference) > 1e-3
    # an nnx.Rngs works as well (its 'dropout' stream)
    model = nnx.merge(graphdef, params)
    out = nnx.jit(lambda m, r: m(x, t, rngs=r))(model, nnx.Rngs(dropout=5))
    assert max_diff(out, reference) > 1e-3


def diffusers_unet2d_param_count(boc=(32, 64, 128), layers=2, temb=128, cin=1):
    """Closed-form parameter count of diffusers' UNet2DModel with attention only at the lowest
    resolution (AttnDownBlock2D / mid / AttnUpBlock2D), default 'positional' time embedding."""
    conv = lambda k, a, b: k * k * a * b + b  # noqa: E731
    lin = lambda a, b: a * b + b  # noqa: E731
    res = lambda a, b: 2 * a + conv(3, a, b) + lin(temb, b) + 2 * b + conv(3, b, b) + (  # noqa: E731
        conv(1, a, b) if a != b else 0
    )
    attn = lambda c: 2 * c + 4 * lin(c, c)  # noqa: E731
    n, out, last = conv(3, cin, boc[0]) + lin(boc[0], temb) + lin(temb, temb), boc[0], len(boc) - 1
    for i, c in enumerate(boc):
        for j in range(layers):
            n += res(out if j == 0 else c, c) + (attn(c) if i == last else 0)
            out = c
        n += conv(3, c, c) if i < last else 0
    n += 2 * res(boc[-1], boc[-1]) + attn(boc[-1])
    prev, rev = boc[-1], boc[::-1]
    for i, c in enumerate(rev):
        for j in range(layers + 1):
            skip = rev[min(i + 1, last)] if j == layers else c
            n += res((prev if j == 0 else c) + skip, c) + (attn(c) if i == 0 else 0)
        n += conv(3, c, c) if i < last else 0
        prev = c
    return n + 2 * boc[0] + conv(3, boc[0], cin)


def test_mnist_benchmark_config_matches_diffusers_size():
    cfg = UNetConfig(
        in_channels=1, image_size=28, channels=32, channel_mults=(1, 2, 4), num_res_blocks=2,
        attention_resolutions=(7,), num_groups=8, scale_shift=False,
    )
    assert cfg.resolutions == (28, 14, 7)
    model = abstract(cfg)
    ref = diffusers_unet2d_param_count()
    assert count_params(model) == ref == 3_939_393  # same layers, same count
    scale_shift = abstract(dataclasses.replace(cfg, scale_shift=True))
    assert abs(count_params(scale_shift) / ref - 1) < 0.10
    graphdef, params = nnx.split(model)
    assert count_params(params) == count_params(model)
    out = jax.eval_shape(lambda p, x, t: nnx.merge(graphdef, p)(x, t), params,
                         jax.ShapeDtypeStruct((128, 28, 28, 1), jnp.float32),
                         jax.ShapeDtypeStruct((128,), jnp.float32))
    assert out.shape == (128, 28, 28, 1)


def test_residual_mlp_shapes_conditioning_and_dropout():
    cfg = ResidualMLPConfig(dim=3, width=32, depth=2, num_classes=4, dropout=0.3, prediction="velocity")
    model = ResidualMLP(cfg, rngs=nnx.Rngs(0))
    assert model.prediction == "velocity"
    graphdef, params = nnx.split(model)
    f = jax.jit(lambda p, x, t, y, key: nnx.merge(graphdef, p)(x, t, y, rngs=key))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    t, t2 = jnp.full((5,), 0.3), jnp.full((5,), 0.6)
    y = jnp.arange(5) % 4
    out = f(params, x, t, y, None)
    assert out.shape == (5, 3) and out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - f(params, x, t2, y, None)))) > 1e-3
    assert float(jnp.max(jnp.abs(out - f(params, x, t, None, None)))) > 1e-3
    a, b = f(params, x, t, y, jax.random.key(0)), f(params, x, t, y, jax.random.key(1))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    np.testing.assert_allclose(out, nnx.jit(lambda m: m(x, t, y))(model), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        model(jnp.ones((5, 2)), t)
    default = ResidualMLP(ResidualMLPConfig(dim=2, width=16), rngs=nnx.Rngs(0))
    assert nnx.jit(lambda m: m(jnp.ones((4, 2)), 0.5))(default).shape == (4, 2)  # scalar t


def test_time_embeddings_closed_form():
    t = jnp.array([0.0, 3.0])
    emb = sinusoidal_embedding(t, 8)
    # ω_j = 10000^(−j/4): at t=0 the cosines are 1 and the sines 0; at t=3, column 0 is cos(3).
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(emb[1, [0, 4]], [np.cos(3.0), np.sin(3.0)], rtol=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (2, 7)
    four = fourier_embedding(t, 16)
    assert four.shape == (2, 16)
    np.testing.assert_allclose(jnp.sum(four**2, axis=-1), 8.0, rtol=1e-5)  # cos² + sin² per pair


def test_drop_labels_rate():
    n, p = 20_000, 0.2
    y = drop_labels(jax.random.key(0), jnp.zeros(n, jnp.int32), p, null_label=10)
    frac = float(jnp.mean(y == 10))
    assert set(np.unique(np.asarray(y))) <= {0, 10}
    assert y.dtype == jnp.int32  # the labels' own dtype
    assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / n)  # 5 binomial standard errors


def test_build_model_builds_the_configured_network_from_a_spec():
    spec = {"kind": "mlp", "dim": 3, "width": 16, "depth": 1, "prediction": "velocity"}
    model = build_model(spec, seed=0)
    assert isinstance(model, ResidualMLP) and model.prediction == "velocity"
    assert model.config == ResidualMLPConfig(dim=3, width=16, depth=1, prediction="velocity")
    leaves = [jax.tree.leaves(nnx.state(m)) for m in (model, build_model(spec, 0), build_model(spec, 1))]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True))  # same seed
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[2], strict=True))
    unet = nnx.eval_shape(lambda: build_model({"kind": "unet", **dataclasses.asdict(MNIST_SMALL)}))
    assert isinstance(unet, UNet) and count_params(unet) == count_params(abstract(MNIST_SMALL))
    with pytest.raises(ValueError, match="Unknown model kind"):
        build_model({"kind": "transformer"})
    with pytest.raises(ValueError, match="invalid config fields"):
        build_model({"kind": "mlp", "output": "eps"})


def test_initialise_computes_the_eager_values_bit_for_bit_in_one_compiled_program():
    """`initialise(make)` (what `build_model` uses) gives bit for bit the parameters eager construction
    gives (its CPU program is compiled at optimisation level 1), the same values again for the same
    `make`, and a module that runs; one program is compiled for the whole network (counted
    with JAX's compile-time event), not one per parameter shape; under `nnx.eval_shape` (how a
    checkpoint is restored) nothing is compiled."""
    from jax import monitoring

    cfg = dataclasses.replace(MNIST_SMALL, channels=8, channel_mults=(1,), attention_resolutions=(),
                              num_groups=4)

    def make():
        return UNet(cfg, rngs=nnx.Rngs(3))

    eager = nnx.state(make(), nnx.Param)
    compiles = []

    def listen(event, _secs, **_):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.clear_caches()
    monitoring.register_event_duration_secs_listener(listen)
    try:
        abstract = nnx.eval_shape(lambda: initialise(make))  # restoring a checkpoint: shapes only
        assert not compiles, compiles
        model = initialise(make)
    finally:
        monitoring.unregister_event_duration_listener(listen)
    count = len(compiles)
    assert jax.tree.structure(nnx.state(abstract, nnx.Param)) == jax.tree.structure(eager)
    fast, again = nnx.state(model, nnx.Param), nnx.state(initialise(make), nnx.Param)
    assert jax.tree.structure(fast) == jax.tree.structure(eager)
    for a, b, c in zip(jax.tree.leaves(fast), jax.tree.leaves(eager), jax.tree.leaves(again), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert count == 1, compiles
    x, t = jnp.ones((2, 28, 28, 1)), jnp.array([0.2, 0.7])
    assert model(x, t).shape == (2, 28, 28, 1)
    rngs = nnx.Rngs(0)  # made outside `make`: traced state it cannot update, refused with a hint
    with pytest.raises(ValueError, match="create its nnx.Rngs inside"):
        initialise(lambda: UNet(cfg, rngs=rngs))
