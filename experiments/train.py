"""Train a diffusion / flow-matching model from a Python config, data-parallel over all devices (and
with `--config.parallel.fsdp=F` the parameters, optimizer state and EMA split F ways, FSDP).

    python -m experiments.train --config experiments/configs/checkerboard_fm.py --workdir outputs/demo
    python -m experiments.train --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm \
        --config.data.data_dir=../shared/data/mnist --config.train.num_steps=3000

Any config field can be overridden on the command line (`--config.train.batch_size=256`); every field
is listed with its default in experiments/configs/base.py. Rerunning the same command resumes from the
newest good checkpoint in the work directory (a run whose model, process or optimizer differs from the
checkpoints' run record is refused by field, and the checkpoints stay untouched). Multi-host: set
`--config.distributed.coordinator_address=HOST:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i` on every host. Memory savers: `--config.parallel.fsdp=8` (state split
over 8 devices), `--config.model.remat=True` (recompute U-Net/DiT blocks in the backward pass) and
`--config.model.kwargs.dtype=bfloat16` (bfloat16 compute, float32 parameters).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

import diffjax as dj
from diffjax.data import batches, in_checkerboard
from diffjax.models import WithUncertainty, build_model, count_params, process_of
from diffjax.training import (
    TrainConfig,
    create_train_state,
    gather,
    make_data_mesh,
    make_mesh,
    make_optimizer,
    make_train_step,
    maybe_initialize_distributed,
    model_loss,
    run_record,
    train,
)
from diffjax.training.logging import log_image
from diffjax.training.posthoc_ema import SnapshotStore
from diffjax.viz import image_grid, save_image_grid, save_samples_2d
from experiments.builders import (
    ConfigError,
    build_loss,
    config_changes,
    config_fields_help,
    couplings_file,
    fsdp_setting,
    generate,
    latents_workdir,
    load_latents,
    load_run,
    model_spec,
    network_spec,
    num_classes,
    optimizer_spec,
    parse_flags,
    process_spec,
    saved_config,
    training_data,
    user_errors,
    validate_config,
    wrap_network,
)


def train_and_evaluate(cfg, workdir: str) -> dict:
    """Train (or resume) the run `cfg` in `workdir`, then sample `cfg.sample.num_samples` with the EMA
    parameters and write samples.npz / samples.png. Returns a summary: steps, final loss, whether the
    run was preempted, the number of model evaluations per sample and, for the checkerboard, the
    fraction of samples on its squares. config.json is the config of the run that created the work
    directory (written once it has started, never replaced); every checkpoint carries its segment's."""
    validate_config(cfg)
    dist = cfg.distributed
    maybe_initialize_distributed(dist.coordinator_address or None,
                                 dist.num_processes if dist.coordinator_address else None,
                                 dist.process_id if dist.coordinator_address else None,
                                 timeout_s=dist.timeout_s)  # fmt: skip
    is_main = jax.process_index() == 0
    mesh = training_mesh(cfg)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir!r} is a file; give a directory for the checkpoints.")
    os.makedirs(workdir, exist_ok=True)

    data, labels, data_shape = training_data(cfg)
    latent = load_latents(cfg)[2] if latents_workdir(cfg) else None  # latent diffusion: decode samples
    space = dj.load_latent_space(latent) if latent else None
    process = dj.build_process(process_spec(cfg))
    model = build_model(network_spec(cfg), cfg.seed)
    graphdef, params = nnx.split(model)
    if is_main:
        print(f"{cfg.data.name}: {data.shape[0]} examples; model {cfg.model.kind} with "
              f"{count_params(params):,} parameters; {jax.device_count()} device(s), "
              f"{jax.process_count()} process(es)"
              + (f", the state split {mesh.shape['fsdp']} ways" if "fsdp" in mesh.shape else ""))  # fmt: skip

    t = cfg.train
    optimizer, schedule = make_optimizer(**optimizer_spec(cfg))
    wrap = wrap_network(cfg, process) or (lambda network: network)
    loss_fn = model_loss(graphdef, build_loss(cfg, process), num_classes=num_classes(cfg),
                         p_uncond=t.label_dropout, wrap=wrap)  # fmt: skip
    posthoc = tuple(t.get("posthoc_ema", ()))
    train_step = make_train_step(loss_fn, optimizer, ema_decay=t.ema_decay, schedule=schedule,
                                 posthoc_sigma_rels=posthoc)  # fmt: skip
    if t.get("init_from"):
        params = initial_parameters(t.init_from, params, model_spec(cfg))
    state = create_train_state(params, optimizer, jax.random.key(cfg.seed), num_posthoc=len(posthoc))
    record = run_record(model_spec(cfg), process_spec(cfg), optimizer_spec(cfg), data_shape, num_classes(cfg),
                        posthoc, latent)  # fmt: skip
    config_json = json.loads(cfg.to_json_best_effort())
    use_labels = labels if num_classes(cfg) is not None else None

    def batch_iter(start_step):
        return batches(data, use_labels, t.batch_size, seed=cfg.seed, start_step=start_step,
                       process_index=jax.process_index(), process_count=jax.process_count())

    def preview(step, state):
        network = nnx.merge(graphdef, gather(state.ema_params, mesh))
        res = generate(cfg, wrap(network), process_of(network, process), jax.random.key(step), 64, data_shape,
                       latent_space=space)  # fmt: skip
        if is_main and len(data_shape) == 3:  # an image model (U-Net, DiT): preview grids
            save_image_grid(os.path.join(workdir, "samples", f"step_{step:07d}.png"), res.samples, 8)
            log_image(workdir, "samples", step, image_grid(res.samples, 8))  # also in TensorBoard

    hooks = [(t.sample_every, preview)] if t.sample_every else []
    if posthoc:
        snapshots = SnapshotStore(os.path.join(workdir, "ema_snapshots"))
        hooks.append((t.get("snapshot_every") or t.checkpoint_every,
                      lambda step, state: snapshots.save(step, state.posthoc)))  # fmt: skip
    train_config = TrainConfig(workdir, t.num_steps, checkpoint_every=t.checkpoint_every, keep=t.keep,
                               log_every=t.log_every,
                               metadata={"run": record, "config": config_json})  # fmt: skip
    saved = saved_config(workdir, missing_ok=True)

    def on_start(start_step):
        """Record the config of a new run; report the settings a resumed run changes."""
        path = os.path.join(workdir, "config.json")
        if is_main and not os.path.exists(path):
            with open(path, "w") as f:
                json.dump(config_json, f, indent=2)
        changes = config_changes(saved.to_dict(), config_json) if start_step and saved else []
        if is_main and changes:
            print(f"resuming at step {start_step} with changed settings (the checkpoints' network, "
                  "process and data agree, so these are accepted):\n  " + "\n  ".join(changes))  # fmt: skip

    result = train(train_config, train_step, state, batch_iter, mesh=mesh, hooks=hooks, on_start=on_start)
    loss = result.last_metrics.get("loss")
    summary = {"step": result.step, "start_step": result.start_step, "preempted": result.preempted,
               "loss": None if loss is None else float(loss)}  # fmt: skip
    if result.preempted:
        return summary

    n = cfg.sample.num_samples
    network = nnx.merge(graphdef, gather(result.state.ema_params, mesh))
    res = generate(cfg, wrap(network), process_of(network, process), jax.random.key(10_000), n,
                   data_shape, save_trajectory=cfg.model.kind == "mlp", latent_space=space)  # fmt: skip
    samples = np.asarray(res.samples)
    summary["nfe"] = int(res.nfe)
    if not is_main:
        return summary
    np.savez(os.path.join(workdir, "samples.npz"), samples=samples)
    if cfg.model.kind == "mlp":
        title = cfg.data.name
        if cfg.data.name == "checkerboard":
            summary["on_squares"] = float(np.mean(np.asarray(in_checkerboard(samples))))
            title += (f": {100 * summary['on_squares']:.1f}% of samples on the checkerboard's squares "
                      "(data: 100%)")
            print(title.split(": ", 1)[1])
        reference = data[:n, -1] if couplings_file(cfg) else data[:n]  # couplings: (noise, …, sample)
        path = save_samples_2d(os.path.join(workdir, "samples.png"), samples, reference, res.trajectory,
                               title=title, lim=3.0)  # fmt: skip
    else:
        path = save_image_grid(os.path.join(workdir, "samples.png"), samples[:64], 8)
    print(f"wrote {path} ({summary['nfe']} function evaluations per sample)")
    return summary


