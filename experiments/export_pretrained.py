"""Export a finished run as a pretrained network (`diffjax.save_pretrained`): its EMA parameters in
float16 and a card with the run record, the config, the training cost and the evaluations measured on it.

    python -m experiments.export_pretrained --workdir outputs/mnist_fm --name mnist_fm \
        --sampler midpoint:10 --results outputs/results.jsonl \
        --description "MNIST, flow matching on the CondOT path, velocity U-Net"

The files go to diffjax/weights/<name>.{npz,json} (installed with the package) unless --out_dir says
otherwise; `dj.load_pretrained(name)` and every script's `--workdir pretrained:<name>` then load it.
The card's evaluations are the rows of --results (JSON lines of experiments.evaluate) whose model is
the work directory's name, the newest per sampler × NFE × EMA × clipping.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

import diffjax as dj
from diffjax.pretrained import network_parameters, weights_dir
from experiments.builders import (
    ConfigError,
    load_run,
    parse_flags,
    parse_sampler_spec,
    train_wall_time,
    user_errors,
)

flags.DEFINE_string("workdir", None, "A finished work directory of experiments.train.")
flags.DEFINE_string("name", None, "The pretrained network's name (letters, digits, _).")
flags.DEFINE_string("out_dir", None, "Where to write <name>.npz/.json (default: diffjax/weights).")
flags.DEFINE_string("sampler", None, "The sampler it is meant for, name:steps (default: the config's).")
flags.DEFINE_string("results", None, "JSON lines of experiments.evaluate: this run's rows go into the card.")
flags.DEFINE_string("description", "", "One line on what the network is.")
flags.DEFINE_enum("storage", "float16", ["float16", "float32"], "Storage dtype of the parameters.")
FLAGS = flags.FLAGS


def evaluations(path: str, model: str) -> list[dict]:
    """The newest row per (sampler, steps, grid, EMA, clipping, w, guidance interval, autoguiding model,
    noise seed) of `model` in a results file."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keep = {}
    for r in rows:
        if r.get("model") == model and "fd_mnist" in r:
            interval = tuple(r.get("guidance_interval") or ())  # a list in JSON; none and [] are the same
            key = (r["sampler"], r["steps"], r.get("grid"), r.get("ema"), r.get("clip_denoised"),
                   r.get("guidance_scale"), interval, r.get("guided_by"), r.get("seed"))  # fmt: skip
            keep[key] = {k: r[k] for k in ("sampler", "steps", "grid", "nfe", "fd_mnist", "class_tv",
                                           "clip_denoised", "num_samples", "ema", "guidance_scale",
                                           "guidance_interval", "conditional_accuracy", "guided_by", "seed")
                         if r.get(k) is not None}  # fmt: skip
    return list(keep.values())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with user_errors():
        if not FLAGS.workdir or not FLAGS.name:
            raise ConfigError("give --workdir (a finished run) and --name.")
        if not FLAGS.name.replace("_", "").isalnum():
            raise ConfigError(f"--name {FLAGS.name!r}: use letters, digits and _ only.")
        if FLAGS.results and not os.path.isfile(FLAGS.results):
            raise FileNotFoundError(f"--results {FLAGS.results!r}: no such file.")
        cfg, trained = load_run(FLAGS.workdir)
        sampler, steps = cfg.sample.sampler, cfg.sample.num_steps
        if FLAGS.sampler:
            sampler, steps, _, options = parse_sampler_spec(FLAGS.sampler)
            if options:
                raise ConfigError(f"--sampler {FLAGS.sampler!r}: a card records a sampler's name and steps, "
                                  "not its options.")
            steps = steps or cfg.sample.num_steps
        cfg.sample.update(sampler=sampler, num_steps=int(steps))
        model = os.path.basename(os.path.normpath(FLAGS.workdir))
        training = {"workdir": model, "steps": int(trained.step),
                    "wall_time_s": train_wall_time(FLAGS.workdir),
                    "machine": "2 CPU cores (shared with other jobs: an upper bound)"}  # fmt: skip
        card = {
            "name": FLAGS.name, "description": FLAGS.description,
            "config": json.loads(cfg.to_json_best_effort()),
            "sampler": {"name": sampler, "num_steps": int(steps)}, "training": training,
            "evaluations": evaluations(FLAGS.results, model) if FLAGS.results else [],
        }  # fmt: skip
        out_dir = FLAGS.out_dir or weights_dir()
        path = dj.save_pretrained(trained, os.path.join(out_dir, FLAGS.name + ".npz"), card,
                                  storage_dtype=FLAGS.storage)  # fmt: skip
    # the rounding the storage dtype costs, measured on the parameters
    back = dj.load_pretrained(path)
    ref, got = network_parameters(trained.model), network_parameters(back.model)
    rel = max(float(np.max(np.abs(got[k] - ref[k])) / (np.max(np.abs(ref[k])) or 1.0)) for k in ref)
    size = os.path.getsize(path) / 2**20
    print(f"wrote {path} ({size:.2f} MiB, {FLAGS.storage}; largest relative rounding of a parameter "
          f"tensor {rel:.1e}) and its card; load it with dj.load_pretrained({FLAGS.name!r})")  # fmt: skip


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
