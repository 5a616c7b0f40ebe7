"""Networks (Flax NNX): the image `UNet` and diffusion transformer `DiT`, the low-dimensional
`ResidualMLP`, embeddings, and the KL `Autoencoder` of latent diffusion (`diffjax.latent`).

Functional use: `graphdef, params = nnx.split(model)` (the models hold only `nnx.Param`s) and
`nnx.merge(graphdef, params)(x, t, y, rngs=key)` inside a jitted step; `rngs=None` disables dropout.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.errors
import jax
from flax import nnx

from diffjax.models.autoencoder import Autoencoder, AutoencoderConfig
from diffjax.models.dit import DiT, DiTConfig
from diffjax.models.embeddings import TimeEmbedding, fourier_embedding, null_labels, sinusoidal_embedding
from diffjax.models.mlp import ResidualMLP, ResidualMLPConfig
from diffjax.models.schedule import WithSchedule, process_of
from diffjax.models.uncertainty import UncertaintyWeight, WithUncertainty
from diffjax.models.unet import UNet, UNetConfig

MODELS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig), "mlp": (ResidualMLP, ResidualMLPConfig),
          "autoencoder": (Autoencoder, AutoencoderConfig)}


def build_model(spec: dict, seed: int = 0) -> nnx.Module:
    """The network spec['kind'] ('unet', 'dit', 'mlp' or 'autoencoder') with the other entries as its
    config fields (including `prediction`), initialised from `seed`. A 'preconditioning' entry describes
    how the network is wrapped (`diffjax.preconditioning.apply_preconditioning`), not the network:
    ignored here. 'learned_weighting': True bundles the network with EDM2's learned loss weighting
    (`WithUncertainty`); 'learned_schedule': {gamma_min, gamma_max, hidden, learn_endpoints} bundles
    it with VDM's learned noise schedule (`WithSchedule`)."""
    spec = dict(spec)
    spec.pop("preconditioning", None)
    learned_weighting = spec.pop("learned_weighting", False)
    learned_schedule = spec.pop("learned_schedule", None)
    if learned_weighting and learned_schedule:
        raise ValueError("a learned weighting (EDM2) and a learned schedule (VDM) are not combined: "
                         "the schedule descends the variance of the ELBO, which a weighting changes.")
    kind = spec.pop("kind", None)
    if kind not in MODELS:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {tuple(MODELS)}.")
    module, config = MODELS[kind]
    try:
        cfg = config(**spec)
    except TypeError as err:
        raise ValueError(f"model {kind!r}: invalid config fields {sorted(spec)} ({err}).") from None

    def make():
        network = module(cfg, rngs=nnx.Rngs(seed))
        if learned_schedule:
            return WithSchedule(network, **learned_schedule, rngs=nnx.Rngs(seed + 2))
        return WithUncertainty(network, rngs=nnx.Rngs(seed + 1)) if learned_weighting else network

    return initialise(make)


def initialise(make: Callable[[], nnx.Module]) -> nnx.Module:
    """The module `make()` builds, with its initial values computed by ONE compiled program.

    Built eagerly, a network compiles one small program per distinct parameter shape and initializer
    (a 12-layer U-Net: ~50 threefry + truncated-normal programs, 15-20 s on 2 CPU cores — paid by every
    training start). Here `make` is traced once under `jax.jit`; on the CPU the program is compiled
    at XLA's backend optimisation level 1 (it runs once): the initial values are bit-identical to
    eager construction (tested; level 0 compiles faster still but changes them by float32 rounding).
    `make` creates its own `nnx.Rngs` (e.g. `lambda: UNet(cfg, rngs=nnx.Rngs(0))`). Under a JAX
    transformation (`nnx.eval_shape` to restore a checkpoint, a jitted function) it is `make()`."""
    if not _top_level():  # under a transformation (`nnx.eval_shape` restoring a checkpoint, jit): it traces
        return make()
    built = {}

    def values():
        graphdef, state = nnx.split(make())
        built["graphdef"] = graphdef  # static: recorded while tracing
        return state

    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    try:
        state = jax.jit(values).lower().compile(compiler_options=options)()
    except flax.errors.TraceContextError as err:
        raise ValueError("initialise(make): `make` must create its nnx.Rngs inside (it is traced once "
                         f"under jax.jit; an Rngs made outside cannot be advanced there): {err}") from None
    return nnx.merge(built["graphdef"], state)


def _top_level() -> bool:
    """True outside any JAX transformation (JAX's own check; assumed true where it is missing)."""
    from jax._src import core

    return getattr(core, "trace_state_clean", lambda: True)()


def count_params(tree) -> int:
    """Number of scalar parameters in an `nnx.State`, a pytree of arrays, or a Module
    (its `nnx.Param`s)."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


__all__ = [
    "Autoencoder", "AutoencoderConfig", "DiT", "DiTConfig", "MODELS", "ResidualMLP", "ResidualMLPConfig",
    "TimeEmbedding", "UNet", "UNetConfig",
    "UncertaintyWeight", "WithSchedule", "WithUncertainty", "process_of", "build_model", "initialise",
    "count_params", "fourier_embedding", "null_labels", "sinusoidal_embedding",
]  # fmt: skip
