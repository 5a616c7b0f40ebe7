"""The FID Inception network: InceptionV3 pool3 features (2048-d), the features behind FID.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium") is the Fréchet distance between Gaussian fits of the 2048-d "pool3" activations of
the TensorFlow Inception graph `inception-2015-12-05`. This module is that network in Flax NNX, as
ported to PyTorch by pytorch-fid (`pytorch_fid.inception.fid_inception_v3`): torchvision's
Inception3 topology (no auxiliary head) with the FID block variants

* Mixed_5b–5d, 6b–6e, 7b: the branch-pool average pool excludes the zero padding
  (TensorFlow's convention; `count_include_pad=False`);
* Mixed_7c: the branch pool is a 3×3 *max* pool (a quirk of the TF graph);
* every convolution is BasicConv2d = conv (no bias) → BatchNorm (ε = 1e-3, running statistics)
  → ReLU; the output is the spatial mean of Mixed_7c (adaptive average pool) → (N, 2048).

Convolutions and the resize run at `Precision.HIGHEST` (true float32 on GPU/TPU too, not TF32 or
bfloat16 passes), so features do not depend on the backend beyond float32 rounding.

Preprocessing follows pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: images
in [−1, 1] (grayscale repeated to 3 channels) are resized to 299×299 with bilinear interpolation in
torch's `F.interpolate(mode='bilinear', align_corners=False)` convention (half-pixel centres, no
antialiasing, edge clamping), which for [0, 1] inputs rescaled afterwards by 2x − 1 is the same map.

Weights are not bundled (no network access is assumed): download pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` and convert it with `experiments/convert_inception_weights.py`
to an `.npz` keyed by the PyTorch state-dict names (`Conv2d_1a_3x3.conv.weight`, `….bn.running_mean`,
…; conv weights in PyTorch's (O, I, kh, kw) layout). Parity with pytorch-fid is tested on random
weights in tests/test_inception.py.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax.evaluation.batching import map_batches

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
INPUT_SIZE = 299
FEATURE_DIM = 2048
# Keys in the pytorch-fid checkpoint that the pool3 features do not use.
_IGNORED_KEYS = ("fc.weight", "fc.bias")
_IGNORED_SUFFIX = ".num_batches_tracked"


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


class BasicConv2d(nnx.Module):
    """conv (no bias) → BatchNorm(ε = 1e-3, running statistics) → ReLU, on NHWC."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, *, rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(cin, cout, kernel, strides=stride, padding=((ph, ph), (pw, pw)),
                             use_bias=False, precision=jax.lax.Precision.HIGHEST, rngs=rngs)  # fmt: skip
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    """3×3 stride-1 average pool over the unpadded neighbours (TF / `count_include_pad=False`)."""
    return nnx.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int = 1):
    """3×3 max pool: stride 1 with 1-padding (−∞ pad), or stride 2 with no padding."""
    pad = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nnx.max_pool(x, (3, 3), (stride, stride), padding=pad)


