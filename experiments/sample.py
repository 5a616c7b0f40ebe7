"""Sample a trained model from its checkpoint with any sampler (and guidance): PNG grid + .npz.

    python experiments/sample.py --workdir outputs/mnist_cfg --sampler dpm_solver_pp --steps 20 \
        --guidance 3.0 --labels 0,1,2,3,4,5,6,7,8,9 --num 100

Reads the config saved by train.py in the work directory, restores the newest good checkpoint and
samples with the EMA parameters.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from builders import build_process, generate, load  # noqa: E402

from diffjax.viz import save_image_grid, save_samples_2d  # noqa: E402

flags.DEFINE_string("workdir", None, "A work directory written by train.py.")
flags.DEFINE_string("sampler", None, "Sampler name (default: the config's).")
flags.DEFINE_integer("steps", None, "Number of sampler steps (default: the config's).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (class-conditional models).")
flags.DEFINE_bool("clip_denoised", None, "Clip x̂0 to [−1, 1] while sampling (default: the config's).")
flags.DEFINE_string("labels", "", "Comma-separated class labels, cycled over the samples.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", None, "Output prefix (default WORKDIR/sample_<sampler>_<steps>).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    cfg, graphdef, params, step = load(FLAGS.workdir)
    cfg.sample.sampler = FLAGS.sampler or cfg.sample.sampler
    cfg.sample.num_steps = FLAGS.steps or cfg.sample.num_steps
    if FLAGS.guidance is not None:
        cfg.sample.guidance_scale = FLAGS.guidance
    if FLAGS.clip_denoised is not None:
        cfg.sample.clip_denoised = FLAGS.clip_denoised
    labels = None
    if FLAGS.labels:
        cycle = [int(v) for v in FLAGS.labels.split(",")]
        labels = np.array([cycle[i % len(cycle)] for i in range(FLAGS.num)])
    res = generate(cfg, graphdef, params, build_process(cfg), jax.random.key(FLAGS.seed), FLAGS.num,
                   labels=labels)  # fmt: skip
    samples = np.asarray(res.samples)
    out = FLAGS.out or os.path.join(FLAGS.workdir, f"sample_{cfg.sample.sampler}_{cfg.sample.num_steps}")
    np.savez(out + ".npz", samples=samples, labels=labels if labels is not None else np.zeros(0))
    if samples.ndim == 4:
        save_image_grid(out + ".png", samples, ncol=10 if labels is not None else None)
    else:
        save_samples_2d(out + ".png", samples, title=f"{cfg.sample.sampler}, {cfg.sample.num_steps} steps")
    print(f"step {step}: wrote {out}.png and {out}.npz ({int(res.nfe)} evaluations per sample)")


if __name__ == "__main__":
    app.run(main)
