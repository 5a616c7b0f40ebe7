"""FID between two image sets with the standard FID Inception network (pytorch-fid's port of TF's
`inception-2015-12-05`; Heusel et al. 2017).

    python -m experiments.fid --samples outputs/cifar/sample_dpm_solver_pp_20.npz \
        --reference cifar10_train.npz --inception_weights inception_fid.npz

Each images file is an .npz with an array under `samples` (what sample.py writes) or `images`:
(N, H, W, C), C ∈ {1, 3}, floats in [−1, 1] (uint8 in [0, 255] is accepted too). The weights are
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` converted with
experiments/convert_inception_weights.py. By default both sets are clipped to [−1, 1] and quantized
to 8-bit levels first, as when FID is computed from PNG files (a no-op on 8-bit data sets;
--no_quantize skips it). FID is
biased upwards for small N: compare numbers at equal N (the usual protocol: 50k samples).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from diffjax.evaluation import fd_score
from diffjax.evaluation.inception import inception_extractor, load_inception_params

IMAGE_KEYS = ("samples", "images")


def load_images(path: str, quantize: bool = True) -> np.ndarray:
    """(N, H, W, C) float32 in [−1, 1] from an .npz; ValueError / FileNotFoundError saying what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"images file not found: {path!r}.")
    try:
        stored = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable .npz file ({err}).") from err
    with stored:
        key = next((k for k in IMAGE_KEYS if k in stored.files), None)
        if key is None:
            raise ValueError(f"{path!r} has no array under {' or '.join(IMAGE_KEYS)} (keys: {stored.files}); "
                             "save the images with np.savez(path, images=x).")  # fmt: skip
        x = stored[key]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = " (channels first? transpose to NHWC)" if x.ndim == 4 and x.shape[1] in (1, 3) else ""
        raise ValueError(f"{path!r}[{key!r}] has shape {x.shape}: need (N, H, W, C) with C in (1, 3){hint}.")
    if len(x) < 2:
        raise ValueError(f"{path!r}[{key!r}] holds {len(x)} image(s): FID needs at least 2 per set.")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 127.5 - 1.0
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path!r}[{key!r}] has dtype {x.dtype}: need floats in [-1, 1] or uint8.")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path!r}[{key!r}] contains NaN or infinite values.")
    if x.min() < -2.0 or x.max() > 2.0:
        raise ValueError(f"{path!r}[{key!r}] has values in [{x.min():.3g}, {x.max():.3g}]: need images "
                         "scaled to [-1, 1] (from [0, 255]: x / 127.5 - 1).")  # fmt: skip
    if quantize:
        x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
    return x.astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples", required=True, help="Images .npz (key `samples` or `images`), NHWC in [-1, 1]."
    )
    parser.add_argument("--reference", required=True, help="Reference images .npz (e.g. the training set).")
    parser.add_argument(
        "--inception_weights",
        required=True,
        help="FID Inception weights .npz (from convert_inception_weights.py).",
    )
    parser.add_argument("--batch_size", type=int, default=50, help="Images per Inception forward pass.")
    parser.add_argument(
        "--no_quantize",
        dest="quantize",
        action="store_false",
        help="Use the images as they are (default: clip to [-1, 1], round to 8-bit levels).",
    )
    args = parser.parse_args(argv)
    try:
        samples = load_images(args.samples, args.quantize)
        reference = load_images(args.reference, args.quantize)
        model = load_inception_params(args.inception_weights)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"fid.py: error: {err}")
    if min(len(samples), len(reference)) < 2048:
        print("note: fewer images than feature dimensions (2048): the covariances are rank deficient "
              "and FID is biased upwards; compare only at equal N.", file=sys.stderr)  # fmt: skip
    fid = fd_score(inception_extractor(model, args.batch_size), samples, reference)
    print(f"FID {fid:.6f} ({len(samples)} samples from {args.samples}, "
          f"{len(reference)} reference images from {args.reference})")  # fmt: skip


if __name__ == "__main__":
    main()
