"""Train the first stage of latent diffusion — a KL autoencoder (`diffjax.models.Autoencoder`, loss
`diffjax.latent.autoencoder_loss`) — and cache the normalised latents of its training set.

    python -m experiments.train_autoencoder --config experiments/configs/mnist_autoencoder.py \
        --workdir outputs/mnist_autoencoder --config.data.data_dir=../shared/data/mnist

The work directory gets Orbax checkpoints with a run record (resumable: rerunning the command resumes;
SIGTERM saves), `reconstructions.png` (test images, and below each row their reconstructions from the
EMA parameters), `latents.npz` (z̃ = (μ(x) − shift)·scale of every training image, its labels, shift and
scale: the training data of a latent model, `--config.data.latents=WORKDIR` in experiments.train) and
`summary.json` (test reconstruction error, PSNR, the latents' statistics before normalisation).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from diffjax.data import batches, load_dataset
from diffjax.latent import LatentSpace, autoencoder_loss, decode_latents, encode_dataset, latent_statistics
from diffjax.models import AutoencoderConfig, build_model, count_params
from diffjax.training import (
    TrainConfig,
    create_train_state,
    make_data_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from diffjax.training.workdir import run_record
from diffjax.viz import save_image_grid
from experiments.builders import ConfigError, parse_flags, user_errors

LATENTS_FILE = "latents.npz"


def validate(cfg) -> None:
    """ConfigError before any data is read: the network's fields, positive sizes and periods."""
    t = cfg.train
    for key in ("num_steps", "batch_size", "checkpoint_every", "keep", "log_every"):
        if not (isinstance(t[key], int) and t[key] >= 1):
            raise ConfigError(f"train.{key} must be an integer >= 1, got {t[key]!r}")
    if not 0 <= t.warmup_steps < t.num_steps:
        raise ConfigError(
            f"train.warmup_steps must lie in [0, num_steps = {t.num_steps}), got {t.warmup_steps}"
        )
    if cfg.loss.kl_weight < 0:
        raise ConfigError(f"loss.kl_weight must be >= 0, got {cfg.loss.kl_weight}")
    if cfg.model.kind != "autoencoder":
        raise ConfigError(f"model.kind must be 'autoencoder' here, got {cfg.model.kind!r} (experiments.train "
                          "trains diffusion models)")  # fmt: skip
    try:
        AutoencoderConfig(**dict(cfg.model.kwargs))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid model.kwargs: {err}") from None


def optimizer_spec(cfg) -> dict:
    t = cfg.train
    return dict(learning_rate=t.learning_rate, total_steps=t.num_steps, warmup_steps=t.warmup_steps,
                weight_decay=t.weight_decay, clip_norm=t.clip_norm)  # fmt: skip


def train_autoencoder(cfg, workdir: str) -> dict:
    """Train (or resume) the autoencoder of `cfg` in `workdir`; then write reconstructions.png,
    latents.npz and summary.json's evaluation (module docstring). Returns the evaluation."""
    validate(cfg)
    os.makedirs(workdir, exist_ok=True)
    d = cfg.data
    data, labels = load_dataset(d.name, "train", d.data_dir or None, d.source, d.num_examples or None)
    spec = {"kind": "autoencoder", **dict(cfg.model.kwargs)}
    graphdef, params = nnx.split(build_model(spec, cfg.seed))
    print(f"{d.name}: {len(data)} examples; autoencoder with {count_params(params):,} parameters, latents "
          f"{AutoencoderConfig(**dict(cfg.model.kwargs)).latent_shape}")  # fmt: skip
    t = cfg.train
    optimizer, schedule = make_optimizer(**optimizer_spec(cfg))

    def loss_fn(params, batch, key):
        return autoencoder_loss(nnx.merge(graphdef, params), batch[0], key, kl_weight=cfg.loss.kl_weight)

    step = make_train_step(loss_fn, optimizer, ema_decay=t.ema_decay, schedule=schedule)
    state = create_train_state(params, optimizer, jax.random.key(cfg.seed))
    record = run_record(spec, {}, optimizer_spec(cfg), data.shape[1:])
    config = TrainConfig(
        workdir,
        t.num_steps,
        checkpoint_every=t.checkpoint_every,
        keep=t.keep,
        log_every=t.log_every,
        metadata={"run": record, "config": json.loads(cfg.to_json_best_effort())},
    )
    result = train(config, step, state,
                   lambda start: batches(data, None, t.batch_size, seed=cfg.seed, start_step=start),
                   mesh=make_data_mesh())  # fmt: skip
    if result.preempted:
        return {"preempted": True, "step": result.step}
    autoencoder = nnx.merge(graphdef, jax.device_get(result.state.ema_params))
    test_x = load_dataset(d.name, "test", d.data_dir or None, d.source)[0]
    return evaluate_and_cache(autoencoder, workdir, data, labels, test_x)


def evaluate_and_cache(autoencoder, workdir, train_x, train_y, test_x) -> dict:
    """Test reconstruction error and PSNR, a reconstruction grid, and latents.npz of the training set."""
    raw = encode_dataset(LatentSpace(autoencoder), train_x)
    shift, scale = latent_statistics(raw)
    space = LatentSpace(autoencoder, shift, scale)
    np.savez(os.path.join(workdir, LATENTS_FILE), latents=((raw - shift) * scale).astype(np.float32),
             labels=train_y, shift=shift, scale=scale)  # fmt: skip
    recon = np.clip(decode_latents(space, encode_dataset(space, test_x)), -1, 1)
    mse = float(np.mean((recon - test_x) ** 2))
    psnr = float(10 * np.log10(4.0 / mse))  # peak-to-peak 2 on [−1, 1]
    rows = [np.concatenate([test_x[i : i + 8], recon[i : i + 8]]) for i in range(0, 32, 8)]
    save_image_grid(os.path.join(workdir, "reconstructions.png"), np.concatenate(rows), 8)
    evaluation = {"test_mse": round(mse, 6), "test_psnr_db": round(psnr, 2),
                  "latent_shape": list(raw.shape[1:]),
                  "latent_shift": shift, "latent_scale": scale, "num_latents": len(raw)}  # fmt: skip
    with open(os.path.join(workdir, "evaluation.json"), "w") as f:
        json.dump(evaluation, f, indent=1)
    print(
        f"test reconstruction MSE {mse:.5f} (PSNR {psnr:.2f} dB); latents {raw.shape[1:]} with mean "
        f"{shift:.4f}, std {1 / scale:.4f} → normalised; wrote {workdir}/{LATENTS_FILE}, reconstructions.png"
    )
    return evaluation


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    FLAGS = flags.FLAGS
    with user_errors():
        if FLAGS.config is None or FLAGS.workdir is None:
            raise ConfigError("give --config (e.g. experiments/configs/mnist_autoencoder.py) and --workdir.")
        train_autoencoder(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":  # flags defined here: experiments.train (imported alongside) owns --config too
    config_flags.DEFINE_config_file("config", None, "experiments/configs/mnist_autoencoder.py or a variant.",
                                    lock_config=True)  # fmt: skip
    flags.DEFINE_string("workdir", None, "Checkpoints, latents and reconstructions go here.")
    app.run(main, flags_parser=parse_flags)
