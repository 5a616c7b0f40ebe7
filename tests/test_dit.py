"""The diffusion transformer (`diffjax.models.dit`): patches and positions, adaLN-Zero, conditioning,
guidance, every sampler, and a tiny training run through the experiment script."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax.models import DiT, DiTConfig, build_model, count_params
from diffjax.models.dit import DiTBlock, patchify, sincos_position_embedding, unpatchify

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
TINY = dict(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, time_features=32)
CONDITIONAL = DiTConfig(**TINY, num_classes=3, prediction="velocity")


def perturbed(net, scale=0.1, seed=1):
    """`net` with its all-zero matrices (the adaLN-Zero modulations and the final Linear) replaced by
    scale·N(0, 1) draws (numpy: no per-shape compilation), so that every path reaches the output."""
    state = nnx.state(net, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype)
              if a.ndim > 1 and not np.any(np.asarray(a)) else a for a in leaves]  # fmt: skip
    nnx.update(net, jax.tree.unflatten(treedef, leaves))
    return net


def make_abstract(cfg: DiTConfig) -> DiT:
    """DiT(cfg) built abstractly (shapes only, nothing computed)."""
    return nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))


def make(cfg: DiTConfig) -> DiT:
    """DiT(cfg) initialised inside one jit (the same parameters as an eager init, compiled once
    instead of one kernel per initialiser and shape)."""
    graphdef = nnx.graphdef(make_abstract(cfg))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(DiT(cfg, rngs=nnx.Rngs(0)))[1])())


def variant(net: DiT, **changes) -> DiT:
    """`net`'s parameters in a network whose config differs only in static fields (dtype, dropout)."""
    return nnx.merge(nnx.graphdef(make_abstract(dataclasses.replace(net.config, **changes))), nnx.state(net))


@nnx.jit
def jitted(net, x, t, y=None):
    """net(x, t, y) as one compiled program (eager calls compile every operation separately)."""
    return net(x, t, y)


def inputs(batch=4, size=8, channels=1, seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, channels))
    return x, jnp.linspace(0.1, 0.9, batch)


def per_example_max(a):
    return np.asarray(jnp.abs(a).reshape(a.shape[0], -1).max(axis=-1))


# -- patches and positions ----------------------------------------------------------------------------