class InceptionA(nnx.Module):
    """Mixed_5b–5d (FID variant): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1 → 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (grid reduction 35→17): 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b–6e (FID variant): factorised 7×7 branches (1×7, 7×1) with c7 channels → 768."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):  # fmt: skip
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (grid reduction 17→8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / 7c (FID variants): expanded 1×3 / 3×1 branches → 2048. The branch pool is a
    padding-excluding 3×3 average pool in Mixed_7b (`pool="avg"`) and a 3×3 max pool in Mixed_7c
    (`pool="max"`), as in the TF graph."""

    def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}.")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
        return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """The FID InceptionV3 (pytorch-fid's port of TF `inception-2015-12-05`) up to pool3.

    `model(images)`: images (N, H, W, C) in [−1, 1], C ∈ {1, 3} → pool3 features (N, 2048);
    `model.features(x)`: already-preprocessed (N, 299, 299, 3) → (N, 2048). Attribute paths mirror
    the PyTorch module names, so `Mixed_6b.branch7x7_2.conv.weight` is `model.Mixed_6b.branch7x7_2`.
    Build with random weights from `rngs`; load the real ones with `load_inception_params`.
    """

    def __init__(self, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

    def features(self, x):
        """Preprocessed (N, 299, 299, 3) → pool3 (N, 2048): stem, 11 mixed blocks, spatial mean."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_3x3(x, stride=2)
        x = _max_pool_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):  # fmt: skip
            x = block(x)
        return x.mean(axis=(1, 2))

    def __call__(self, images):
        return self.features(preprocess(images))


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def _bilinear_matrix(n_in: int, n_out: int, dtype) -> np.ndarray:
    """(n_out, n_in) weights of torch's 1-D linear resize (align_corners=False, no antialias):
    source s = (i + ½)·r − ½ clamped at 0 with r = n_in/n_out in `dtype`, λ = s − ⌊s⌋,
    out[i] = (1 − λ)·x[⌊s⌋] + λ·x[min(⌊s⌋ + 1, n_in − 1)]. For float32, s is the exact value rounded
    once (torch's CPU kernel uses a fused multiply-add), which reproduces torch's weights bit for bit."""
    dtype = np.dtype(dtype)
    ratio = dtype.type(n_in) / dtype.type(n_out)
    half = np.arange(n_out, dtype=dtype) + dtype.type(0.5)
    src = np.maximum((np.float64(ratio) * half.astype(np.float64) - 0.5).astype(dtype), 0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    lam = np.clip(src - lo.astype(dtype), 0, 1).astype(dtype)
    m = np.zeros((n_out, n_in), dtype)
    np.add.at(m, (np.arange(n_out), lo), dtype.type(1) - lam)
    np.add.at(m, (np.arange(n_out), hi), lam)
    return m


def resize_bilinear(images, size: tuple[int, int]):
    """Resize (N, H, W, C) → (N, *size, C) as torch
    `F.interpolate(mode='bilinear', align_corners=False, antialias=False)` does (separable weight
    matrices). For upsampling this is also `jax.image.resize(..., 'bilinear')`; for downsampling it
    is not (JAX antialiases), which is why the torch convention is spelt out here."""
    images = jnp.asarray(images)
    _, h, w, _ = images.shape
    mh, mw = (_bilinear_matrix(n, m, images.dtype) for n, m in ((h, size[0]), (w, size[1])))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", mh, images, precision=hp)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)


def preprocess(images):
    """FID preprocessing: (N, H, W, 1 or 3) in [−1, 1] → (N, 299, 299, 3) (grayscale
    repeated to RGB, bilinear resize in torch's convention; pytorch-fid's resize_input and
    normalize_input, which commute because the resize weights sum to one)."""
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception: need images (N, H, W, C) with C in (1, 3), got {images.shape}.")
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.shape[1:3] == (INPUT_SIZE, INPUT_SIZE):
        return images
    return resize_bilinear(images, (INPUT_SIZE, INPUT_SIZE))


# --------------------------------------------------------------------------------------------------
# Weights (PyTorch state-dict names and layouts)
# --------------------------------------------------------------------------------------------------


def _basic_convs(model: InceptionV3) -> dict[str, BasicConv2d]:
    """{PyTorch module name (e.g. 'Mixed_5b.branch1x1'): BasicConv2d} in graph order."""
    return {".".join(map(str, path)): m for path, m in nnx.iter_graph(model)
            if isinstance(m, BasicConv2d)}  # fmt: skip


def _torch_arrays(conv: BasicConv2d) -> dict[str, object]:
    """Suffix → JAX variable of one BasicConv2d (conv kernel in flax's (kh, kw, I, O) layout)."""
    return {"conv.weight": conv.conv.kernel, "bn.weight": conv.bn.scale, "bn.bias": conv.bn.bias,
            "bn.running_mean": conv.bn.mean, "bn.running_var": conv.bn.var}  # fmt: skip


_HWIO_TO_OIHW, _OIHW_TO_HWIO = (3, 2, 0, 1), (2, 3, 1, 0)


def _to_torch_layout(suffix: str, a):
    return np.transpose(a, _HWIO_TO_OIHW) if suffix == "conv.weight" else a


def _abstract_model() -> InceptionV3:
    return nnx.eval_shape(lambda: InceptionV3(nnx.Rngs(0)))


def _shapes(model: InceptionV3) -> dict[str, tuple[int, ...]]:
    def torch_shape(suffix, shape):
        return tuple(shape[i] for i in _HWIO_TO_OIHW) if suffix == "conv.weight" else tuple(shape)

    return {f"{name}.{suffix}": torch_shape(suffix, var.value.shape)
            for name, conv in _basic_convs(model).items()
            for suffix, var in _torch_arrays(conv).items()}  # fmt: skip


def inception_param_shapes() -> dict[str, tuple[int, ...]]:
    """{PyTorch state-dict name: shape} of every array the pool3 features use (PyTorch layout)."""
    return _shapes(_abstract_model())


def inception_state_dict(model: InceptionV3) -> dict[str, np.ndarray]:
    """The model's weights as a PyTorch-named, PyTorch-layout {name: float32 array} (the inverse of
    `inception_from_state_dict`; `np.savez(path, **inception_state_dict(model))` writes a file
    `load_inception_params` reads)."""
    return {f"{name}.{suffix}": _to_torch_layout(suffix, np.asarray(var.value, np.float32))
            for name, conv in _basic_convs(model).items()
            for suffix, var in _torch_arrays(conv).items()}  # fmt: skip


def inception_from_state_dict(arrays: Mapping[str, np.ndarray]) -> InceptionV3:
    """InceptionV3 with weights from a pytorch-fid state dict {name: array} (PyTorch layouts).

    `fc.*` and `*.num_batches_tracked` are ignored; any other missing, unexpected or mis-shaped key
    raises a ValueError naming it."""
    model = _abstract_model()
    expected = _shapes(model)
    keys = set(arrays)
    extra = sorted(k for k in keys - set(expected)
                   if k not in _IGNORED_KEYS and not k.endswith(_IGNORED_SUFFIX))  # fmt: skip
    missing = sorted(set(expected) - keys)
    shapes = sorted(f"{k}: {tuple(np.shape(arrays[k]))} (expected {expected[k]})"
                    for k in set(expected) & keys if tuple(np.shape(arrays[k])) != expected[k])  # fmt: skip
    if missing or extra or shapes:

        def some(items):
            return ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")

        found = (("missing keys", missing), ("unexpected keys", extra), ("mis-shaped keys", shapes))
        problems = [f"{what} [{some(items)}]" for what, items in found if items]
        raise ValueError(
            "Inception weights do not match the FID InceptionV3: " + "; ".join(problems) + ". Expected "
            f"the state dict of pytorch-fid's {os.path.basename(FID_WEIGHTS_URL)} converted with "
            "experiments/convert_inception_weights.py (PyTorch names and layouts)."
        )
    for name, conv in _basic_convs(model).items():
        for suffix, var in _torch_arrays(conv).items():
            a = np.asarray(arrays[f"{name}.{suffix}"], np.float32)
            var.value = jnp.asarray(np.transpose(a, _OIHW_TO_HWIO) if suffix == "conv.weight" else a)
    return model


def load_inception_params(path: str | os.PathLike) -> InceptionV3:
    """The FID InceptionV3 with weights from an `.npz` of pytorch-fid's state dict.

    Raises FileNotFoundError (saying how to obtain the file) when `path` does not exist and
    ValueError when its keys or shapes are not those of the FID network."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}. FID needs the standard FID Inception weights, "
            f"which are not bundled: download pytorch-fid's {os.path.basename(FID_WEIGHTS_URL)} from "
            f"{FID_WEIGHTS_URL}, convert it with `python experiments/convert_inception_weights.py "
            f"--pth {os.path.basename(FID_WEIGHTS_URL)} --out inception_fid.npz` (needs torch), and pass "
            "the .npz path (e.g. `--inception_weights inception_fid.npz`)."
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except Exception as err:  # not a zip / npz at all
        raise ValueError(f"Inception weights {path!r} are not a readable .npz file ({err}).") from err
    return inception_from_state_dict(arrays)


# --------------------------------------------------------------------------------------------------
# Feature extractor
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _pool3(graphdef: nnx.GraphDef, params: nnx.State, images):
    """Preprocessing and network in one program, compiled once per model and batch shape."""
    return nnx.merge(graphdef, params)(images)


def inception_extractor(weights: str | os.PathLike | InceptionV3, batch_size: int = 50):
    """FeatureExtractor for FID: images (N, H, W, 1 or 3) in [−1, 1] → pool3 features (N, 2048)
    float32 NumPy, computed in batches of `batch_size` (the last one padded, so the network
    compiles once). `weights`: path of the converted `.npz` (see `load_inception_params`) or a model.

    FID = `fd_score(inception_extractor(path), samples, reference)`; the usual protocol uses ≥ 10k
    (CIFAR-10: 50k) samples against the training set. Images read from 8-bit files are quantized:
    quantize samples the same way, round((x + 1)·127.5)/127.5 − 1, for comparable numbers."""
    if batch_size < 1:
        raise ValueError(f"inception_extractor: batch_size must be >= 1, got {batch_size}.")
    model = weights if isinstance(weights, InceptionV3) else load_inception_params(weights)
    graphdef, params = nnx.split(model)

    def extract(images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
            raise ValueError("inception_extractor: need a non-empty batch of images (N, H, W, C) in "
                             f"[-1, 1] with C in (1, 3), got shape {images.shape}.")  # fmt: skip
        return map_batches(functools.partial(_pool3, graphdef, params), images, batch_size)

    return extract
