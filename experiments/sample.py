"""Sample a trained model from its work directory with any sampler (and guidance): PNG grid + .npz.

    python -m experiments.sample --workdir outputs/mnist_cfg --sampler dpm_solver_pp --steps 20 \
        --guidance 3.0 --labels 0,1,2,3,4,5,6,7,8,9 --num 100

Reads the run record and config saved with the newest good checkpoint (not the possibly edited config
file) and samples with the EMA parameters (`diffjax.load_model`). The noise is drawn once for all
samples and solved in compiled batches of --batch (a deterministic sampler's samples do not depend
on it). --couplings also writes the pairs (noise, sample) (`diffjax.reflow.save_couplings`), the
training data of a reflow run (`experiments/configs/mnist_reflow.py`):

    python -m experiments.sample --workdir outputs/mnist_fm --sampler midpoint --steps 10 \
        --num 16000 --couplings outputs/couplings/mnist_fm_midpoint10.npz

--waypoints m also keeps the solve's states at the m interior points of an (m + 1)-step uniform grid:
the training data of trajectory distillation (`experiments/configs/mnist_trajectory_distillation.py`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging

import diffjax as dj
from diffjax.reflow import Couplings, save_couplings, waypoints_of
from diffjax.viz import save_image_grid, save_samples_2d
from experiments.builders import (
    FEW_STEP_SAMPLERS,
    ConfigError,
    check_guide,
    generate,
    guidance_interval_flag,
    load_run,
    parse_flags,
    parse_sampler_spec,
    source_record,
    user_errors,
)
from experiments.optimize_grid import use_grid_file

flags.DEFINE_string("workdir", None, "A work directory written by experiments.train.")
flags.DEFINE_string("sampler", None, "Sampler spec name[:steps[:w]][:key=value...] (as "
                    "experiments.evaluate's --samplers; steps and w override --steps, --guidance; "
                    "key=value are the solver's options, e.g. dpm_solver_pp:10:order=3), name one of "
                    f"{tuple(dj.SOLVERS)} or a "
                    "few-step sampler 'flow_map' / 'flow_map_renoise' / 'flow_map_ddim' (two-time "
                    "networks) / 'consistency' (default: the config's)")
flags.DEFINE_integer("steps", None, "Number of sampler steps (default: the config's).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (class-conditional models).")
flags.DEFINE_bool("clip_denoised", None, "Clip x̂0 to [−1, 1] while sampling (default: the config's).")
flags.DEFINE_string("guide_by", None, "Autoguidance: a weaker model of the same process and conditioning "
                    "(a work directory, or WORKDIR@STEP: an earlier checkpoint); --guidance is its scale w.")
flags.DEFINE_list("guidance_interval", [], "σ_lo,σ_hi: guide only where σ/α lies in (σ_lo, σ_hi].")
flags.DEFINE_string("labels", "", "Comma-separated class labels, cycled over the samples.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", None, "Output prefix (default WORKDIR/sample_<sampler>_<steps>; for "
                    "pretrained:NAME outputs/pretrained/NAME/sample_<sampler>_<steps>).")
flags.DEFINE_string("grid_file", None, "A grid JSON of experiments.optimize_grid (solver, steps, times).")
flags.DEFINE_integer("batch", 1000, "Samples per compiled batch (memory).")
flags.DEFINE_string("couplings", None, "Also write the pairs (noise, sample) to this .npz file (reflow's "
                    "training data: use a deterministic sampler of an unconditional model).")
flags.DEFINE_integer("waypoints", 0, "With --couplings, also keep the states after every (steps/(m + 1))-th "
                     "step (m waypoints: the interior points of an (m + 1)-step student's uniform grid, "
                     "for trajectory distillation, loss.name='pair_distillation', num_steps m + 1).")
FLAGS = flags.FLAGS


def parse_labels(text: str, num: int, num_classes: int | None) -> np.ndarray | None:
    if not text:
        return None
    if num_classes is None:
        raise ConfigError("--labels given, but the model is not class-conditional.")
    try:
        cycle = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--labels must be comma-separated integers, got {text!r}.") from None
    bad = [v for v in cycle if not 0 <= v < num_classes]
    if bad:
        raise ConfigError(f"--labels {bad} outside the classes 0..{num_classes - 1}.")
    return np.array([cycle[i % len(cycle)] for i in range(num)])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        raise app.UsageError("give --workdir (a work directory written by experiments.train).")
    with user_errors():
        for name in ("steps", "num", "batch"):
            if FLAGS[name].value is not None and FLAGS[name].value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {FLAGS[name].value}.")
        spec = parse_sampler_spec(FLAGS.sampler) if FLAGS.sampler else None
        record = source_record(FLAGS.workdir)  # checked before any parameters are restored
        labels = parse_labels(FLAGS.labels, FLAGS.num, record.get("num_classes"))
        if FLAGS.guide_by:
            check_guide(FLAGS.workdir, record, FLAGS.guide_by)
        cfg, trained = load_run(FLAGS.workdir)
        if FLAGS.steps is not None:
            cfg.sample.num_steps = FLAGS.steps
        if FLAGS.guidance is not None:
            cfg.sample.guidance_scale = FLAGS.guidance
        if spec is not None:  # the spec's steps and w win over --steps and --guidance
            spec.apply(cfg)
        if FLAGS.clip_denoised is not None:
            cfg.sample.clip_denoised = FLAGS.clip_denoised
        if FLAGS.guidance_interval:
            cfg.sample.guidance_interval = guidance_interval_flag(FLAGS.guidance_interval)
        if FLAGS.grid_file:
            use_grid_file(cfg, FLAGS.grid_file)
        if FLAGS.couplings and (not FLAGS.couplings.endswith(".npz") or trained.num_classes is not None):
            raise ConfigError(f"--couplings {FLAGS.couplings!r}: the pairs of an unconditional model, "
                              f"written to a .npz file (the model has {trained.num_classes} classes).")
        if FLAGS.waypoints and (not FLAGS.couplings or cfg.sample.sampler in FEW_STEP_SAMPLERS
                                or FLAGS.waypoints < 0 or cfg.sample.num_steps % (FLAGS.waypoints + 1)):
            raise ConfigError(f"--waypoints {FLAGS.waypoints}: the states of a fixed-grid ODE solve kept "
                              f"with --couplings; --steps ({cfg.sample.num_steps}) must be a multiple of "
                              f"{FLAGS.waypoints + 1}.")  # fmt: skip
        home = (os.path.join("outputs", "pretrained", FLAGS.workdir.split(":", 1)[1])  # not a directory
                if FLAGS.workdir.startswith("pretrained:") else FLAGS.workdir)  # fmt: skip
        out = FLAGS.out or os.path.join(home, f"sample_{cfg.sample.sampler}_{cfg.sample.num_steps}")
        if FLAGS.couplings and os.path.abspath(FLAGS.couplings) == os.path.abspath(out + ".npz"):
            raise ConfigError(f"--couplings {FLAGS.couplings!r} is the samples' file {out}.npz: "
                              "name another.")
        bad = load_run(FLAGS.guide_by)[1].model if FLAGS.guide_by else None
        data_shape = tuple(trained.record["data_shape"])
        k_prior, k_steps = jax.random.split(jax.random.key(FLAGS.seed))
        noise = trained.process.prior_sample(k_prior, (FLAGS.num, *data_shape))
        chunks, waypoints, times = [], [], ()
        if FLAGS.waypoints:  # the sampler's grid: a name (with the options' t_eps) or a grid file's times
            grid, t_eps = cfg.sample.get("grid", "uniform"), dict(cfg.sample.options).get("t_eps")
            ts = (dj.make_grid(trained.process, cfg.sample.num_steps, grid, t_eps)
                  if isinstance(grid, str) else np.asarray(grid))  # fmt: skip
        for i, lo in enumerate(range(0, FLAGS.num, FLAGS.batch)):
            hi = min(lo + FLAGS.batch, FLAGS.num)
            res = generate(cfg, trained.model, trained.process, jax.random.fold_in(k_steps, i), hi - lo,
                           data_shape, labels=None if labels is None else labels[lo:hi],
                           x_init=noise[lo:hi], latent_space=trained.latent_space, bad_model=bad,
                           save_trajectory=bool(FLAGS.waypoints))  # fmt: skip
            chunks.append(np.asarray(res.samples))
            if FLAGS.waypoints:
                times, states = waypoints_of(res.trajectory, ts, FLAGS.waypoints)
                waypoints.append(np.asarray(states))
    samples = np.concatenate(chunks)
    if FLAGS.couplings:
        header = dict(workdir=os.path.abspath(FLAGS.workdir), step=trained.step, sampler=cfg.sample.sampler,
                      num_steps=cfg.sample.num_steps, nfe=int(res.nfe), seed=FLAGS.seed,
                      clip_denoised=bool(cfg.sample.clip_denoised), process=trained.record["process"])
        pairs = Couplings(np.asarray(noise), samples, json.dumps(header, sort_keys=True),
                          np.concatenate(waypoints) if waypoints else None, times)  # fmt: skip
        save_couplings(FLAGS.couplings, pairs)
        print(f"wrote {FLAGS.num} couplings to {FLAGS.couplings}"
              + (f" with waypoints at t = {', '.join(f'{t:g}' for t in times)}" if times else ""))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    np.savez(out + ".npz", samples=samples, labels=labels if labels is not None else np.zeros(0))
    if samples.ndim == 4:  # the grid shows the first 400
        save_image_grid(out + ".png", samples[:400], ncol=10 if labels is not None else None)
    else:
        save_samples_2d(out + ".png", samples, title=f"{cfg.sample.sampler}, {cfg.sample.num_steps} steps")
    evals = f"{int(res.nfe)} evaluations" + (" of each of two networks" if bad is not None else "")
    print(f"step {trained.step}: wrote {out}.png and {out}.npz ({evals} per sample)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
