"""Convert pytorch-fid's FID Inception weights (a PyTorch .pth state dict) to the .npz diffjax reads.

    # once, on a machine with internet access and torch installed:
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m experiments.convert_inception_weights \
        --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The .npz keeps the PyTorch state-dict names and layouts (`Conv2d_1a_3x3.conv.weight` (O, I, kh, kw),
`….bn.running_mean`, …); `diffjax.evaluation.inception.load_inception_params` maps them onto the
Flax network, and the conversion is checked against it before anything is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import numpy as np


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "convert_inception_weights needs PyTorch to read a .pth file: `pip install torch` (CPU build "
            "is enough), or convert on another machine and copy the .npz."
        ) from err
    return torch


def state_dict_to_numpy(state_dict: Mapping) -> dict[str, np.ndarray]:
    """{name: torch.Tensor} → {name: np.ndarray} (same names and layouts; floats as float32)."""
    out = {}
    for name, tensor in state_dict.items():
        a = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        out[name] = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    return out


def load_pth_state_dict(path: str) -> dict:
    """The state dict in a .pth file (a bare state dict, a {'state_dict': …} wrapper or a module)."""
    torch = _import_torch()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .pth file: {path!r}.")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} does not hold a PyTorch state dict (got {type(obj).__name__}).")
    return dict(obj)


def convert(pth: str, out: str) -> dict[str, np.ndarray]:
    """Read `pth`, check it is the FID InceptionV3, write `out` (.npz); returns the arrays."""
    from diffjax.evaluation.inception import inception_from_state_dict

    arrays = state_dict_to_numpy(load_pth_state_dict(pth))
    inception_from_state_dict(arrays)  # raises a ValueError naming bad keys before writing anything
    tmp = out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pth", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", required=True, help="Output .npz path.")
    args = parser.parse_args(argv)
    arrays = convert(args.pth, args.out)
    print(f"wrote {args.out} ({len(arrays)} arrays)")


if __name__ == "__main__":
    main()
