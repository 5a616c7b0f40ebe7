"""Train a diffusion / flow-matching model from a Python config, data-parallel over all devices.

    python experiments/train.py --config experiments/configs/checkerboard_fm.py --workdir outputs/demo
    python experiments/train.py --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm \
        --config.data.data_dir=../shared/data/mnist --config.train.num_steps=3000

Any config field can be overridden on the command line (`--config.train.batch_size=256`). Rerunning
the same command resumes from the newest good checkpoint in the work directory. Multi-host: set
`--config.distributed.coordinator_address=HOST:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i` on every host (or leave empty where the cluster provides it).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from builders import build_loss_fn, build_model, build_process, generate, num_classes  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffjax.data import batches, in_checkerboard, load_dataset  # noqa: E402
from diffjax.models import count_params  # noqa: E402
from diffjax.training import (  # noqa: E402
    TrainConfig,
    create_train_state,
    make_optimizer,
    make_train_step,
    maybe_initialize_distributed,
    train,
)
from diffjax.viz import save_image_grid, save_samples_2d  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a Python config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    cfg, workdir = FLAGS.config, FLAGS.workdir
    dist = cfg.distributed
    maybe_initialize_distributed(dist.coordinator_address or None,
                                 dist.num_processes if dist.coordinator_address else None,
                                 dist.process_id if dist.coordinator_address else None)  # fmt: skip
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    data, labels = load_dataset(cfg.data.name, "train", cfg.data.data_dir or None,
                                cfg.data.source, cfg.data.num_examples or None)  # fmt: skip
    process = build_process(cfg)
    model = build_model(cfg, cfg.seed)
    graphdef, params = nnx.split(model)
    if is_main:
        print(f"{cfg.data.name}: {data.shape[0]} examples; model {cfg.model.kind} with "
              f"{count_params(params):,} parameters; {jax.device_count()} device(s), "
              f"{jax.process_count()} process(es)")  # fmt: skip

    t = cfg.train
    optimizer, schedule = make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps,
                                         total_steps=t.num_steps, weight_decay=t.weight_decay,
                                         clip_norm=t.clip_norm)  # fmt: skip
    train_step = make_train_step(build_loss_fn(cfg, graphdef, process), optimizer,
                                 ema_decay=t.ema_decay, schedule=schedule)  # fmt: skip
    state = create_train_state(params, optimizer, jax.random.key(cfg.seed))
    use_labels = labels if num_classes(cfg) is not None else None

    def batch_iter(start_step):
        return batches(data, use_labels, t.batch_size, seed=cfg.seed, start_step=start_step,
                       process_index=jax.process_index(), process_count=jax.process_count())

    def preview(step, state):
        res = generate(cfg, graphdef, state.ema_params, process, jax.random.key(step), 64)
        if is_main and cfg.model.kind == "unet":
            save_image_grid(os.path.join(workdir, "samples", f"step_{step:07d}.png"), res.samples, 8)

    hooks = [(t.sample_every, preview)] if t.sample_every else []
    result = train(TrainConfig(workdir, t.num_steps, checkpoint_every=t.checkpoint_every, keep=t.keep,
                               log_every=t.log_every, metadata=json.loads(cfg.to_json_best_effort())),
                   train_step, state, batch_iter, hooks=hooks)  # fmt: skip
    if result.preempted:
        return

    n = cfg.sample.num_samples
    res = generate(cfg, graphdef, result.state.ema_params, process, jax.random.key(10_000), n,
                   save_trajectory=cfg.model.kind == "mlp")  # fmt: skip
    samples = np.asarray(res.samples)
    if not is_main:
        return
    np.savez(os.path.join(workdir, "samples.npz"), samples=samples)
    if cfg.model.kind == "mlp":
        summary = ""
        if cfg.data.name == "checkerboard":
            frac = float(np.mean(np.asarray(in_checkerboard(samples))))
            summary = f"{100 * frac:.1f}% of samples on the checkerboard's squares (data: 100%)"
        path = save_samples_2d(os.path.join(workdir, "samples.png"), samples, data[:n],
                               res.trajectory, title=f"{cfg.data.name}: {summary}", lim=3.0)  # fmt: skip
        print(summary)
    else:
        path = save_image_grid(os.path.join(workdir, "samples.png"), samples[:64], 8)
    print(f"wrote {path} ({int(res.nfe)} function evaluations per sample)")


if __name__ == "__main__":
    app.run(main)
