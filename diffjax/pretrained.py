"""Pretrained networks shipped with diffjax, loadable by name: sample without training first.

    trained = dj.load_pretrained("mnist_fm")
    x = dj.sample("midpoint", trained.model, trained.process, jax.random.key(0), (16, 28, 28, 1), 10).samples

A pretrained network is two files in `diffjax/weights/` (or anywhere, given by path):

- `<name>.npz`: the EMA parameters of a finished run, flattened to arrays named by their path in the
  network ('down/0/conv1/kernel', ...), stored in float16 (half the bytes of float32; loaded back as
  float32 — the rounding moves MNIST samples by far less than FD-MNIST's standard error, measured in
  the card) — no pickles;
- `<name>.json`: its card — the run record (network, process, data shape, classes: the same contract a
  work directory carries), the experiment config the run was trained with, the checkpoint step, the
  training wall time, the sampler it is meant for and the evaluations measured on it, and the SHA-256
  of the .npz (checked on load).

A model of an autoencoder's latents (latent diffusion) ships with its first stage: the autoencoder's
parameters sit in the same .npz under 'autoencoder/' and its network under the card's 'autoencoder';
the normalisation (shift, scale) is the run record's `latent` entry. `load_pretrained` then returns the
`latent_space` its samples decode through, as `load_model` does for the work directory.

`save_pretrained(trained, path, card)` writes both from a `TrainedModel` (`diffjax.load_model`);
`python -m experiments.export_pretrained` does it for a work directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from diffjax.models import build_model
from diffjax.models.schedule import process_of
from diffjax.preconditioning import apply_preconditioning
from diffjax.processes import build_process
from diffjax.training.workdir import TrainedModel

STORAGE_DTYPES = ("float16", "float32")
AUTOENCODER = "autoencoder/"
"""Prefix of a latent model's bundled autoencoder parameters in its .npz (a network's own names never
start with it: they are paths inside the network)."""


def weights_dir() -> str:
    """The folder of the pretrained networks installed with the package."""
    return str(resources.files("diffjax") / "weights")


def available_pretrained() -> dict[str, dict]:
    """name → card of every pretrained network installed with the package."""
    folder = weights_dir()
    names = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    return {name: _read_card(os.path.join(folder, name + ".json")) for name in names}


def _paths(name_or_path: str) -> tuple[str, str]:
    base = name_or_path[:-4] if name_or_path.endswith(".npz") else name_or_path
    if os.sep not in base and "/" not in base and not os.path.exists(base + ".npz"):
        base = os.path.join(weights_dir(), base)
    npz, card = base + ".npz", base + ".json"
    if not (os.path.isfile(npz) and os.path.isfile(card)):
        known = ", ".join(available_pretrained()) or "none installed"
        raise FileNotFoundError(f"No pretrained network {name_or_path!r} (looked for {npz} and {card}); "
                                f"the installed ones: {known}.")  # fmt: skip
    return npz, card


def _read_card(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def pretrained_card(name_or_path: str) -> dict:
    """The card (module docstring) of a pretrained network: record, config, step, training, evaluations."""
    return _read_card(_paths(name_or_path)[1])


def network_parameters(model) -> dict[str, np.ndarray]:
    """{'down/0/conv1/kernel': array, ...}: the state of a network (the NNX module under a
    preconditioning or consistency wrapper, with what it bundles: a learned weighting or schedule),
    flattened and named as `save_pretrained` stores it."""
    network = model
    while not isinstance(network, nnx.Module):  # the wrappers are pytrees around the module
        network = network.network
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.split(network)[1]))
    return {"/".join(map(str, key)): np.asarray(value) for key, value in flat.items()}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_pretrained(trained: TrainedModel, path: str, card: dict | None = None, *,
                    storage_dtype: str = "float16") -> str:  # fmt: skip
    """Write `trained`'s network parameters to `path` (.npz, `storage_dtype`) and its card next to it
    (.json: `card`'s entries plus the run record, step, storage dtype and the file's SHA-256); a
    latent model's autoencoder (`trained.latent_space`) goes into both too. Returns the .npz path."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"save_pretrained: storage_dtype must be one of {STORAGE_DTYPES}, "
                         f"got {storage_dtype!r}.")
    if not path.endswith(".npz"):
        raise ValueError(f"save_pretrained: the weights file must end in .npz, got {path!r}.")
    flat, bundled = network_parameters(trained.model), {}
    own = sum(v.size for v in flat.values())  # the diffusion network's parameters, without a first stage
    if trained.record.get("latent"):
        space = trained.latent_space
        if space is None:
            raise ValueError("save_pretrained: the run record names a latent space but the TrainedModel "
                             "has none; load the run with dj.load_model (it restores the autoencoder).")
        first_stage = network_parameters(space.autoencoder)
        flat.update({AUTOENCODER + k: v for k, v in first_stage.items()})
        spec = {"kind": "autoencoder", **dataclasses.asdict(space.autoencoder.config)}
        count = int(sum(v.size for v in first_stage.values()))
        bundled = {"autoencoder": {"model": spec, "num_parameters": count}}
    bad = [k for k, v in flat.items() if not np.issubdtype(v.dtype, np.floating)]
    if bad:
        raise ValueError(f"save_pretrained: non-float state {bad[:3]} cannot be stored; export the "
                         "parameters only.")
    stored = {k: v.astype(storage_dtype) for k, v in flat.items()}
    overflow = [k for k, v in stored.items() if not np.all(np.isfinite(v))]
    if overflow:
        raise ValueError(f"save_pretrained: {overflow[:3]} overflow {storage_dtype}; store float32.")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, **stored)
    full = dict(card or {}, **bundled, record=trained.record, step=int(trained.step),
                storage_dtype=storage_dtype, num_parameters=int(own), sha256=_sha256(path))  # fmt: skip
    with open(path[:-4] + ".json", "w") as f:
        json.dump(full, f, indent=1, sort_keys=True)
    return path


