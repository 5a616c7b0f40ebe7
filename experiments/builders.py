"""Config → library objects: the glue between `ml_collections` configs and diffjax.

Plain functions of a ConfigDict; the library itself never imports from `experiments/`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffjax.guidance import cfg_model
from diffjax.losses import cfm_loss, dsm_loss, uniform_time
from diffjax.models import ResidualMLP, ResidualMLPConfig, UNet, UNetConfig, drop_labels
from diffjax.parameterization import clip_denoised
from diffjax.paths.gaussian import CondOTPath, CosinePath
from diffjax.processes.ddpm import DDPMChain, simple_eps_loss
from diffjax.processes.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from diffjax.samplers import sample
from diffjax.training import Checkpointer, create_train_state, make_optimizer

PROCESSES = {
    "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine_vp": CosineVPSDE,
    "condot": CondOTPath, "cosine_path": CosinePath, "ddpm": DDPMChain.linear,
}  # fmt: skip


def _choose(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"Unknown {what} {name!r}; choose one of {tuple(table)}.")
    return table[name]


def build_process(cfg):
    return _choose(PROCESSES, cfg.process.name, "process")(**cfg.process.get("kwargs", {}))


def build_model(cfg, seed: int):
    """The network (NNX module) declared by cfg.model, with output kind cfg.model.output."""
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.kind == "mlp":
        return ResidualMLP(ResidualMLPConfig(output=cfg.model.output, **kwargs), rngs=nnx.Rngs(seed))
    if cfg.model.kind == "unet":
        return UNet(UNetConfig(output=cfg.model.output, **kwargs), rngs=nnx.Rngs(seed))
    raise ValueError(f"Unknown model kind {cfg.model.kind!r}; choose 'mlp' or 'unet'.")


def num_classes(cfg) -> int | None:
    return cfg.model.kwargs.get("num_classes")


def build_loss_fn(cfg, graphdef, process):
    """loss_fn(params, batch, key) -> scalar for `diffjax.training.make_train_step`."""
    kind, output = cfg.loss.name, cfg.model.output
    n_cls, p_drop = num_classes(cfg), cfg.train.get("label_dropout", 0.0)
    if kind == "dsm":
        sampler = uniform_time(process, cfg.loss.t_eps)

        def loss(fn, x, key):
            return dsm_loss(fn, x, key, process=process, prediction=output,
                            weighting=cfg.loss.weighting, time_sampler=sampler)  # fmt: skip
    elif kind == "cfm":
        sampler = uniform_time(process, cfg.loss.t_eps)

        def loss(fn, x, key):
            return cfm_loss(fn, x, key, path=process, prediction=output, time_sampler=sampler)
    elif kind == "ddpm":
        if output != "eps" or not isinstance(process, DDPMChain):
            raise ValueError("loss 'ddpm' needs process 'ddpm' and a model with output 'eps'.")

        def loss(fn, x, key):
            return simple_eps_loss(fn, x, key, process)
    else:
        raise ValueError(f"Unknown loss {kind!r}; choose 'dsm', 'cfm' or 'ddpm'.")

    def loss_fn(params, batch, key):
        x, y = batch
        k_loss, k_drop, k_label = jax.random.split(key, 3)
        model = nnx.merge(graphdef, params)
        if n_cls is not None:
            y = drop_labels(k_label, y, p_drop, n_cls) if p_drop > 0 else y
        else:
            y = None
        return loss(lambda x_, t_: model(x_, t_.astype(x_.dtype), y, rngs=k_drop), x, k_loss)

    return loss_fn


@functools.cache
def make_apply(graphdef):
    """apply(params, x, t, y=None) without dropout — for sampling with the EMA parameters. One
    function per graphdef, so samplers given `Partial(apply, params)` compile once per model."""

    def apply(params, x, t, y=None):
        return nnx.merge(graphdef, params)(x, t.astype(x.dtype), y)

    return apply


def generate(cfg, graphdef, params, process, key, n, save_trajectory=False, labels=None):
    """Samples from the model with the configured sampler (classifier-free guidance for class-conditional
    models; x̂0 clipped to [−1, 1] when cfg.sample.clip_denoised)."""
    apply = make_apply(graphdef)
    if cfg.model.kind == "mlp":
        shape = (n, cfg.model.kwargs["dim"])
    else:
        k = cfg.model.kwargs
        shape = (n, k["image_size"], k["image_size"], k["in_channels"])
    n_cls = num_classes(cfg)
    if n_cls is None:
        model_fn = jax.tree_util.Partial(apply, params)
    else:
        labels = np.arange(n) % n_cls if labels is None else labels
        model_fn = cfg_model(jax.tree_util.Partial(apply, params), jax.numpy.asarray(labels),
                             cfg.sample.guidance_scale, n_cls)  # fmt: skip
    if cfg.sample.get("clip_denoised", False):  # images live in [−1, 1]
        model_fn = clip_denoised(model_fn, process, cfg.model.output)
    return sample(cfg.sample.sampler, model_fn, process, key, shape, cfg.sample.num_steps,
                  prediction=cfg.model.output, save_trajectory=save_trajectory)  # fmt: skip


def train_wall_time(workdir) -> float | None:
    """Wall time in seconds of the training run (its summary.json), or None if it has none."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("wall_time_s")


def load(workdir):
    """(config, graphdef, EMA params, step) from a train.py work directory."""
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    model = build_model(cfg, cfg.seed)
    graphdef, params = nnx.split(model)
    optimizer, _ = make_optimizer(cfg.train.learning_rate, warmup_steps=cfg.train.warmup_steps,
                                  total_steps=cfg.train.num_steps, weight_decay=cfg.train.weight_decay,
                                  clip_norm=cfg.train.clip_norm)  # fmt: skip
    target = create_train_state(params, optimizer, jax.random.key(0))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1)
    state = ckpt.restore_latest(target)
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints: train first (train.py).")
    return cfg, graphdef, state.ema_params, int(state.step)
