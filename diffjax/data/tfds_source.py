"""Image datasets through tensorflow-datasets (tfds), read only from an already prepared data_dir.

Never downloads: if `tfds.builder(name, data_dir=...).is_prepared()` is false we raise
`DatasetNotFoundError` at once, naming the ways to provide the data (the MNIST IDX directory, or
`tfds build` on a machine with internet). Reading prepared TFRecords needs TensorFlow, the optional
extra `pip install 'diffjax[tf]'`. tfds is imported lazily, so diffjax imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from diffjax.data.mnist import DatasetNotFoundError


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # also covers its undeclared importlib_resources dependency
        raise DatasetNotFoundError(
            f"tensorflow-datasets cannot be imported ({err}); `pip install tensorflow-datasets "
            "importlib_resources`, or use another source.",
            name,
        ) from err
    return tfds


@contextlib.contextmanager
def _quiet_absl():
    """Hide tfds's absl warning about a missing dataset_info.json while we look for the data."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _builder(tfds, name, data_dir):
    with _quiet_absl():
        return tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))


def tfds_is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether tfds has `name` prepared in data_dir (default: TFDS_DATA_DIR or
    ~/tensorflow_datasets). Touches only the local filesystem."""
    tfds = _import_tfds(name)
    builder = _builder(tfds, name, data_dir)
    with _quiet_absl():
        return bool(builder.is_prepared())


def load_tfds(
    name: str, split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, C), labels int32 (N,)) of a prepared tfds image-classification set
    ('mnist', 'cifar10', ...). Raises DatasetNotFoundError fast when it is not prepared."""
    tfds = _import_tfds(name)
    try:
        builder = _builder(tfds, name, data_dir)
    except Exception as err:  # unknown name etc.: report it without the library's traceback
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetNotFoundError(
            f"tensorflow-datasets has no dataset {name!r}: {first_line}"
        ) from None
    with _quiet_absl():
        prepared = builder.is_prepared()
    if not prepared:
        raise DatasetNotFoundError(
            f"{name}: tensorflow-datasets has no prepared copy in {builder.data_dir} (no download "
            "is attempted).",
            name,
        )
    try:
        import tensorflow  # noqa: F401  (reading the prepared TFRecords needs it)
    except ImportError:
        raise DatasetNotFoundError(
            f"{name} is prepared in {builder.data_dir} but reading it needs TensorFlow: "
            "`pip install 'diffjax[tf]'`.",
            name,
        ) from None
    ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(ds)
    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return images, np.asarray(labels, np.int32)
