"""One pure training step: loss and gradients, optimizer update, EMA, non-finite guard.

    (loss, g) = value_and_grad(loss_fn)(params, batch, key_step)
    params'   = params + optimizer_update(g)
    ema'      = d_k · ema + (1 − d_k) · params'       d_k = min(d, (1 + k)/(10 + k)) at step k

The EMA warm-up (`ema_warmup=True`) forgets the initialisation within a few hundred steps whatever
d is; without it the EMA keeps a weight d^k on the initial parameters (0.995³⁸¹ ≈ 15%), which
shrinks a zero-initialised ε-network's output and, through x̂0 = (x − σε̂)/α, ruins samples of
short runs.

Under `compile_train_step` with an fsdp mesh the loss sees the parameters gathered to full size
(`gathered`), so the gradient is reduced back onto the shards where the optimizer and EMA run.

If the loss or any gradient entry is NaN/Inf the whole state is returned unchanged (no update, no
step increment, same key) and `metrics['finite']` is False; the training loop then stops.

A loss that depends on the training step (a schedule inside the loss, e.g. sCM's tangent warm-up) is
marked with `takes_step` (`uses_step(loss)`): `model_loss` and `make_train_step` then pass the
step counter as `step=` (an int32 array, traced: one compiled step for the whole schedule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec

from diffjax.losses import BoundLabels, drop_labels
from diffjax.models.schedule import WithSchedule, is_schedule_shape
from diffjax.models.uncertainty import WithUncertainty
from diffjax.processes.learned import mean_with_variance_gradient
from diffjax.training.posthoc_ema import sigma_rel_to_gamma, update_power_emas
from diffjax.training.state import PyTree, TrainState

Batch = Any
LossFn = Callable[[PyTree, Batch, jax.Array], jax.Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def all_finite(tree: PyTree) -> jax.Array:
    """True iff every entry of every array in `tree` is finite (bool scalar)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def gathered(params: PyTree) -> PyTree:
    """`params` constrained to be whole on every device when traced under a mesh (`jax.set_mesh`, as
    `compile_train_step` does), unchanged otherwise. For fsdp-split parameters this is the FSDP
    all-gather before the forward pass; its transpose in the backward pass reduces the gradient
    across devices and back onto the shards. A no-op for replicated parameters."""
    if jax.sharding.get_abstract_mesh().empty:
        return params
    return jax.tree.map(lambda p: jax.lax.with_sharding_constraint(p, PartitionSpec()), params)


def uses_step(loss: Callable) -> Callable:
    """Mark `loss` (model, x, key, *, step, ...) as step-dependent: `model_loss` and `make_train_step`
    pass it the training step counter. Returns `loss`."""
    loss.takes_step = True
    return loss


def uses_unconditional(loss: Callable) -> Callable:
    """Mark `loss` (model, x, key, *, unconditional, ...) as needing the class-conditional network under
    the null label ∅ (e.g. MeanFlow's guidance in training): `model_loss` passes it as `unconditional`.
    Returns `loss`."""
    loss.takes_unconditional = True
    return loss


def takes_step(fn: Callable) -> bool:
    """Whether `fn` was marked by `uses_step` (or is a `model_loss` of such a loss)."""
    return bool(getattr(fn, "takes_step", False))


