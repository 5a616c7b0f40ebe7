"""Datasets as numpy arrays and a deterministic, resumable, multi-host batch iterator.

Batch order: epoch e is the permutation `np.random.default_rng([seed, e]).permutation(N)`; global
step s reads the slice [i·B, (i+1)·B) of epoch e = s // S, i = s mod S, with S = ⌊N / B⌋ steps per
epoch (the remainder is dropped). So the batch at any step is a pure function of (seed, step):
resuming at step k computes it directly, and every process draws the same global batch and keeps
its own contiguous 1/process_count slice of it (multi-host data parallelism).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Literal

import jax
import numpy as np

from diffjax.data.mnist import DatasetNotFoundError, load_mnist_idx
from diffjax.data.tfds_source import load_tfds
from diffjax.data.toy import TOY_DATASETS

IMAGE_DATASETS = ("mnist", "cifar10")
TOY_SIZES = {"train": 100_000, "test": 10_000}


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels {0, ..., 255} → float32 in [−1, 1]: x = p / 127.5 − 1."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def uniform_dequantize(key, x: jax.Array) -> jax.Array:
    """Add U(−1/255, 1/255) noise (one quantisation step of 8-bit data in [−1, 1]): the discrete
    data become a continuous density (Theis et al. 2016). Shapes: x (B, ...) → (B, ...)."""
    return x + jax.random.uniform(key, x.shape, x.dtype, -1.0 / 255.0, 1.0 / 255.0)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    source: Literal["auto", "idx", "tfds"] = "auto",
    num_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(data float32, labels int32) as numpy arrays.

    Images ('mnist', 'cifar10'): (N, H, W, C) scaled to [−1, 1]. MNIST comes from the IDX files
    (`source='idx'`, `data_dir` or DIFFJAX_DATA_DIR) or a prepared tfds copy (`source='tfds'`,
    `data_dir` is then the tfds data_dir); 'auto' tries IDX then tfds. Toys (`TOY_DATASETS`):
    (N, 2) generated from a fixed seed per split (train 0, test 1), N = num_examples or
    100000/10000. `num_examples` truncates image sets (quick runs)."""
    if name in TOY_DATASETS:
        if split not in TOY_SIZES:
            raise ValueError(f"{name}: split must be one of {tuple(TOY_SIZES)}, got {split!r}.")
        n = num_examples or TOY_SIZES[split]
        x, y = TOY_DATASETS[name](jax.random.key(0 if split == "train" else 1), n)
        return np.asarray(x), np.asarray(y)
    if name not in IMAGE_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; choose one of {IMAGE_DATASETS + tuple(TOY_DATASETS)}."
        )
    if source not in ("auto", "idx", "tfds"):
        raise ValueError(f"source must be 'auto', 'idx' or 'tfds', got {source!r}.")
    if source == "idx" and name != "mnist":
        raise ValueError(f"source='idx' reads MNIST only; use source='tfds' for {name!r}.")
    if source == "idx" or (source == "auto" and name == "mnist"):
        try:
            images, labels = load_mnist_idx(split, data_dir)
        except DatasetNotFoundError as idx_err:
            if source == "idx":
                raise
            try:
                images, labels = load_tfds(name, split)  # tfds default data_dir
            except DatasetNotFoundError as tfds_err:
                raise DatasetNotFoundError(
                    f"MNIST is not available. IDX: {idx_err.reason} tfds: {tfds_err.reason}", name
                ) from None
    else:
        images, labels = load_tfds(name, split, data_dir)
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    return to_unit_range(images), labels


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """⌊N / B⌋ (the last partial batch of each epoch is dropped)."""
    return num_examples // global_batch_size


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def batch_indices(step: int, num_examples: int, global_batch_size: int, seed: int) -> np.ndarray:
    """Indices (B,) of the global batch at `step` (see module docstring)."""
    per_epoch = steps_per_epoch(num_examples, global_batch_size)
    if global_batch_size < 1 or per_epoch == 0:
        raise ValueError(
            f"global_batch_size={global_batch_size} must lie in [1, {num_examples}] (the number "
            "of examples)."
        )
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be >= 0, got step={step}, seed={seed}.")
    epoch, i = divmod(int(step), per_epoch)
    perm = _epoch_permutation(int(seed), epoch, num_examples)
    return perm[i * global_batch_size : (i + 1) * global_batch_size]


def batches(
    data: np.ndarray,
    labels: np.ndarray | None,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Endless iterator of this process's shard (x (B/P, ...), y (B/P,) or None) of the global
    batches at steps start_step, start_step + 1, ...; the shard is rows [p·B/P, (p+1)·B/P) of the
    global batch for p = process_index, P = process_count."""
    n = len(data)
    if labels is not None and len(labels) != n:
        raise ValueError(f"batches: {n} examples but {len(labels)} labels.")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"batches: global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}."
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"batches: need 0 <= process_index={process_index} < {process_count}.")
    batch_indices(start_step, n, global_batch_size, seed)  # validates before the first next()
    local = global_batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    return _iterate(data, labels, global_batch_size, seed, start_step, lo, hi)


def _iterate(data, labels, global_batch_size, seed, step, lo, hi):
    while True:
        idx = batch_indices(step, len(data), global_batch_size, seed)[lo:hi]
        yield data[idx], (None if labels is None else labels[idx])
        step += 1


__all__ = [
    "batch_indices",
    "batches",
    "load_dataset",
    "steps_per_epoch",
    "to_unit_range",
    "uniform_dequantize",
]