def training_mesh(cfg):
    """The devices of all processes as a data mesh, or with parallel.fsdp = F > 1 a (N/F) × F
    ('data', 'fsdp') mesh; ConfigError (before any data is read) if F does not divide the N devices or
    the batch does not split evenly over them."""
    n, fsdp = jax.device_count(), fsdp_setting(cfg)
    try:
        mesh = make_mesh(fsdp=fsdp) if fsdp > 1 else make_data_mesh()
    except ValueError as err:  # fsdp does not divide the devices: the library's message, as a config error
        raise ConfigError(f"parallel.fsdp={fsdp}: {err}") from None
    if cfg.train.batch_size % n:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not split over the {n} devices "
                          f"(data × fsdp = {n // fsdp} × {fsdp}): choose a multiple of {n}.")  # fmt: skip
    return mesh


def initial_parameters(source: str, params, spec: dict | None = None):
    """The EMA parameters of the work directory (or 'pretrained:NAME') `source`, to start (fine-tune) a
    new run whose network has the same parameter shapes; ConfigError naming the parameters whose shapes
    differ. Parameters the source does not have keep their initialisation and are listed: the interval
    embedding of a two-time network fine-tuned from a one-time one (MeanFlow from a flow-matching run),
    whose output layer starts at zero so that the new network starts as the source, u(x, t, s) = v(x, t),
    and a learned loss weighting (`WithUncertainty`: the source's network goes inside, its weighting
    starts fresh; a source's own learned weighting is not carried over)."""
    trained = load_run(source)[1]
    if spec is not None:  # fields that shape no parameter (time_scale, prediction) change the function
        mine = json.loads(json.dumps(spec))  # as recorded: tuples become lists
        changes = config_changes({k: v for k, v in trained.record["model"].items() if k != "preconditioning"},
                                 {k: v for k, v in mine.items() if k != "preconditioning"})  # fmt: skip
        if changes:
            print(f"note: this network differs from the one of {source} in " + "; ".join(changes))
    model = trained.model
    while not isinstance(model, nnx.Module) and hasattr(model, "network"):  # preconditioning, consistency
        model = model.network
    if isinstance(model, WithUncertainty):
        model = model.network
    theirs = nnx.state(model, nnx.Param)
    inside = (jax.tree_util.DictKey("network"),) if "uncertainty" in params else ()  # a WithUncertainty
    mine = jax.tree_util.tree_flatten_with_path(params)
    other = {inside + k: v for k, v in jax.tree_util.tree_flatten_with_path(theirs)[0]}
    bad = [f"{jax.tree_util.keystr(k)}: {np.shape(other[k])} → {np.shape(v)}" for k, v in mine[0]
           if k in other and np.shape(other[k]) != np.shape(v)]  # fmt: skip
    mine_keys = {k for k, _ in mine[0]}
    bad += [f"{jax.tree_util.keystr(k)}: {np.shape(v)} → absent" for k, v in other.items()
            if k not in mine_keys]  # fmt: skip
    if bad:
        raise ConfigError(f"train.init_from={source!r}: its network's parameters do not fit this one:\n  "
                          + "\n  ".join(bad[:10]))  # fmt: skip
    new = sorted({jax.tree_util.keystr(k[:1]) for k, _ in mine[0] if k not in other})
    print(f"starting from the EMA parameters of {source}"
          + (f" (new, freshly initialised: {', '.join(new)})" if new else ""))  # fmt: skip

    def start(path, fresh):
        if path in other:
            return other[path]
        name = jax.tree_util.keystr(path)  # a new interval embedding starts with a zero output layer:
        zero = "interval_embed" in name and "linear2" in name  # u(x, t, s) = the source's v(x, t)
        return jnp.zeros_like(fresh) if zero else fresh

    return jax.tree_util.tree_unflatten(mine[1], [start(k, v) for k, v in mine[0]])


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a Python config file (experiments/configs/*.py).",
                                lock_config=True)  # fmt: skip
flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    with user_errors():
        try:
            cfg = FLAGS.config
            list(cfg or {})  # a config file that failed to load raises on first use
        except OSError as err:  # the config file could not be loaded
            raise FileNotFoundError((str(err).splitlines() or [""])[-1].strip()) from None
        if cfg is None or FLAGS.workdir is None:
            raise ConfigError("give --config (e.g. experiments/configs/checkerboard_fm.py) and --workdir.")
        train_and_evaluate(cfg, FLAGS.workdir)


if __name__ == "__main__":
    __doc__ = (__doc__ or "") + config_fields_help()  # --help lists every field and sampler
    app.run(main, flags_parser=parse_flags)
