"""The FID Inception network: weight-file errors, the .npz round trip, the torch resize convention,
exact parity with pytorch-fid on random weights (when torch and pytorch-fid are installed), and
`python -m experiments.fid` end to end.

The real FID weights are not available offline, so every test uses random weights that keep
activations O(1) (He-normal convs) and randomise all BatchNorm parameters and running statistics
(running variances log-uniform in [0.02, 2]), so that a wrong name mapping, layout, ε (1e-3 vs 1e-5)
or pooling variant changes the features by O(1) (measured: wrong ε 1.2, `count_include_pad=True` 0.5,
avg instead of max pool in Mixed_7c 2.7, on features of scale ~12) instead of by rounding.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from flax import nnx

from diffjax.evaluation.inception import (
    FID_WEIGHTS_URL,
    inception_extractor,
    inception_from_state_dict,
    inception_param_shapes,
    inception_state_dict,
    load_inception_params,
    preprocess,
    resize_bilinear,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from experiments.convert_inception_weights import convert  # noqa: E402
from experiments.fid import load_images  # noqa: E402

PTH = os.path.basename(FID_WEIGHTS_URL)  # pt_inception-2015-12-05-6726825d.pth


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A pytorch-fid-named state dict with random weights and BatchNorm statistics (see module doc)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in inception_param_shapes().items():
        if name.endswith("conv.weight"):
            out[name] = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        elif name.endswith("running_var"):
            out[name] = np.exp(rng.uniform(np.log(0.02), np.log(2.0), shape))
        elif name.endswith(("running_mean", "bn.bias")):
            out[name] = rng.normal(0, 0.2, shape)
        else:  # bn.weight = √var · U(0.5, 1.5): per-channel gain O(1) whatever the variance
            out[name] = rng.uniform(0.5, 1.5, shape)
    for name in out:
        if name.endswith("bn.weight"):
            out[name] = out[name] * np.sqrt(out[name.replace("bn.weight", "bn.running_var")])
    return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random weights saved as pytorch-fid's checkpoint would be converted (with its unused extras)."""
    sd = random_state_dict(0)
    extras = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32),
              "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)}  # fmt: skip
    path = str(tmp_path_factory.mktemp("inception") / "weights.npz")
    np.savez(path, **sd, **extras)
    return path, sd


def images(seed, n, h, w, c):
    return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, c)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------


def test_missing_weights_say_where_to_get_them(tmp_path):
    path = str(tmp_path / "nope.npz")
    for call in (load_inception_params, inception_extractor):
        with pytest.raises(FileNotFoundError) as err:
            call(path)
        msg = str(err.value)
        assert PTH in msg and FID_WEIGHTS_URL in msg and "convert_inception_weights.py" in msg and path in msg