def model_loss(
    graphdef: nnx.GraphDef,
    loss: Callable[[Callable, jax.Array, jax.Array], jax.Array],
    *,
    num_classes: int | None = None,
    p_uncond: float = 0.0,
    wrap: Callable | None = None,
) -> LossFn:
    """`loss_fn(params, (x, labels), key)` for `make_train_step`, from a loss of (model, x, key)
    (e.g. `functools.partial(dj.cfm_loss, process=path)`): the NNX network `graphdef` with `params`,
    dropout on (its own key), and for a class-conditional network (num_classes) the labels bound,
    each replaced by the null label num_classes with probability p_uncond (classifier-free guidance,
    Ho & Salimans 2022). Unconditional networks ignore the labels. `wrap(network)` turns the network
    into the model the loss sees (e.g. `functools.partial(dj.precondition, process=p)`). A network
    bundled with a learned weighting (`diffjax.models.WithUncertainty`) trains it through the loss's
    `log_uncertainty`. A step-dependent loss (`uses_step`) gets `step=` from `make_train_step`; a loss
    marked `uses_unconditional` gets `unconditional=` the same model under the null label (all examples).

    A network carrying VDM's learned schedule (`diffjax.models.WithSchedule`) passes it to the loss as
    `process=`; the loss must then return per-example values (batch,) (e.g. `dj.vdm_loss(...,
    reduce=False)`), whose mean is the loss and whose mean square gives the schedule's shape its
    (variance-minimising) gradient (`mean_with_variance_gradient`)."""
    with_step = takes_step(loss)

    def per_example_or_mean(params, batch, key, step=None):
        x, labels = batch
        k_loss, k_dropout, k_label = jax.random.split(key, 3)
        if num_classes is None:
            labels = None
        elif p_uncond > 0:
            labels = drop_labels(k_label, labels, p_uncond, num_classes)
        network = nnx.merge(graphdef, params)
        model = BoundLabels(wrap(network) if wrap else network, labels, {"rngs": k_dropout})
        kwargs = {"step": step} if with_step else {}
        if getattr(loss, "takes_unconditional", False):
            if num_classes is None:
                raise ValueError("model_loss: the loss needs the network under the null label "
                                 "(`uses_unconditional`): only a class-conditional network has one.")
            null = jnp.full_like(labels, num_classes)
            kwargs["unconditional"] = BoundLabels(model.model, null, model.kwargs)
        if isinstance(network, WithUncertainty):  # EDM2's learned weighting, trained with the network
            kwargs["log_uncertainty"] = network.uncertainty
        if isinstance(network, WithSchedule):  # VDM's learned schedule: the process the network carries
            kwargs["process"] = network.process
        return loss(model, x, k_loss, **kwargs)

    def loss_fn(params, batch, key, step=None):
        if not isinstance(nnx.merge(graphdef, params), WithSchedule):  # (at trace time)
            return per_example_or_mean(params, batch, key, step)

        def per_example(p, b, k):
            values = per_example_or_mean(p, b, k, step)
            if values.ndim != 1:
                raise ValueError(f"model_loss: the network carries a learned schedule, so the loss must "
                                 f"return per-example values (batch,), got shape {values.shape}; e.g. "
                                 "dj.vdm_loss(..., reduce=False).")  # fmt: skip
            return values

        return mean_with_variance_gradient(per_example, params, batch, key, square=is_schedule_shape)

    return uses_step(loss_fn) if with_step else loss_fn


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.999,
    ema_warmup: bool = True,
    schedule: optax.Schedule | None = None,
    posthoc_sigma_rels: tuple[float, ...] = (),
) -> TrainStep:
    """`train_step(state, batch) -> (state, metrics)`, pure and jit-able.

    `loss_fn(params, batch, key) -> scalar` is the mean loss over the (global) batch; `key` is a
    typed PRNG key fresh for this step (split from `state.key`); a loss_fn marked by `uses_step` also
    gets `step=state.step`. metrics: 'loss', 'grad_norm'
    (before clipping), 'finite' (bool) and, if `schedule` is given, 'lr' (rate of this step).
    Under `jax.jit` with a batch sharded over devices the gradient of the mean loss is the
    all-reduced (averaged) gradient of the per-device means; with fsdp-split parameters the loss sees
    them gathered and the optimizer updates the shards: see `diffjax.training.parallel`.
    posthoc_sigma_rels: widths of the power-function EMAs in `state.posthoc` (post-hoc EMA, EDM2)."""
    gammas = tuple(sigma_rel_to_gamma(s) for s in posthoc_sigma_rels)
    with_step = takes_step(loss_fn)
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}.")

    def train_step(state: TrainState, batch: Batch):
        key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
        extra = {"step": state.step} if with_step else {}  # a step-dependent loss (`uses_step`)
        value_and_grad = jax.value_and_grad(lambda p: loss_fn(gathered(p), batch, step_key, **extra))
        loss, grads = value_and_grad(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.asarray(ema_decay, jnp.float32)
        if ema_warmup:
            k = state.step.astype(jnp.float32)
            decay = jnp.minimum(decay, (1.0 + k) / (10.0 + k))
        ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
        posthoc = update_power_emas(state.posthoc, params, state.step, gammas) if gammas else state.posthoc
        new = TrainState(state.step + 1, params, opt_state, ema, jax.random.key_data(key), posthoc)
        finite = jnp.isfinite(loss) & all_finite(grads)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_l2_norm(grads), "finite": finite}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new, metrics

    return train_step
