"""Evaluate trained MNIST models: FD-MNIST, class histogram / conditional accuracy, bits/dim.

    python -m experiments.evaluate --workdirs outputs/mnist_fm,outputs/mnist_cfg \
        --samplers euler:20,heun:10,dpm_solver_pp:10,dpm_solver_pp:20:4 --num 1000 \
        --bpd_examples 64 --data_dir ../shared/data/mnist --out outputs/results.json

A sampler spec is name:steps[:w][:key=value...] (w: classifier-free guidance scale for
class-conditional models, default the config's; key=value: the solver's options, e.g.
deis:10:order=3:interpolate_in=log_snr — they update the config's sample.options for its own sampler
and replace them for another; a row records them).
Bits/dim: through the probability-flow ODE (adaptive Tsit5 at rtol = atol =
1e-5 by default, Hutchinson, dequantized) for continuous-time models — fixed-step solvers need many
steps near the data end (on mnist_fm, 8 images: Heun 50 steps −0.16, 200 steps 1.38, 800 steps
1.64; Tsit5 1e-4 1.68, 1e-5 1.67 bits/dim), next to the continuous-time ELBO of the same images
(`diffjax.continuous_elbo`, VDM's 8-bit decoder, 64 stratified times per image); the variational
bound (Ho et al. eq. 5, all 1000 terms) for the DDPM chain.

Autoguidance (Karras et al. 2024): `--guide_by outputs/mnist_edm@500 --samplers edm:17:2` samples
D_bad + w·(D − D_bad) with the run's own checkpoint of step 500 as the weaker model D_bad (any work
directory of the same process and conditioning works; WORKDIR@STEP names any kept checkpoint, also in
--workdirs) at w = 2; two network evaluations per sampler evaluation, counted in the NFE column.

Post-hoc EMA (EDM2): `--sigma_rels 0.02,0.05,0.1,0.2` evaluates, for a run trained with
`train.posthoc_ema`, the EMA of each width reconstructed from its snapshots (one row per width, with
the profile's least-squares residual), next to the run's own EMA ('ema' column).

Features come from a small MNIST CNN trained once (cached by content hash in --cache_dir, test
accuracy reported); "FD-MNIST" is the Fréchet distance of its penultimate features to the MNIST
test set — not comparable with Inception FID. Appends one JSON row per model × sampler × NFE and
prints a markdown table.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging

from diffjax.data import load_dataset
from diffjax.evaluation import (
    class_histogram,
    class_tv,
    conditional_accuracy,
    feature_statistics,
    frechet_distance,
    load_or_train_classifier,
)
from diffjax.evaluation.classifier import RECIPE
from diffjax.likelihood import bits_per_dim, continuous_elbo, variational_bound
from experiments.builders import (
    ConfigError,
    check_guide,
    generate,
    guidance_interval_flag,
    load_run,
    num_classes,
    parse_flags,
    parse_sampler_spec,
    source_record,
    train_wall_time,
    user_errors,
)
from experiments.optimize_grid import use_grid_file
from experiments.tables import emit_row, markdown_table, print_tables

flags.DEFINE_string("workdirs", None, "Comma-separated work directories written by experiments.train, or "
                    "pretrained:NAME for a network shipped with diffjax (e.g. pretrained:mnist_fm).")
flags.DEFINE_string("table", None, "Only print the markdown table of the rows in this JSON lines file.")
flags.DEFINE_string("samplers", "euler:20,heun:10,dpm_solver_pp:10",
                    "name:steps[:w][:key=value...], comma-separated.")
flags.DEFINE_integer("num", 1000, "Samples per model × sampler.")
flags.DEFINE_integer("seed", 1, "PRNG seed of the samples (the same noise for every model and sampler; "
                     "another seed measures FD-MNIST's sampling spread).")
flags.DEFINE_list("sigma_rels", [], "Post-hoc EMA widths σ_rel to evaluate (runs with train.posthoc_ema).")
flags.DEFINE_bool("clip_denoised", None, "Clip x̂0 to [−1, 1] while sampling (default: the config's).")
flags.DEFINE_integer("bpd_examples", 64, "Test images for bits/dim (0 to skip).")
flags.DEFINE_string("bpd_solver", "tsit5", "Bits/dim PF-ODE solver: tsit5/dopri5 (adaptive), heun/rk4.")
flags.DEFINE_float("bpd_tol", 1e-5, "rtol = atol of the adaptive bits/dim solver.")
flags.DEFINE_integer("bpd_steps", 200, "Steps of a fixed-step bits/dim solver.")
flags.DEFINE_integer("classifier_steps", RECIPE["steps"], "Training steps of the feature classifier.")
flags.DEFINE_string("data_dir", None, "MNIST IDX directory (else DIFFJAX_DATA_DIR).")
flags.DEFINE_string("cache_dir", "outputs/cache", "Where the evaluation classifier is cached.")
flags.DEFINE_string("out", "outputs/results.jsonl", "JSON lines file each row is appended to as soon as it "
                    "is computed.")
flags.DEFINE_string("guide_by", None, "Autoguidance (Karras et al. 2024): guide every model by this weaker "
                    "one of the same process and conditioning — a work directory, or WORKDIR@STEP for an "
                    "earlier checkpoint of the run; the w of each sampler spec is its scale.")
flags.DEFINE_list("guidance_interval", [], "σ_lo,σ_hi: guide (CFG or autoguidance) only where σ/α lies in "
                  "(σ_lo, σ_hi] (Kynkäänniemi et al. 2024); default: everywhere.")
flags.DEFINE_string("grid_file", None, "Also evaluate the grid of experiments.optimize_grid (JSON): "
                    "its solver and steps on its optimised times (row grid='optimized').")
FLAGS = flags.FLAGS


def check_inputs(sources: list[str]) -> None:
    """Everything the evaluation will need, checked before the classifier is trained or any model is
    sampled: every source exists and is an MNIST model, every sampler spec parses and names a sampler,
    post-hoc EMA widths only for runs that tracked them."""
    for spec in FLAGS.samplers.split(",") if FLAGS.samplers else []:
        if parse_sampler_spec(spec, "--samplers").steps is None:
            raise ConfigError(f"--samplers: {spec!r} names no number of steps (name:steps[:w], e.g. heun:10)")
    for source in sources:
        record = source_record(source)
        shape = tuple((record.get("latent") or {}).get("image_shape", record["data_shape"]))  # decoded
        if shape != (28, 28, 1):
            raise ConfigError(f"{source}: FD-MNIST and the class metrics need an MNIST model (28×28×1); this "
                              f"one generates {shape} (2-D: experiments.evaluate_2d).")
        if FLAGS.sigma_rels and not record.get("posthoc_ema"):
            raise ConfigError(f"{source}: --sigma_rels needs a run trained with train.posthoc_ema.")
        if FLAGS.guide_by:
            check_guide(source, record, FLAGS.guide_by)
    if FLAGS.guidance_interval:
        guidance_interval_flag(FLAGS.guidance_interval)


def evaluate_workdir(workdir, clf, test_stats, test_x, test_freq, sigma_rel=None, out=None, bad=None):
    """Rows of one model (× EMA), each appended to the JSON lines file `out` as soon as it is computed;
    bad: autoguidance's weaker model (`--guide_by`)."""
    cfg, trained = load_run(workdir, sigma_rel)
    process, step, model = trained.process, trained.step, trained.model
    if FLAGS.clip_denoised is not None:
        cfg.sample.clip_denoised = FLAGS.clip_denoised
    if FLAGS.guidance_interval:
        cfg.sample.guidance_interval = guidance_interval_flag(FLAGS.guidance_interval)
    clip = bool(cfg.sample.get("clip_denoised", False))
    rows = []
    bpd = bpd_se = elbo = elbo_se = None
    if FLAGS.bpd_examples and trained.latent_space is not None:
        print(f"{workdir}: a model of latents — its likelihood is not of the pixels: no bits/dim")
    elif FLAGS.bpd_examples:
        x8 = np.round((test_x[: FLAGS.bpd_examples] + 1) * 127.5).astype(np.uint8)
        if not process.has_rates:  # the DDPM chain: its variational bound
            res = jax.jit(variational_bound)(model, process, x8 / np.float32(127.5) - 1, jax.random.key(0))
            per_image = np.asarray(res.total)
        else:
            res = bits_per_dim(model, process, x8, jax.random.key(0), divergence="hutchinson",
                               solver=FLAGS.bpd_solver, rtol=FLAGS.bpd_tol, atol=FLAGS.bpd_tol,
                               num_steps=FLAGS.bpd_steps)  # fmt: skip
            per_image = np.asarray(res.bits_per_dim)
            # the continuous-time ELBO (VDM's 8-bit decoder, 64 stratified times per image)
            x = x8 / np.float32(127.5) - 1
            t_eps = process.default_t_eps or 1e-3 * abs(process.t_noise - process.t_data)
            bound = continuous_elbo(model, process, x, jax.random.key(2), num_times=64, t_eps=t_eps,
                                    decoder="discrete")  # fmt: skip
            per_elbo = np.asarray(bound.total) / (x[0].size * np.log(2.0))
            elbo, elbo_se = float(per_elbo.mean()), float(per_elbo.std() / np.sqrt(len(per_elbo)))
        bpd, bpd_se = float(per_image.mean()), float(per_image.std() / np.sqrt(len(per_image)))
    specs = FLAGS.samplers.split(",") if FLAGS.samplers else []
    for spec in specs + (["grid_file"] if FLAGS.grid_file else []):
        if spec == "grid_file":
            name, steps = use_grid_file(cfg, FLAGS.grid_file)["solver"], cfg.sample.num_steps
        else:
            parsed = parse_sampler_spec(spec, "--samplers")
            parsed.apply(cfg)
            name, steps = parsed.name, parsed.steps
        grid = "optimized" if spec == "grid_file" else cfg.sample.get("grid", "uniform")
        labels = np.arange(FLAGS.num) % 10 if num_classes(cfg) is not None else None
        res = generate(cfg, model, process, jax.random.key(FLAGS.seed), FLAGS.num,
                       trained.record["data_shape"], labels=labels, latent_space=trained.latent_space,
                       bad_model=bad)  # fmt: skip
        samples = np.clip(np.asarray(res.samples), -1, 1)
        fd = frechet_distance(*feature_statistics(clf.features(samples)), *test_stats)
        hist = class_histogram(clf, samples)
        ema = (f"σ_rel {sigma_rel} (residual {trained.residual:.3f})" if sigma_rel
               else f"decay {cfg.train.ema_decay}")  # fmt: skip
        nfe = int(res.nfe) * (2 if bad is not None else 1)  # autoguidance: two networks per evaluation
        row = dict(model=os.path.basename(os.path.normpath(workdir)), ema=ema, sampler=name, steps=int(steps),
                   grid=grid, nfe=nfe, fd_mnist=round(fd, 3), train_steps=step,
                   train_time_s=train_wall_time(workdir), bits_per_dim=bpd, bits_per_dim_se=bpd_se,
                   elbo_bits_per_dim=elbo, elbo_bits_per_dim_se=elbo_se,
                   clip_denoised=clip, num_samples=FLAGS.num, seed=FLAGS.seed,
                   class_tv=round(class_tv(hist, test_freq), 4),
                   class_histogram=[round(float(v), 3) for v in hist])  # fmt: skip
        if labels is not None:
            row["conditional_accuracy"] = round(conditional_accuracy(clf, samples, labels), 4)
        if dict(cfg.sample.options):
            row["options"] = dict(cfg.sample.options)
        if labels is not None or bad is not None:
            row["guidance_scale"] = cfg.sample.guidance_scale
        if bad is not None:
            row["guided_by"] = FLAGS.guide_by
        if FLAGS.guidance_interval:
            row["guidance_interval"] = list(cfg.sample.guidance_interval)
        rows.append(row)
        emit_row(row, out)
    return rows


