"""A training run's work directory: the run record saved with every checkpoint, resume checks, and
`load_model`, which turns a work directory into a model ready to sample.

Every checkpoint carries a *run record* (JSON, in the checkpoint's `meta` item) with what is needed
to rebuild and use its parameters without the config file that produced them:

    model      {"kind": "unet" | "dit" | "mlp", "prediction": ..., <config fields>}   (`models.build_model`)
    process    {"name": "vp" | "condot" | ..., <parameters>}                 (`processes.build_process`)
    optimizer  the keyword arguments of `make_optimizer` (the optimizer state's structure)
    data_shape the shape of one example, e.g. [28, 28, 1]
    num_classes the number of classes of a class-conditional model (null label = num_classes) or None
    posthoc_ema the widths σ_rel of the power-function EMAs the state tracks (absent: none)
    latent     for a model of an autoencoder's latents: {"autoencoder": its work directory, "shift",
               "scale", "image_shape"} (`latent_record`; absent: a model of the data itself)

A resumed run must agree with the record on the network, the process, the data shape and classes
and the optimizer state's structure (gradient clipping on or off) (`check_resumable`): a changed
width, prediction or process is reported by name before anything is restored, instead of surfacing as
a restore failure. Learning rate, schedule length, batch size and seed may change between segments.
`load_model(workdir)` rebuilds the network, restores the newest good
checkpoint (verified by its checksums) and returns the EMA parameters merged into the module:

    trained = dj.load_model("outputs/mnist_fm")
    dj.sample("heun", trained.model, trained.process, key, (16, 28, 28, 1), 20)

A run that tracked post-hoc EMAs (`train.posthoc_ema`) also has `<workdir>/ema_snapshots/`;
`load_model(workdir, sigma_rel=0.07)` returns the EMA of that width reconstructed from them.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
from flax import nnx

from diffjax.models import build_model
from diffjax.models.schedule import process_of
from diffjax.preconditioning import apply_preconditioning
from diffjax.processes import GaussianProcess, build_process
from diffjax.training.checkpoint import Checkpointer
from diffjax.training.posthoc_ema import SnapshotStore, reconstruct_from_store
from diffjax.training.state import create_train_state, make_optimizer

RUN_FIELDS = ("model", "process", "optimizer", "data_shape", "num_classes", "posthoc_ema", "latent")
# what a resumed run must share with its checkpoints: everything that gives the parameters their
# meaning or the state its structure (learning rate, schedule length, batch size, seed may change)
MUST_MATCH = ("model", "process", "data_shape", "num_classes", "gradient_clipping", "posthoc_ema", "latent")


class RunMismatchError(ValueError):
    """A run's configuration differs from the run record of the checkpoints in its work directory."""


class TrainedModel(NamedTuple):
    """model: the network with the restored (EMA) parameters (wrapped by its preconditioning, if the
    run used one: `diffjax.preconditioning`); process: what it was trained on;
    step: the checkpoint's step; record: the run record; num_classes: None if unconditional;
    residual: for a post-hoc EMA, the relative residual of its profile's reconstruction (else None);
    latent_space: for a model of an autoencoder's latents, the `diffjax.latent.LatentSpace` its
    samples decode through (`LatentSpace.decode`, `diffjax.latent.decode_latents`), else None."""

    model: nnx.Module
    process: GaussianProcess
    step: int
    record: dict
    num_classes: int | None
    residual: float | None = None
    latent_space: object | None = None


def run_record(
    model: dict, process: dict, optimizer: dict, data_shape, num_classes: int | None = None,
    posthoc_ema: tuple[float, ...] = (), latent: dict | None = None,
) -> dict:  # fmt: skip
    """The run record of the module docstring, in the form it has once saved as JSON (tuples as lists)."""
    record = {"model": dict(model), "process": dict(process), "optimizer": dict(optimizer),
              "data_shape": [int(d) for d in data_shape], "num_classes": num_classes}  # fmt: skip
    if posthoc_ema:
        record["posthoc_ema"] = [float(s) for s in posthoc_ema]
    if latent:
        record["latent"] = dict(latent)
    return json.loads(json.dumps(record))


def differences(saved: dict, new: dict, fields=MUST_MATCH, prefix: str = "") -> list[str]:
    """'field: saved → new' for every (nested) entry of `fields` that differs."""
    out = []
    for key in fields:
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, sorted(set(a) | set(b)), f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


def _contract(record: dict) -> dict:
    record = json.loads(json.dumps(record))  # compare as saved: tuples and lists alike
    return {**record, "gradient_clipping": record["optimizer"].get("clip_norm") is not None}


def check_resumable(saved: dict | None, new: dict, workdir: str) -> None:
    """Raise RunMismatchError naming every field of `MUST_MATCH` where the new run differs from the
    checkpoints' record (nothing is raised without a saved record: a fresh work directory)."""
    if saved is None or "run" not in saved:
        return
    diff = differences(_contract(saved["run"]), _contract(new))
    if diff:
        raise RunMismatchError(
            f"The work directory {workdir} holds checkpoints of a different run:\n  "
            + "\n  ".join(diff)
            + "\nIts checkpoints are untouched. Use a new work directory for the new configuration (to "
            "start from these parameters where the shapes allow, add --config.train.init_from="
            f"{workdir}), or run with the saved configuration (config.json and the checkpoints' record)."
        )


def _checkpointer(workdir: str) -> Checkpointer:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{workdir!r} has no checkpoints (expected {directory}/): train a model there first "
            "(python -m experiments.train --config ... --workdir ...)."
        )
    return Checkpointer(directory, save_every=1)