def load_pretrained(name_or_path: str, *, seed: int = 0) -> TrainedModel:
    """The pretrained network `name_or_path` (a name of `available_pretrained()` or the path of a .npz
    written by `save_pretrained`) as a `TrainedModel`: the network (preconditioned as trained) with the
    stored parameters in float32, its process, step, record and classes — what `load_model` returns
    for a work directory, with a latent model its `latent_space` (the bundled autoencoder). The file's
    SHA-256 and every parameter's name and shape are checked."""
    npz, card_path = _paths(name_or_path)
    card = _read_card(card_path)
    if card.get("sha256") and _sha256(npz) != card["sha256"]:
        raise ValueError(f"load_pretrained: {npz} does not match the SHA-256 of its card {card_path} "
                         "(a changed or truncated file).")  # fmt: skip
    record = card["record"]
    with np.load(npz, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    space = None
    if record.get("latent"):
        if "autoencoder" not in card:
            raise ValueError(f"load_pretrained: {card_path} is a latent model without its autoencoder.")
        from diffjax.latent import LatentSpace

        first_stage = {k[len(AUTOENCODER):]: stored.pop(k) for k in list(stored) if k.startswith(AUTOENCODER)}
        autoencoder = _network(card["autoencoder"]["model"], first_stage, npz, seed)
        space = LatentSpace(autoencoder, record["latent"]["shift"], record["latent"]["scale"])
    network = _network(record["model"], stored, npz, seed)
    process = process_of(network, build_process(record["process"]))  # a learned schedule: the network's
    model = apply_preconditioning(network, process, record["model"].get("preconditioning"))
    return TrainedModel(model, process, int(card.get("step", 0)), record, record.get("num_classes"),
                        latent_space=space)


def _network(spec: dict, stored: dict[str, np.ndarray], npz: str, seed: int) -> nnx.Module:
    """The network of `spec` (`build_model`) with the parameters `stored` (named as
    `network_parameters` names them) in its own dtypes; every name and shape checked."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(spec, seed)))  # shapes only
    target = traverse_util.flatten_dict(nnx.to_pure_dict(params))
    names = {"/".join(map(str, key)): key for key in target}
    missing, extra = sorted(set(names) - set(stored)), sorted(set(stored) - set(names))
    if missing or extra:
        raise ValueError(f"load_pretrained: {npz} does not fit the network of its record: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}.")  # fmt: skip
    values = {}
    for name, key in names.items():
        want = target[key]
        if stored[name].shape != want.shape:
            raise ValueError(f"load_pretrained: {name} has shape {stored[name].shape} in {npz}, the network "
                             f"needs {want.shape}.")  # fmt: skip
        values[key] = jnp.asarray(stored[name], want.dtype)
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, params)


__all__ = [
    "available_pretrained", "load_pretrained", "network_parameters", "pretrained_card", "save_pretrained",
    "weights_dir",
]  # fmt: skip
