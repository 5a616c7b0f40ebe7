"""Data: IDX reader (real MNIST and synthetic files), missing-data errors, the deterministic
resumable sharded iterator, and the generated 2D datasets."""

import gzip
import importlib.util
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import (
    TOY_DATASETS,
    TOY_LOG_PROBS,
    DatasetNotFoundError,
    batch_indices,
    batches,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    in_checkerboard,
    load_dataset,
    load_mnist_idx,
    load_tfds,
    moons,
    read_idx,
    sample_mixture,
    spirals,
    tfds_is_prepared,
    to_unit_range,
    uniform_dequantize,
)
from diffjax.oracle import ring_mixture

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST IDX files not found in {MNIST_DIR} (the shared data directory)",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0x0000, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(directory: Path, n=6, split="train", compress=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    files = {f"{prefix}-images-idx3-ubyte": images, f"{prefix}-labels-idx1-ubyte": labels}
    for name, arr in files.items():
        data = idx_bytes(arr)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images, labels


# -- MNIST IDX -----------------------------------------------------------------------------------


@needs_mnist
def test_real_mnist_matches_published_statistics():
    images, labels = load_mnist_idx("train", MNIST_DIR)
    assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)
    assert abs(images.mean() / 255.0 - 0.1307) < 5e-4  # published mean 0.1307 (4 digits)
    test_images, test_labels = load_mnist_idx("test", MNIST_DIR)
    assert test_images.shape == (10000, 28, 28, 1) and test_labels.shape == (10000,)


@needs_mnist
def test_load_dataset_mnist_from_env_var_scales_to_unit_range(monkeypatch):
    monkeypatch.setenv("DIFFJAX_DATA_DIR", str(MNIST_DIR.parent))  # <dir>/mnist is searched
    x, y = load_dataset("mnist", "test", num_examples=500)
    raw, raw_labels = load_mnist_idx("test", MNIST_DIR)
    assert x.shape == (500, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x, raw[:500] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, raw_labels[:500])


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_on_synthetic_files(tmp_path, compress):
    images, labels = write_mnist(tmp_path, n=7, split="test", compress=compress)
    got_images, got_labels = load_mnist_idx("test", tmp_path)
    np.testing.assert_array_equal(got_images[..., 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    cube = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "cube.idx").write_bytes(idx_bytes(cube))
    np.testing.assert_array_equal(read_idx(tmp_path / "cube.idx"), cube)


def test_truncated_or_corrupt_idx_raises_clear_value_error(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "short.idx").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-20])  # cut gzip stream
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01" + data[4:])
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.idx")
    # images and labels that disagree in count
    write_mnist(tmp_path, n=4)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3))))
    with pytest.raises(ValueError, match="4 images but labels"):
        load_mnist_idx("train", tmp_path)


HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None  # the optional `tfds` extra


def assert_names_both_ways(message: str):
    assert "data_dir" in message and "DIFFJAX_DATA_DIR" in message  # (1) the IDX directory
    assert "tfds build mnist" in message and "diffjax[tf]" in message  # (2) tensorflow-datasets


def test_missing_mnist_fails_fast_and_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFJAX_DATA_DIR", raising=False)
    connections = []  # no download attempts: every name lookup and connection is recorded and refused

    def refuse(*args):
        connections.append(args[:2])
        raise OSError(f"test: network access refused ({args[:2]})")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(DatasetNotFoundError) as idx_err:
        load_dataset("mnist", data_dir=tmp_path / "nowhere", source="idx")
    assert_names_both_ways(str(idx_err.value))
    with pytest.raises(DatasetNotFoundError) as none_err:
        load_mnist_idx("train")  # neither data_dir nor the environment variable
    assert "DIFFJAX_DATA_DIR unset" in str(none_err.value)
    with pytest.raises(DatasetNotFoundError) as tfds_err:
        load_dataset("mnist", data_dir=tmp_path, source="tfds")  # empty tfds data_dir
    assert_names_both_ways(str(tfds_err.value))
    if HAVE_TFDS:
        assert "no download is attempted" in str(tfds_err.value)
    else:  # the `tfds` extra is not installed: the message says how to install it
        assert "tensorflow-datasets cannot be imported" in str(tfds_err.value)
    with pytest.raises(DatasetNotFoundError, match="tfds build cifar10"):
        load_tfds("cifar10", data_dir=tmp_path)
    if not HAVE_TFDS or not tfds_is_prepared("mnist"):  # 'auto' falls back to tfds' directory
        with pytest.raises(DatasetNotFoundError) as auto_err:
            load_dataset("mnist", data_dir=tmp_path)
        assert_names_both_ways(str(auto_err.value))
        assert "IDX:" in str(auto_err.value) and "tfds:" in str(auto_err.value)
    assert connections == []  # no download attempts
    assert list(tmp_path.iterdir()) == []  # nothing written into the data directory