def read_record(workdir: str, step: int | None = None) -> dict:
    """The run record of the newest checkpoint in `workdir` (or of checkpoint `step`)."""
    ckpt = _checkpointer(workdir)
    try:
        _check_step(ckpt, workdir, step)
        meta = ckpt.metadata(step)
    finally:
        ckpt.close()
    if meta is None or "run" not in meta:
        raise FileNotFoundError(f"No checkpoint with a run record in {workdir}/checkpoints.")
    return meta["run"]


def _check_step(ckpt, workdir: str, step: int | None) -> None:
    if step is not None and step not in ckpt.all_steps():
        raise FileNotFoundError(f"{workdir} has no checkpoint of step {step}; it keeps steps "
                                f"{ckpt.all_steps()} (train.keep and train.checkpoint_every choose which).")


def restore_network(
    workdir: str, *, ema: bool = True, seed: int = 0, sigma_rel: float | None = None,
    step: int | None = None,
) -> tuple[nnx.Module, int, dict, float | None]:  # fmt: skip
    """(network, step, run record, residual) of the newest good checkpoint in `workdir` (or of the
    checkpoint of training step `step`, e.g. an earlier one as autoguidance's weaker model): the network
    of the record with its EMA parameters (the raw ones if ema=False; with `sigma_rel` the post-hoc EMA
    of that width reconstructed from `<workdir>/ema_snapshots` at its last snapshot, and the relative
    residual of that reconstruction), unwrapped (no preconditioning). The network is built from shapes
    only, so `seed` changes nothing (kept for callers that pass it)."""
    if step is not None and sigma_rel is not None:
        raise ValueError("give sigma_rel (a post-hoc EMA at the last snapshot) or step, not both.")
    record = read_record(workdir, step)
    # shapes only: initialising the network op by op would compile every initializer (seconds)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(record["model"], seed)))
    optimizer, _ = make_optimizer(**record["optimizer"])
    tracked = tuple(record.get("posthoc_ema") or ())
    target = jax.eval_shape(
        lambda p: create_train_state(p, optimizer, jax.random.key(0), len(tracked)), params
    )
    ckpt = _checkpointer(workdir)
    try:
        state = ckpt.restore_latest(target) if step is None else ckpt.restore(step, target)
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
    chosen, residual, step = state.ema_params if ema else state.params, None, int(state.step)
    if sigma_rel is not None:
        if not tracked:
            raise ValueError(f"{workdir} tracked no post-hoc EMAs; train with train.posthoc_ema=(0.05, 0.1).")
        store = SnapshotStore(os.path.join(workdir, "ema_snapshots"))
        try:
            chosen, residual, _ = reconstruct_from_store(store, state.posthoc, tracked, sigma_rel)
            step = store.steps()[-1]
        finally:
            store.close()
    return nnx.merge(graphdef, chosen), step, record, residual


def load_model(
    workdir: str, *, ema: bool = True, seed: int = 0, sigma_rel: float | None = None,
    step: int | None = None,
) -> TrainedModel:  # fmt: skip
    """The trained network of a work directory (EMA parameters unless ema=False; with `sigma_rel` the
    post-hoc EMA of that width reconstructed from `<workdir>/ema_snapshots` at its last snapshot), its
    process and step, from the newest good checkpoint (or the checkpoint of `step`, one the run kept)
    and its run record (module docstring). A model of latents comes with the latent space its samples
    decode through (`latent_space`)."""
    network, step, record, residual = restore_network(workdir, ema=ema, seed=seed, sigma_rel=sigma_rel,
                                                      step=step)  # fmt: skip
    if record["model"].get("kind") == "autoencoder":
        raise ValueError(f"{workdir} holds an autoencoder, not a diffusion model: load it with "
                         "dj.load_latent_space, or load the latent model trained on it.")  # fmt: skip
    process = process_of(network, build_process(record["process"]))  # a learned schedule: the network's
    model = apply_preconditioning(network, process, record["model"].get("preconditioning"))
    space = load_latent_space(record["latent"]) if record.get("latent") else None
    return TrainedModel(model, process, step, record, record.get("num_classes"), residual, space)


def latent_record(autoencoder_workdir: str, shift: float, scale: float, image_shape) -> dict:
    """The `latent` entry of a latent model's run record: the autoencoder's work directory (as given),
    the normalisation z̃ = (z − shift) · scale (`diffjax.latent`) and the shape of one decoded image."""
    return {"autoencoder": autoencoder_workdir, "shift": float(shift), "scale": float(scale),
            "image_shape": [int(d) for d in image_shape]}  # fmt: skip


def load_latent_space(spec: dict | str, seed: int = 0):
    """The `diffjax.latent.LatentSpace` of a latent model's record entry `spec` (`latent_record`), or
    of an autoencoder work directory (shift 0, scale 1): the autoencoder with its EMA parameters."""
    from diffjax.latent import LatentSpace

    spec = {"autoencoder": spec} if isinstance(spec, str) else spec
    workdir = spec["autoencoder"]
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"The autoencoder of this latent model, {workdir!r}, is not a work "
                                "directory with checkpoints (a relative path is taken from the current "
                                "directory).")  # fmt: skip
    network, _, record, _ = restore_network(workdir, seed=seed)
    if record["model"].get("kind") != "autoencoder":
        raise ValueError(f"{workdir} holds a {record['model'].get('kind')!r} network, not an autoencoder.")
    return LatentSpace(network, spec.get("shift", 0.0), spec.get("scale", 1.0))


__all__ = [
    "MUST_MATCH", "RUN_FIELDS", "RunMismatchError", "TrainedModel", "check_resumable", "differences",
    "latent_record", "load_latent_space", "load_model", "read_record", "restore_network", "run_record",
]  # fmt: skip

