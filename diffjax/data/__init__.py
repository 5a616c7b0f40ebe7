"""Data: generated 2D toys, MNIST from IDX files or tensorflow-datasets, and the batch iterator."""

from diffjax.data.mnist import DatasetNotFoundError, load_mnist_idx, read_idx
from diffjax.data.pipeline import (
    batch_indices,
    batches,
    load_dataset,
    steps_per_epoch,
    to_unit_range,
    uniform_dequantize,
)
from diffjax.data.tfds_source import load_tfds, tfds_is_prepared
from diffjax.data.toy import (
    TOY_DATASETS,
    TOY_LOG_PROBS,
    checkerboard,
    checkerboard_log_prob,
    eight_gaussians,
    eight_gaussians_log_prob,
    eight_gaussians_mixture,
    in_checkerboard,
    moons,
    sample_mixture,
    spirals,
)

__all__ = [
    "TOY_DATASETS", "TOY_LOG_PROBS", "DatasetNotFoundError", "batch_indices", "batches", "checkerboard",
    "checkerboard_log_prob", "eight_gaussians", "eight_gaussians_log_prob", "eight_gaussians_mixture",
    "in_checkerboard", "load_dataset", "load_mnist_idx", "load_tfds", "moons", "read_idx",
    "sample_mixture", "spirals", "steps_per_epoch", "tfds_is_prepared", "to_unit_range",
    "uniform_dequantize",
]  # fmt: skip