def test_patchify_cuts_row_major_patches_and_unpatchify_inverts_it():
    """Token i·(W/p) + j holds the patch x[i p:(i+1) p, j p:(j+1) p, :] flattened (row, column,
    channel); unpatchify ∘ patchify and patchify ∘ unpatchify are the identity."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 8, 3)).astype(np.float32)  # non-square on purpose
    p = 4
    tokens = np.asarray(patchify(jnp.asarray(x), p))
    assert tokens.shape == (2, 3 * 2, p * p * 3)
    for i in range(3):
        for j in range(2):
            patch = x[:, i * p : (i + 1) * p, j * p : (j + 1) * p]
            np.testing.assert_array_equal(tokens[:, i * 2 + j], patch.reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tokens), p, 12, 8)), x)
    z = rng.standard_normal((2, 6, 48)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(patchify(unpatchify(jnp.asarray(z), p, 12, 8), p)), z)
    with pytest.raises(ValueError, match="must divide"):
        patchify(jnp.asarray(x), 5)
    with pytest.raises(ValueError, match="do not tile"):
        unpatchify(jnp.asarray(z), p, 8, 8)


def test_position_embedding_is_the_2d_sincos_formula():
    """Against the formula written out entry by entry: token (row i, column j), ω_m = 10000^(−m/(D/4)),
    features [sin(j ω), cos(j ω), sin(i ω), cos(i ω)] (MAE/DiT's get_2d_sincos_pos_embed)."""
    dim, grid = 16, 3
    quarter = dim // 4
    expected = np.zeros((grid * grid, dim))
    for i in range(grid):
        for j in range(grid):
            for m in range(quarter):
                w = 10000.0 ** (-m / quarter)
                row = expected[i * grid + j]
                row[m], row[quarter + m] = math.sin(j * w), math.cos(j * w)
                row[2 * quarter + m], row[3 * quarter + m] = math.sin(i * w), math.cos(i * w)
    np.testing.assert_allclose(sincos_position_embedding(dim, grid), expected, rtol=0, atol=1e-12)
    assert len({tuple(np.round(r, 9)) for r in expected}) == grid * grid  # every position distinct


# -- the network --------------------------------------------------------------------------------------


def expected_param_count(cfg: DiTConfig) -> int:
    """Parameters of a DiT written out by hand (so a learned position table or an affine LayerNorm
    would show): patch Linear, time MLP (+ label table), per block qkv, proj, MLP and the 6D-wide
    adaLN Linear, and the final adaLN (2D) and Linear; the interval MLP for second_time."""
    d, m, pc = cfg.hidden_size, int(cfg.mlp_ratio * cfg.hidden_size), cfg.patch_size**2
    f, c_out = cfg.time_features, cfg.out_channels or cfg.in_channels
    time_mlp = f * d + d + d * d + d
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m + m * d + d) + (6 * d * d + 6 * d)
    final = (2 * d * d + 2 * d) + (d * pc * c_out + pc * c_out)
    total = pc * cfg.in_channels * d + d + time_mlp + cfg.depth * block + final
    total += (cfg.num_classes + 1) * d if cfg.num_classes is not None else 0
    total += (cfg.depth // 2) * (2 * d * d + d) if cfg.long_skips else 0  # U-ViT's skip Linears
    total += 9 * c_out * c_out + c_out if cfg.conv_out else 0  # its 3×3 output convolution
    return total + (time_mlp if cfg.second_time else 0)


@pytest.mark.parametrize("changes", [{}, dict(num_classes=10, out_channels=2), dict(second_time=True)])
def test_parameters_are_exactly_the_dit_layers(changes):
    cfg = DiTConfig(**TINY, **changes)
    net = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    assert count_params(net) == expected_param_count(cfg)
    _, state = nnx.split(net)
    assert count_params(state) == count_params(net)  # nothing but parameters (dropout is functional)


@pytest.fixture(scope="module")
def fresh():
    """A freshly initialised class-conditional DiT (3 classes, null class 3)."""
    return make(CONDITIONAL)


@pytest.fixture(scope="module")
def active(fresh):
    """The same network with its zero layers perturbed: every path reaches the output."""
    return perturbed(nnx.clone(fresh))


def test_untrained_output_is_exactly_zero_and_then_depends_on_x_t_and_y(fresh, active):
    """adaLN-Zero gates and the zero final layer: a fresh network outputs exactly 0 with x's shape and
    dtype; once the zero layers are perturbed the output changes with every example's x, t and y."""
    x, t = inputs()
    y = jnp.array([0, 1, 2, 0])
    out = jitted(fresh, x, t, y)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert not np.any(np.asarray(out))
    wide_cfg = dataclasses.replace(CONDITIONAL, out_channels=2)
    wide = jax.eval_shape(lambda x, t, y: DiT(wide_cfg, rngs=nnx.Rngs(0))(x, t, y), x, t, y)
    assert wide.shape == (4, 8, 8, 2) and wide.dtype == jnp.float32
    # one batch (the shape every test here uses): (x, t, y) and then x, t or y changed
    x2, t2, y2 = (jnp.concatenate([a[:1], a[:1], a[:1], a[:1]]) for a in (x, t, y))
    out = jitted(active, x2.at[1].set(x[1]), t2.at[2].set(t[2]), y2.at[3].set(3))
    assert per_example_max(out)[0] > 1e-3
    assert np.all(per_example_max(out[1:] - out[:1]) > 1e-4)


def test_the_position_embedding_reaches_the_output(active):
    """x = 0 gives every token the same patch embedding: only the position embedding tells the 16
    tokens apart, so without it the output's 16 patches would be equal."""
    x, t = inputs()
    out = jitted(active, jnp.zeros_like(x), t, jnp.array([0, 1, 2, 3]))
    patches = np.asarray(patchify(out, 2))  # (4, 16, 4)
    gaps = np.abs(patches[:, :, None] - patches[:, None]).max(axis=-1) + np.eye(16)
    assert gaps.min() > 1e-5


def test_every_block_starts_as_the_identity():
    block = DiTBlock(DiTConfig(**TINY), rngs=nnx.Rngs(0))
    h = jax.random.normal(jax.random.key(1), (2, 16, 32))
    c = jax.random.normal(jax.random.key(2), (2, 32))
    assert bool(jnp.array_equal(nnx.jit(lambda block, h, c: block(h, c))(block, h, c), h))


def test_dtypes_compute_and_parameters(active):
    """Parameters in param_dtype; computation in dtype (bfloat16 stays close to float32); the output
    in x's dtype."""
    half = make_abstract(DiTConfig(**TINY, param_dtype="bfloat16"))
    assert {a.dtype for a in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype("bfloat16")}
    assert {a.dtype for a in jax.tree.leaves(nnx.state(active, nnx.Param))} == {jnp.dtype("float32")}
    x, t = inputs()
    y = jnp.array([0, 1, 2, 3])
    out, out_ref = jitted(variant(active, dtype="bfloat16"), x, t, y), jitted(active, x, t, y)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert 0 < float(jnp.max(jnp.abs(out - out_ref))) < 0.1 * float(jnp.max(jnp.abs(out_ref)))


def test_dropout_is_functional(active):
    """rngs=key turns dropout on (the same key, the same output); rngs=None is evaluation."""
    graphdef, params = nnx.split(variant(active, dropout=0.5))
    apply = jax.jit(lambda params, x, t, y, key: nnx.merge(graphdef, params)(x, t, y, rngs=key))
    x, t = inputs()
    y = jnp.array([0, 1, 2, 3])
    a, b, again = (apply(params, x, t, y, jax.random.key(i)) for i in (1, 2, 1))
    assert bool(jnp.array_equal(a, again)) and float(jnp.max(jnp.abs(a - b))) > 1e-4
    assert float(jnp.max(jnp.abs(jitted(active, x, t, y) - a))) > 1e-4


def test_null_class_labels_and_classifier_free_guidance(active):
    """y = num_classes is the null class (also what y=None means); out-of-range or float labels, and
    labels for an unconditional network, are clear errors; `dj.cfg_model` guides the DiT exactly as
    (1 − w)·D(x, t, ∅) + w·D(x, t, y)."""
    x, t = inputs(2)
    y, null = jnp.array([0, 2]), jnp.array([3, 3])
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\]"):
        active(x, t, jnp.array([0, 4]))
    with pytest.raises(ValueError, match="must be integers"):
        active(x, t, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="without num_classes"):
        make_abstract(DiTConfig(**TINY))(x, t, y)
    guided = dj.cfg_model(active, y, 2.5, 3)
    assert guided.prediction == "velocity"
    both = jitted(active, jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([y, null]))
    cond, uncond = both[:2], both[2:]
    assert np.all(per_example_max(cond - uncond) > 1e-4)
    np.testing.assert_allclose(jitted(active, x, t), uncond, rtol=1e-5, atol=1e-6)  # y=None: null class
    np.testing.assert_allclose(jax.jit(guided)(x, t), -1.5 * uncond + 2.5 * cond, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def velocity_dit():
    """A small DiT (4 tokens, one block) with its zero layers perturbed: a non-trivial velocity."""
    spec = dict(TINY, kind="dit", prediction="velocity", patch_size=4, hidden_size=16, depth=1, num_heads=2)
    return perturbed(build_model(spec, seed=0))


# One solver of each kind (Runge–Kutta, multistep in x0, SDE, diffrax adaptive); the others call the
# network the same way (a model (x, t) -> prediction), so they add compile time and no new check.
REPRESENTATIVE = ("heun", "dpm_solver_pp", "euler_maruyama", "tsit5")


@pytest.mark.parametrize("solver", REPRESENTATIVE)
def test_every_sampler_runs_the_dit(solver, velocity_dit):
    res = dj.sample(solver, velocity_dit, dj.CondOTPath(), jax.random.key(0), (2, 8, 8, 1), 3)
    assert res.samples.shape == (2, 8, 8, 1) and bool(jnp.all(jnp.isfinite(res.samples)))
    assert float(jnp.std(res.samples)) > 0.1


@pytest.mark.parametrize("changes, match", [
    (dict(patch_size=3), "patch_size=3 must divide image_size=8"),
    (dict(num_heads=3), "num_heads=3 must divide hidden_size=32"),
    (dict(hidden_size=18, num_heads=2), "hidden_size=18 must be a multiple of 4"),
    (dict(depth=0), "depth must be an integer >= 1"),
    (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
    (dict(prediction="noise"), "prediction 'noise' must be one of"),
    (dict(widht=3), "invalid config fields"),
])  # fmt: skip
def test_build_model_rejects_bad_configs_clearly(changes, match):
    with pytest.raises(ValueError, match=match):
        build_model(dict(TINY, kind="dit", **changes))


def test_wrong_input_shape_is_a_clear_error():
    net = make_abstract(DiTConfig(**TINY))  # the shape check comes before any computation
    with pytest.raises(ValueError, match=r"x must be \(batch, 8, 8, 1\)"):
        net(jnp.zeros((2, 8, 8, 3)), jnp.zeros(2))

def test_long_skips_and_the_output_convolution_are_u_vits_wiring():
    """long_skips (U-ViT, Bao et al. 2023): for depth 5 the blocks run 0, 1, 2 (middle), then 3 on
    Linear([h, h₁]) and 4 on Linear([h, h₀]) (h_i the output of block i); conv_out adds a 3×3
    convolution of the unpatchified output. Checked against that wiring written out by hand, with
    every zero-initialised layer perturbed so each path reaches the output."""
    cfg = DiTConfig(**{**TINY, "depth": 5}, num_classes=3, long_skips=True, conv_out=True)
    net = perturbed(make(cfg))
    for skip in net.skips:  # away from the pass-through start, so the skip half matters
        skip.kernel.value = skip.kernel.value + 0.1 * jax.random.normal(jax.random.key(3), skip.kernel.shape)
    x, t = inputs()
    y = jnp.array([0, 1, 2, 3])
    c = net.time_embed(t, y)
    h = net.patch_embed(patchify(x, 2)) + jnp.asarray(sincos_position_embedding(32, 4))[None]
    h0 = net.blocks[0](h, c)
    h1 = net.blocks[1](h0, c)
    h2 = net.blocks[2](h1, c)
    h3 = net.blocks[3](net.skips[1](jnp.concatenate([h2, h1], -1)), c)
    h4 = net.blocks[4](net.skips[0](jnp.concatenate([h3, h0], -1)), c)
    out = unpatchify(net.final_layer(h4, c), 2, 8, 8)
    expected = out + net.conv_out(out)
    np.testing.assert_allclose(np.asarray(net(x, t, y)), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert count_params(net) == expected_param_count(cfg)


@pytest.mark.parametrize("depth", [4, 5])
def test_a_dit_with_long_skips_starts_as_the_plain_dit(depth):
    """The skip Linears start as [I; 0] (pass h through), the output convolution at zero: with the
    plain DiT's parameters (perturbed: every path active) the U-ViT variant computes the same
    function; a fresh one outputs exactly zero."""
    plain = perturbed(make(DiTConfig(**{**TINY, "depth": depth})))
    cfg = dataclasses.replace(plain.config, long_skips=True, conv_out=True)
    fresh = make(cfg)
    x, t = inputs()
    assert not np.any(np.asarray(jitted(fresh, x, t)))
    nnx.update(fresh, nnx.state(plain, nnx.Param))  # the shared layers; skips and conv keep their init
    np.testing.assert_allclose(np.asarray(jitted(fresh, x, t)), np.asarray(jitted(plain, x, t)),
                               rtol=1e-6, atol=1e-7)  # fmt: skip



# -- the experiment script ----------------------------------------------------------------------------


def test_the_mnist_dit_config_validates_and_is_the_documented_size():
    from experiments.builders import validate_config
    from experiments.configs import mnist_dit

    cfg = mnist_dit.get_config()
    validate_config(cfg)
    net_cfg = DiTConfig(prediction=cfg.model.prediction, **dict(cfg.model.kwargs))
    assert net_cfg.num_tokens == 49 and expected_param_count(net_cfg) == 1_867_664
    assert "1.87M parameters" in mnist_dit.__doc__


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")  # fmt: skip
def test_a_tiny_mnist_dit_trains_checkpoints_previews_and_reloads(tmp_path):
    """train_and_evaluate with a tiny DiT: runs its steps, writes a checkpoint, a preview grid (an image
    model) and samples.png; `load_model` rebuilds the DiT from the run record."""
    from experiments.configs import mnist_dit
    from experiments.train import train_and_evaluate

    workdir = str(tmp_path / "dit")
    cfg = mnist_dit.get_config()
    cfg.data.data_dir, cfg.data.num_examples = MNIST, 64
    cfg.model.kwargs.update(patch_size=7, hidden_size=16, depth=1, num_heads=2, time_features=16)
    cfg.train.update(num_steps=4, warmup_steps=1, batch_size=16, checkpoint_every=4, log_every=2,
                     sample_every=4)  # fmt: skip
    cfg.sample.update(sampler="euler", num_steps=2, num_samples=4)
    summary = train_and_evaluate(cfg, workdir)
    assert summary["step"] == 4 and np.isfinite(summary["loss"])
    assert os.path.getsize(os.path.join(workdir, "samples.png")) > 0
    assert os.path.getsize(os.path.join(workdir, "samples", "step_0000004.png")) > 0
    assert np.load(os.path.join(workdir, "samples.npz"))["samples"].shape == (4, 28, 28, 1)
    trained = dj.load_model(workdir)
    assert isinstance(trained.model, DiT) and trained.step == 4
    out = jitted(trained.model, jnp.zeros((1, 28, 28, 1)), jnp.array([0.5]))
    assert out.shape == (1, 28, 28, 1) and float(jnp.max(jnp.abs(out))) > 0  # trained: no longer zero
