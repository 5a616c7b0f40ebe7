"""MNIST from the four standard IDX files (LeCun et al. 1998), read with numpy and gzip.

IDX format: a big-endian header — two zero bytes, a type code (0x08 = uint8), the number of
dimensions n, then n big-endian uint32 sizes — followed by the data. The magic number (the first
four bytes as uint32) is 2051 for image files (n = 3: N, 28, 28) and 2049 for label files (n = 1).

The data directory is the `data_dir` argument, else the environment variable DIFFJAX_DATA_DIR; the
files are looked up in `<dir>/mnist` and then `<dir>` (plain or `.gz`).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

ENV_VAR = "DIFFJAX_DATA_DIR"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not available locally: `reason`, then (for a named dataset) how to get it."""

    def __init__(self, reason: str, name: str | None = None):
        self.reason = reason
        super().__init__(reason if name is None else f"{reason} {how_to_provide(name)}")


def how_to_provide(name: str) -> str:
    """The ways to make dataset `name` available, for error messages."""
    idx = (
        f"(1) download the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) into a directory "
        f"and pass data_dir=<dir> (or set {ENV_VAR}=<dir>; <dir>/mnist is searched too) with "
        "source='idx'; "
        if name == "mnist"
        else f"(1) {name} has no IDX reader; only tensorflow-datasets can provide it; "
    )
    return (
        f"To provide {name!r}: {idx}(2) prepare it with tensorflow-datasets on a machine with "
        f"internet: `pip install 'diffjax[tf]'` then `tfds build {name}` (or "
        f"`tfds.builder('{name}').download_and_prepare()` in Python), and point TFDS_DATA_DIR or "
        "data_dir (with source='tfds') at the prepared directory."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape.

    Raises ValueError for a bad header, an unsupported type or a truncated/oversized payload."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these for corrupt or truncated streams
        raise ValueError(
            f"{path}: cannot decompress/read ({err}); the file is corrupt or truncated — "
            "download it again."
        ) from err
    if len(raw) < 4:
        raise ValueError(f"{path}: only {len(raw)} bytes, not an IDX file (truncated?).")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ValueError(
            f"{path}: not an unsigned-byte IDX file (header bytes {raw[:4].hex()}; expected "
            "0000 08 nn, magic 2051 for images or 2049 for labels)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header}; it is truncated or corrupt — download it again."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def find_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the MNIST IDX files (see module docstring); DatasetNotFoundError if
    none."""
    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if root is None:
        raise DatasetNotFoundError(
            f"MNIST: no data directory given (data_dir=None and {ENV_VAR} unset).", "mnist"
        )
    root = Path(root).expanduser()
    for cand in (root / "mnist", root):
        if _find(cand, FILES["train"][0]) is not None or _find(cand, FILES["test"][0]) is not None:
            return cand
    raise DatasetNotFoundError(
        f"MNIST: no IDX files (train-images-idx3-ubyte[.gz], ...) in {root / 'mnist'} or {root}.",
        "mnist",
    )


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist_idx(
    split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int32 (N,)) of 'train' (N=60000) or 'test' (10000)."""
    if split not in FILES:
        raise ValueError(f"MNIST: split must be one of {tuple(FILES)}, got {split!r}.")
    directory = find_mnist_dir(data_dir)
    paths = [_find(directory, stem) for stem in FILES[split]]
    if None in paths:
        raise DatasetNotFoundError(
            f"MNIST: {split} files {FILES[split]} (.gz or plain) missing in {directory}.", "mnist"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: expected images of shape (N, 28, 28), got {images.shape}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"MNIST: {images.shape[0]} images but labels of shape {labels.shape} in {directory}."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{paths[1]}: labels must be digits 0..9, found {labels.max()}.")
    return images[..., None], labels.astype(np.int32)