def test_bad_weight_files_name_the_problem(tmp_path, weights_file):
    _, sd = weights_file
    cases = {
        "missing keys [Mixed_6c.branch7x7_2.bn.running_var]":
            {k: v for k, v in sd.items() if k != "Mixed_6c.branch7x7_2.bn.running_var"},
        "unexpected keys [AuxLogits.conv0.conv.weight]": {**sd, "AuxLogits.conv0.conv.weight": np.zeros(3)},
        "mis-shaped keys [Mixed_7c.branch_pool.conv.weight: (192, 2048, 3, 3) (expected (192, 2048, 1, 1))]":
            {**sd, "Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 3, 3), np.float32)},
    }  # fmt: skip
    for expected, arrays in cases.items():
        path = str(tmp_path / "w.npz")
        np.savez(path, **arrays)
        with pytest.raises(ValueError) as err:
            load_inception_params(path)
        assert expected in str(err.value) and PTH in str(err.value)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_inception_params(str(tmp_path / "garbage.npz"))


def test_npz_round_trip_gives_identical_features(weights_file):
    path, sd = weights_file
    in_memory = inception_from_state_dict(sd)
    loaded = load_inception_params(path)
    assert all(np.array_equal(v, sd[k]) for k, v in inception_state_dict(loaded).items())
    assert len(inception_state_dict(loaded)) == len(sd) == 470  # 94 BasicConv2d × 5 arrays
    x = images(1, 3, 32, 32, 3)
    f = inception_extractor(loaded, batch_size=2)(x)  # batches of 2, the last one padded
    assert f.shape == (3, 2048) and f.dtype == np.float32 and np.all(np.isfinite(f))
    assert f.std() > 0.1  # O(1) features, not collapsed by the random weights
    np.testing.assert_array_equal(f[:2], inception_extractor(in_memory, batch_size=2)(x[:2]))
    # grayscale is repeated to RGB, so (N, H, W, 1) and its 3-channel copy give the same features
    g = images(2, 2, 28, 28, 1)
    np.testing.assert_array_equal(inception_extractor(loaded, batch_size=2)(g),
                                  inception_extractor(loaded, batch_size=2)(np.repeat(g, 3, -1)))  # fmt: skip
    with pytest.raises(ValueError, match="C in"):
        inception_extractor(loaded)(np.zeros((2, 32, 32, 2)))


# --------------------------------------------------------------------------------------------------
# Resize convention
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_in", [7, 28, 32, 512])
def test_resize_is_torch_half_pixel_bilinear_on_a_ramp(n_in):
    """Linear interpolation reproduces a ramp x[j] = j, so the output is the source coordinate
    itself: torch's align_corners=False convention s = (i + ½)·n_in/299 − ½, clamped to [0, n_in − 1]
    (align_corners=True, or no clamping at the edges, is off by up to half a pixel)."""
    ramp = jnp.broadcast_to(jnp.arange(n_in, dtype=jnp.float32)[None, :, None, None], (1, n_in, 5, 1))
    out = np.asarray(resize_bilinear(ramp, (299, 7)))
    expected = np.clip((np.arange(299) + 0.5) * n_in / 299 - 0.5, 0, n_in - 1)
    np.testing.assert_allclose(out[0, :, 3, 0], expected, rtol=0, atol=4 * n_in * 2**-24)
    assert np.all(out[0, :, 0, 0] == out[0, :, 6, 0])  # constant along the other axis


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)])
def test_resize_matches_jax_image_resize_when_upsampling(shape):
    """For upsampling, torch's bilinear and `jax.image.resize` coincide (both half-pixel, edge
    clamped; antialiasing only acts when shrinking): equal up to float32 rounding of values in [−1, 1]."""
    x = jnp.asarray(images(3, *shape))
    ours = np.asarray(resize_bilinear(x, (299, 299)))
    ref = np.asarray(jax.image.resize(x, (shape[0], 299, 299, shape[3]), "bilinear"))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=4 * 2**-24)
    assert preprocess(x).shape == (shape[0], 299, 299, 3)