def test_bad_dataset_arguments_raise():
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="MNIST only"):
        load_dataset("cifar10", source="idx")
    with pytest.raises(ValueError, match="split"):
        load_mnist_idx("validation", "/nonexistent")


# -- batch iterator -----------------------------------------------------------------------------


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_batches_are_deterministic_and_resume_exactly():
    n, b = 103, 10  # 10 steps per epoch, 3 examples dropped each epoch
    data = np.arange(n)[:, None] * np.ones((1, 2))
    labels = np.arange(n)
    run = take(batches(data, labels, b, seed=7), 25)
    again = take(batches(data, labels, b, seed=7), 25)
    other = take(batches(data, labels, b, seed=8), 25)
    for (x1, y1), (x2, y2) in zip(run, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[1], c[1]) for a, c in zip(run, other, strict=True))
    for k in (0, 3, 10, 17):  # resume inside an epoch and across the epoch boundary
        x, y = next(batches(data, labels, b, seed=7, start_step=k))
        np.testing.assert_array_equal(y, run[k][1])
        np.testing.assert_array_equal(x[:, 0], y)  # rows stay aligned with labels
        np.testing.assert_array_equal(y, batch_indices(k, n, b, seed=7))
    # each epoch visits distinct examples: 10 batches of 10 cover 100 of the 103 exactly once
    for epoch in range(2):
        seen = np.concatenate([run[epoch * 10 + i][1] for i in range(10)])
        assert len(np.unique(seen)) == 100
    epoch0 = np.concatenate([r[1] for r in run[:10]])
    epoch1 = np.concatenate([r[1] for r in run[10:20]])
    assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch


def test_process_shards_partition_the_global_batch():
    n, b, p = 64, 16, 4
    data, labels = np.arange(n, dtype=np.float32)[:, None], np.arange(n)
    whole = take(batches(data, labels, b, seed=3, start_step=5), 3)
    shards = [take(batches(data, labels, b, seed=3, start_step=5, process_index=i,
                           process_count=p), 3) for i in range(p)]
    for step in range(3):
        parts = [shards[i][step][1] for i in range(p)]
        assert all(len(part) == b // p for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole[step][1])
    assert next(batches(data, None, b, seed=3))[1] is None
    with pytest.raises(ValueError, match="multiple of process_count"):
        batches(data, labels, 10, seed=0, process_count=4)
    with pytest.raises(ValueError, match="must lie in"):
        batches(data, labels, 65, seed=0)


def test_unit_range_and_dequantization():
    pixels = np.array([0, 1, 128, 255], np.uint8)
    expected = [-1.0, 1 / 127.5 - 1, 128 / 127.5 - 1, 1.0]
    np.testing.assert_allclose(to_unit_range(pixels), expected, atol=1e-6)  # float32
    x = jnp.asarray(to_unit_range(np.full((20_000,), 100, np.uint8)))
    noisy = uniform_dequantize(jax.random.key(0), x)
    step = 2.0 / 255.0
    assert float(jnp.max(jnp.abs(noisy - x))) <= step / 2 + 1e-7  # stays within its own bin
    # U(−s/2, s/2) has std s/√12; its sample mean has standard error s/√(12 n): allow 5 of them
    assert abs(float(jnp.mean(noisy - x))) < 5 * step / np.sqrt(12 * x.size)


# -- generated 2D data --------------------------------------------------------------------------

N = 20_000


MEAN_TOL = 5 / np.sqrt(N)


def assert_standardised(x, mean_tol=MEAN_TOL, var_tol=0.05):
    """Mean 0 within 5 standard errors (σ/√N with σ = 1); variance 1 within 0.05, i.e. about 5
    standard errors √((κ − 1)/N) for kurtosis κ ≤ 3 (κ = 1.8 for the uniform)."""
    x = np.asarray(x)
    np.testing.assert_array_less(np.abs(x.mean(0)), mean_tol)
    np.testing.assert_array_less(np.abs(x.var(0) - 1.0), var_tol)


def test_checkerboard_lies_on_dark_squares_with_unit_std():
    x, labels = checkerboard(jax.random.key(0), N)
    assert x.shape == (N, 2) and x.dtype == jnp.float32 and labels.shape == (N,)
    assert bool(jnp.all(in_checkerboard(x)))
    assert_standardised(x, var_tol=5 * np.sqrt(0.8 / N))  # uniform: Var of x² is 0.8
    # the dark squares are half the board: uniform points on the square land there half the time
    u = jax.random.uniform(jax.random.key(1), (N, 2), minval=-np.sqrt(3), maxval=np.sqrt(3))
    frac = float(jnp.mean(in_checkerboard(u)))
    assert abs(frac - 0.5) < 5 * np.sqrt(0.25 / N)
    counts = np.bincount(np.asarray(labels), minlength=8)  # the 8 dark squares, equally likely
    assert counts.shape == (8,) and np.all(np.abs(counts / N - 1 / 8) < 5 * np.sqrt(7 / 64 / N))


def test_moons_and_eight_gaussians_are_standardised():
    x, labels = moons(jax.random.key(0), N)
    assert x.shape == (N, 2) and set(np.unique(np.asarray(labels))) == {0, 1}
    assert_standardised(x)
    x, labels = eight_gaussians(jax.random.key(1), N)
    assert_standardised(x)
    mix = eight_gaussians_mixture()
    np.testing.assert_allclose(mix.covariance(), np.eye(2), atol=1e-6)  # exact unit covariance
    np.testing.assert_array_equal(np.unique(np.asarray(labels)), np.arange(8))
    # every point is near its own component mean: 6 std of 0.2 per coordinate (P(exceed) ≈ 1e-4)
    assert float(jnp.max(jnp.abs(x - mix.means[labels]))) < 6 * 0.2


def test_spirals_have_second_moment_two_and_two_arms():
    noise = 0.05
    x, labels = spirals(jax.random.key(0), N, noise=noise)
    sq = np.sum(np.asarray(x) ** 2, axis=1)
    # E|x|² = 2 + 2 noise²; Var(|r|²) = E r⁴ − 4 = (θ_max⁴/3)/(θ_max/2)⁴ − 4 = 16/3 − 4 = 4/3
    assert abs(sq.mean() - (2 + 2 * noise**2)) < 5 * np.sqrt(4 / 3 / N) + 0.01
    np.testing.assert_array_less(np.abs(np.asarray(x).mean(0)), 5 * np.sqrt(1.0 / N))
    assert set(np.unique(np.asarray(labels))) == {0, 1}


def test_mixture_sampler_and_toy_lookup():
    mix = ring_mixture(4, radius=3.0, std=0.1)
    x, labels = sample_mixture(jax.random.key(0), 1000, mix)
    assert x.shape == (1000, 2) and labels.dtype == jnp.int32
    assert float(jnp.max(jnp.linalg.norm(x - mix.means[labels], axis=1))) < 0.6  # 6 std
    assert set(TOY_DATASETS) == {"checkerboard", "moons", "eight_gaussians", "spirals"}
    for name, fn in TOY_DATASETS.items():
        xs, ys = fn(jax.random.key(0), 16)
        assert xs.shape == (16, 2) and ys.shape == (16,), name
    a, _ = load_dataset("moons", "train", num_examples=64)
    b, _ = load_dataset("moons", "train", num_examples=64)
    c, _ = load_dataset("moons", "test", num_examples=64)
    assert a.shape == (64, 2) and np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("name, half_width", [("checkerboard", np.sqrt(3.0)), ("eight_gaussians", 4.0)])
def test_toy_log_probs_are_normalised_densities_of_their_samplers(name, half_width):
    """∫ p = 1 by Monte Carlo over a box holding the support (up to ~1e-6 mass), and every sample
    of the toy has finite log-density."""
    log_prob = TOY_LOG_PROBS[name]
    u = jax.random.uniform(jax.random.key(2), (N, 2), minval=-half_width, maxval=half_width)
    p = np.exp(np.asarray(log_prob(u), np.float64))
    area = (2 * half_width) ** 2
    assert abs(area * p.mean() - 1.0) < 5 * area * p.std() / np.sqrt(N)
    x, _ = TOY_DATASETS[name](jax.random.key(3), 1000)
    assert bool(jnp.all(jnp.isfinite(log_prob(x))))
    if name == "checkerboard":  # uniform on its support: the constant −log(area of the dark squares)
        np.testing.assert_allclose(log_prob(x), -np.log(6.0), rtol=1e-6)
        assert float(log_prob(jnp.array([[0.5, -0.5]]))[0]) == -np.inf  # a light square
