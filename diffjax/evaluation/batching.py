"""Apply a compiled function to a large array in fixed-size batches (feature extraction)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def map_batches(fn: Callable[[np.ndarray], object], x, batch_size: int) -> np.ndarray:
    """np.concatenate([fn(batch) for batch in x]) over batches of `batch_size` rows, the last one
    zero-padded to the same shape so that a jitted `fn` compiles once; the padding rows are
    dropped from the result. x: (N, ...) → (N, ...) of whatever `fn` returns per row."""
    if batch_size < 1:
        raise ValueError(f"map_batches: batch_size must be >= 1, got {batch_size}.")
    x = np.asarray(x, np.float32)
    if len(x) == 0:
        raise ValueError(f"map_batches: need a non-empty batch, got shape {x.shape}.")
    b = min(batch_size, len(x))
    out = []
    for i in range(0, len(x), b):
        chunk = x[i : i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
        out.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(out)