# --------------------------------------------------------------------------------------------------
# Parity with pytorch-fid
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_fid(tmp_path_factory):
    """pytorch-fid's own FID InceptionV3 (pool3 block) with random weights, built without the weight
    download, and the .npz its Inception3 state dict converts to."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_fid")
    try:
        from pytorch_fid import inception as pf
    except Exception as err:  # e.g. a torchvision build that does not match torch
        pytest.skip(f"pytorch_fid.inception cannot be imported: {err!r}")
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(1).items()}
    template = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    random_sd = {k: sd.get(k, v) for k, v in template.items()}  # fc, num_batches_tracked: kept as built
    built = []

    def fid_inception_v3():
        inception = build()
        built.append(inception)
        return inception

    build = pf.fid_inception_v3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "load_state_dict_from_url", lambda *a, **k: random_sd)  # strict load below
        mp.setattr(pf, "fid_inception_v3", fid_inception_v3)
        net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    folder = tmp_path_factory.mktemp("torch_fid")
    pth, path = str(folder / PTH), str(folder / "converted.npz")
    torch.save(built[0].state_dict(), pth)  # what the real checkpoint holds: Inception3's state dict
    arrays = convert(pth, path)  # the converter: .pth → checked .npz
    assert {"fc.weight", "Mixed_7c.branch_pool.bn.num_batches_tracked"} <= set(arrays)

    def features(x, dtype):
        """pytorch-fid's pipeline: NCHW in [0, 1] (grayscale as RGB) → resize → 2x − 1 → pool3."""
        dtype = getattr(torch, dtype)
        t = torch.from_numpy(np.repeat(x, 3 // x.shape[-1], -1)).permute(0, 3, 1, 2).to(dtype)
        with torch.no_grad():
            return net.to(dtype)((t + 1) / 2)[0][:, :, 0, 0].double().numpy()

    return torch, features, path


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)])
def test_pool3_features_match_pytorch_fid(torch_fid, shape):
    """float64: identical up to rounding (|Δ| ≤ 1e-10·max|f|; measured ~1e-15), which pins the
    topology, names, layouts, ε and pooling variants. float32: both implementations carry rounding
    from ~100 conv layers, each a dot product of K ≤ 4032 terms with relative error ≲ √K·2⁻²⁴ ≈ 4e-6,
    growing like √depth (~20 sequential layers) to ~2e-5; the tolerance 1e-4·max|f| leaves 5× margin
    (measured ~3e-7) and is 4 orders of magnitude below the O(1) changes of a structural error."""
    _, features, path = torch_fid
    model = load_inception_params(path)
    x = images(4, *shape)
    ref = features(x, "float64")
    scale = np.abs(ref).max()
    assert scale > 1 and np.all(np.isfinite(ref))
    f32 = inception_extractor(model, batch_size=2)(x)
    assert np.abs(f32 - ref).max() <= 1e-4 * scale
    assert np.abs(features(x, "float32") - ref).max() <= 1e-4 * scale  # torch itself, same bound
    graphdef, state = nnx.split(model)
    with x64():
        f64 = jax.jit(lambda s, y: nnx.merge(graphdef, s)(y))(state, jnp.asarray(x, jnp.float64))
        assert f64.dtype == jnp.float64
        assert np.abs(np.asarray(f64) - ref).max() <= 1e-10 * scale


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1), (1, 40, 24, 3), (1, 512, 320, 3)])
def test_resize_matches_torch_interpolate(shape):
    """torch `F.interpolate(bilinear, align_corners=False)` to 299×299, upsampling and downsampling:
    the weights agree bit for bit, the sums to a couple of float32 ulps of values in [−1, 1]."""
    torch = pytest.importorskip("torch")
    x = images(5, *shape)
    t = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                        mode="bilinear", align_corners=False).permute(0, 2, 3, 1)  # fmt: skip
    np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), (299, 299))), t.numpy(),
                               rtol=0, atol=4 * 2**-24)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# python -m experiments.fid
# --------------------------------------------------------------------------------------------------


def test_fid_script_end_to_end(tmp_path, weights_file):
    weights, _ = weights_file
    a = images(6, 4, 32, 32, 3)
    b = np.clip(a + 0.5, -1, 1)  # brighter copies
    np.savez(tmp_path / "a.npz", samples=a)
    np.savez(tmp_path / "b.npz", images=b)

    def fid(reference):
        proc = subprocess.run([sys.executable, "-m", "experiments.fid",
                               "--samples", str(tmp_path / "a.npz"), "--reference", str(reference),
                               "--inception_weights", weights, "--batch_size", "4"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        return float(proc.stdout.split("FID ")[1].split()[0])

    # (one BLAS thread: a threaded 2048×2048 eigh is ~15× slower on a busy 2-core machine)
    same, shifted = fid(tmp_path / "a.npz"), fid(tmp_path / "b.npz")
    # identical sets: only the rounding of the eigendecompositions of rank-3 2048×2048 covariances
    # (~√ε·λ_max per null eigenvalue, ≲ 1e-4·tr Σ in all), far below the brightness shift's FID
    assert abs(same) <= 1e-3 * shifted and shifted > 1.0


def test_fid_script_rejects_bad_image_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_images(str(tmp_path / "missing.npz"))
    cases = {
        "no array under samples or images": dict(x=np.zeros((4, 8, 8, 3))),
        "channels first": dict(samples=np.zeros((4, 3, 8, 8))),
        "at least 2": dict(samples=np.zeros((1, 8, 8, 3))),
        "scaled to [-1, 1]": dict(samples=np.full((4, 8, 8, 3), 255.0)),
    }
    for message, arrays in cases.items():
        np.savez(tmp_path / "x.npz", **arrays)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_images(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "u8.npz", images=np.array([[[[0, 128, 255]]]] * 2, np.uint8))
    np.testing.assert_allclose(load_images(str(tmp_path / "u8.npz"))[0, 0, 0], [-1, 128 / 127.5 - 1, 1],
                               rtol=0, atol=2**-23)  # fmt: skip