def main(argv):
    del argv
    if FLAGS.table:
        return print_tables(FLAGS.table)
    if not FLAGS.workdirs:
        raise app.UsageError("give --workdirs (work directories to evaluate) or --table (a results file)")
    sources = FLAGS.workdirs.split(",")
    logging.set_verbosity(logging.WARNING)
    with user_errors():
        check_inputs(sources)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    clf = load_or_train_classifier(FLAGS.cache_dir, FLAGS.data_dir, steps=FLAGS.classifier_steps)
    print(f"evaluation classifier: MNIST test accuracy {100 * clf.test_accuracy:.2f}%")
    test_x, test_y = load_dataset("mnist", "test", FLAGS.data_dir)
    test_stats = feature_statistics(clf.features(test_x))
    test_freq = np.bincount(test_y, minlength=10) / len(test_y)
    train_x, _ = load_dataset("mnist", "train", FLAGS.data_dir, num_examples=FLAGS.num)
    fd_ref = frechet_distance(*feature_statistics(clf.features(train_x)), *test_stats)
    tv_ref = class_tv(class_histogram(clf, train_x), test_freq)
    print(f"{FLAGS.num} real training images (the floor at this sample size): FD-MNIST {fd_ref:.2f}, "
          f"class TV {tv_ref:.3f}")  # fmt: skip
    rows = []
    with user_errors():
        bad = load_run(FLAGS.guide_by)[1].model if FLAGS.guide_by else None
        for workdir in sources:
            for sigma_rel in [None] + [float(s) for s in FLAGS.sigma_rels]:
                rows += evaluate_workdir(workdir, clf, test_stats, test_x, test_freq, sigma_rel,
                                         out=FLAGS.out, bad=bad)
    print(f"\nappended {len(rows)} rows to {FLAGS.out}\n\n" + markdown_table(rows))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
