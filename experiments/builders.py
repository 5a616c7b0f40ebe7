"""Config → library objects: the glue between an experiment config and diffjax, plus its validation.

`validate_config(cfg)` runs before any data is read or anything compiled: every key must exist in
`configs/base.py` (a typo is an error, not a silently ignored setting) and every value must make sense
(names of the process, loss, weighting, time sampler and sampler; positive sizes and periods; labels
and label dropout only for class-conditional models); the network's config fields, the process's
parameters and the solver's options are checked by constructing them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import diffjax as dj
from diffjax.consistency import NOISE_INPUTS
from diffjax.data import load_dataset
from diffjax.grids import GRIDS
from diffjax.losses import TIME_SAMPLERS, WEIGHTINGS
from diffjax.models import MODELS
from diffjax.preconditioning import PRECONDITIONINGS, apply_preconditioning
from diffjax.processes import PROCESSES
from diffjax.training import Checkpointer, TrainedModel
from diffjax.training.step import uses_step, uses_unconditional
from diffjax.training.workdir import RunMismatchError
from experiments.configs import base

LOSSES = {"dsm": "eps", "cfm": "velocity", "ddpm": "eps"}  # name → regression target
ELBO_LOSSES = ("vdm",)  # the negative ELBO in bits/dim (dj.vdm_loss), with its own times and weighting
EIGHT_BIT_DATA = ("mnist", "cifar10")  # pixels k/127.5 − 1: the ELBO reconstructs them by VDM's 8-bit decoder
PAIR_LOSSES = ("reflow", "pair_distillation")  # trained on data.couplings (noise, sample) pairs
TWO_TIME_LOSSES = ("meanflow", "shortcut", "pair_distillation")  # train u(x, t, s): second_time=True
FEW_STEP_LOSSES = ("meanflow", "shortcut", "consistency_training", "consistency_distillation",
                   "consistency_continuous", "progressive_distillation", *PAIR_LOSSES)
TEACHER_OPTIONAL = ("meanflow", "shortcut", "consistency_continuous")  # distil with teacher.workdir, or not
NEEDS_TEACHER = ("consistency_distillation", "progressive_distillation")
CONSISTENCY_MODELS = ("consistency", "ddim_consistency")  # the preconditionings that make f(x, t)
FREE_FORM = {"model.kwargs", "process.kwargs", "loss.time_kwargs", "loss.weighting_kwargs", "sample.options",
             "loss.options"}


class ConfigError(ValueError):
    """An experiment config with an unknown key or a value that cannot work."""


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a mistyped `--config.a.b=v` override, a value of the wrong type or a
    config file that cannot be loaded reported as one line (exit status 2) instead of a traceback
    from inside ml_collections. An override of a key a free-form dict (`FREE_FORM`: the network's
    config fields, the process's parameters, ...) does not list yet adds it, e.g.
    `--config.model.kwargs.dtype=bfloat16` (its value read as `_option_value` reads a sampler option)."""
    from absl import flags

    argv, additions = _split_free_form_additions(argv)
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:  # ml_collections: an override of a key the config lacks
        message = err
        while isinstance(message, BaseException) and message.args:  # an AttributeError wraps the KeyError
            message = message.args[0]
        bad, _, hint = str(message).partition("\n")  # "'x'\nDid you mean ..."
        bad = bad.strip("\"'")
        key = next((a.split("=")[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")
                    and bad in a.split("=")[0].split(".")), None)  # fmt: skip
        hint = f" ({hint[:1].lower()}{hint[1:]})" if hint else ""
        print(f"error: unknown config field {key or bad}{hint}: every field is listed with its default in "
              "experiments/configs/base.py.", file=sys.stderr)  # fmt: skip
    except (flags.Error, ValueError, TypeError, OSError) as err:
        print(f"error: {(str(err).splitlines() or [''])[0]}", file=sys.stderr)
    else:
        if additions:
            cfg = flags.FLAGS.config
            with cfg.unlocked():
                for path, key, text in additions:
                    _at(cfg, path)[key] = _option_value(text)
        return rest
    sys.exit(2)


def _split_free_form_additions(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(argv without them, [(free-form dict, key, value text)]): the `--config.D.KEY=VALUE` overrides of
    a free-form dict D that has no KEY in the config file `--config` names. ml_collections cannot add a
    key, and reads its overrides from sys.argv, so they leave sys.argv too."""
    from ml_collections.config_flags import config_flags

    at = next((i for i, w in enumerate(argv) if w == "--config" or w.startswith("--config=")), None)
    source = "" if at is None else argv[at].partition("=")[2] or "".join(argv[at + 1:at + 2])
    try:
        cfg = config_flags.ConfigFileFlagParser(name="config").parse(source) if source else None
    except Exception:  # noqa: BLE001 - absl's own parse reports a config file that cannot be loaded
        cfg = None
    if not isinstance(cfg, ml_collections.ConfigDict):  # none, or ml_collections' stand-in for a failed load
        return argv, []
    kept, additions = [], []
    for word in argv:
        override, has_value, text = word.removeprefix("--config.").partition("=")
        path, _, key = override.rpartition(".")
        node = _at(cfg, path) if word.startswith("--config.") and has_value and path in FREE_FORM else None
        if node is not None and key.isidentifier() and key not in node:
            additions.append((path, key, text))
        else:
            kept.append(word)
    if additions and argv is sys.argv:
        sys.argv[:] = kept
    return kept, additions


def _at(cfg, path: str):
    """The node of `cfg` at the dotted `path`, None where there is none."""
    try:
        return functools.reduce(lambda node, part: node[part], path.split("."), cfg)
    except (KeyError, AttributeError, TypeError):
        return None


@contextlib.contextmanager
def user_errors():
    """Inside a script's main: a mistake in what the user asked for ends the process with its message
    (exit status 2), not a traceback."""
    try:
        yield
    except (ConfigError, RunMismatchError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def config_fields_help() -> str:
    """Every config field with its default (`configs/base.py`) and the sampler names: the tail of
    `experiments.train --help`."""
    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict) and f"{prefix}{key}" not in FREE_FORM:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"  {prefix}{key} = {value.to_dict() if hasattr(value, 'to_dict') else value!r}"

    samplers = ", ".join((*dj.SOLVERS, *FEW_STEP_SAMPLERS))
    return ("\n\nConfig fields and their defaults (override any with --config.FIELD=VALUE; the comments in "
            "experiments/configs/base.py explain them):\n" + "\n".join(leaves(base.get_config()))
            + f"\n\nsample.sampler is one of: {samplers}\n")


def _unknown_keys(cfg, schema, prefix="") -> list[str]:
    out = []
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in schema:
            out.append(path)
        elif path not in FREE_FORM and isinstance(schema[key], ml_collections.ConfigDict):
            out += _unknown_keys(cfg[key], schema[key], path + ".")
    return out


def model_spec(cfg) -> dict:
    """The run record's model entry; 'preconditioning' appears only when one is used, so records of
    runs from before it existed still match."""
    spec = {"kind": cfg.model.kind, "prediction": cfg.model.prediction, **dict(cfg.model.kwargs)}
    if cfg.model.get("preconditioning", "none") != "none":
        spec["preconditioning"] = {"kind": cfg.model.preconditioning, "sigma_data": cfg.model.sigma_data}
        if cfg.model.get("noise_input", "log_sigma") != "log_sigma":  # absent from older records: the default
            spec["preconditioning"]["noise_input"] = cfg.model.noise_input
    if cfg.loss.get("learned_weighting", False):
        spec["learned_weighting"] = True
    if cfg.process.name == "learned":  # VDM: the network carries its schedule (diffjax.models.WithSchedule)
        spec["learned_schedule"] = dict(cfg.process.kwargs)
    return spec


def network_spec(cfg) -> dict:
    """What `build_model` gets to train: `model_spec` plus the settings that change how the network
    computes but not its parameters (model.remat), which the run record leaves out."""
    spec = model_spec(cfg)
    if remat_enabled(cfg):
        spec["remat"] = True
    return spec


def remat_enabled(cfg) -> bool:
    """model.remat, False when absent (a config saved before the field existed)."""
    return bool(cfg.model.get("remat", False))


def fsdp_setting(cfg) -> int:
    """parallel.fsdp, 1 (pure data parallelism) when absent (a config saved before the field existed)."""
    parallel = cfg.get("parallel") or {}
    return parallel.get("fsdp", 1)


def wrap_network(cfg, process):
    """network -> the model the losses and samplers see (the configured preconditioning), or None."""
    spec = model_spec(cfg).get("preconditioning")
    return None if spec is None else functools.partial(apply_preconditioning, process=process, spec=spec)


def process_spec(cfg) -> dict:
    return {"name": cfg.process.name, **dict(cfg.process.kwargs)}


def optimizer_spec(cfg) -> dict:
    t = cfg.train
    return dict(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, total_steps=t.num_steps,
                weight_decay=t.weight_decay, clip_norm=t.clip_norm)  # fmt: skip


def num_classes(cfg) -> int | None:
    return cfg.model.kwargs.get("num_classes")


def validate_config(cfg) -> None:
    """Raise ConfigError naming the offending key and value (module docstring)."""
    unknown = _unknown_keys(cfg, base.get_config())
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; every key is in experiments/configs/base.py.")
    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    t, s = cfg.train, cfg.sample
    for key in ("num_steps", "batch_size", "checkpoint_every", "keep", "log_every"):
        need(isinstance(t[key], int) and t[key] >= 1, f"train.{key} must be an integer >= 1, got {t[key]!r}")
    need(isinstance(t.sample_every, int) and t.sample_every >= 0,
         f"train.sample_every must be an integer >= 0 (0: no previews), got {t.sample_every!r}")
    need(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    need(0 <= t.warmup_steps < t.num_steps,
         f"train.warmup_steps must lie in [0, num_steps = {t.num_steps}), got {t.warmup_steps}")
    need(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    need(0.0 <= t.label_dropout < 1.0, f"train.label_dropout must lie in [0, 1), got {t.label_dropout}")
    need(t.label_dropout == 0.0 or num_classes(cfg) is not None,
         "train.label_dropout > 0 needs a class-conditional model (model.kwargs.num_classes)")
    need(all(0.0 < float(r) < 12**-0.5 for r in t.posthoc_ema),
         f"train.posthoc_ema: every σ_rel must lie in (0, 0.2887), got {tuple(t.posthoc_ema)}")
    need(isinstance(t.snapshot_every, int) and t.snapshot_every >= 0,
         f"train.snapshot_every must be an integer >= 0 (0: checkpoint_every), got {t.snapshot_every!r}")
    need(isinstance(s.num_steps, int) and s.num_steps >= 1,
         f"sample.num_steps must be >= 1, got {s.num_steps!r}")
    need(isinstance(s.num_samples, int) and s.num_samples >= 1,
         f"sample.num_samples must be >= 1, got {s.num_samples!r}")
    need(cfg.data.num_examples >= 0, f"data.num_examples must be >= 0 (0: all), got {cfg.data.num_examples}")
    need(cfg.loss.name in (*LOSSES, *ELBO_LOSSES, *FEW_STEP_LOSSES),
         f"loss.name {cfg.loss.name!r} is not one of {(*LOSSES, *ELBO_LOSSES, *FEW_STEP_LOSSES)}")
    few_step_checks(cfg, need)
    elbo_checks(cfg, need)
    need(cfg.loss.weighting in WEIGHTINGS,
         f"loss.weighting {cfg.loss.weighting!r} is not one of {tuple(WEIGHTINGS)}")
    need(cfg.model.preconditioning in PRECONDITIONINGS,
         f"model.preconditioning {cfg.model.preconditioning!r} is not one of {PRECONDITIONINGS}")
    need(cfg.model.preconditioning in ("none", *CONSISTENCY_MODELS) or cfg.model.prediction == "x0",
         f"model.preconditioning={cfg.model.preconditioning!r} makes the network a denoiser: set "
         f"model.prediction='x0' (got {cfg.model.prediction!r})")
    noise_input = cfg.model.get("noise_input", "log_sigma")
    need(noise_input in NOISE_INPUTS, f"model.noise_input {noise_input!r} is not one of {NOISE_INPUTS}")
    need(noise_input == "log_sigma" or cfg.model.preconditioning == "consistency",
         f"model.noise_input={noise_input!r} is an input of consistency models: set "
         "model.preconditioning='consistency'")
    need(cfg.model.sigma_data > 0,
         f"model.sigma_data must be > 0 (the data's std), got {cfg.model.sigma_data}")
    need(s.grid in GRIDS, f"sample.grid {s.grid!r} is not one of {GRIDS}")
    interval = tuple(s.get("guidance_interval", ()) or ())
    need(interval == () or (len(interval) == 2 and 0 <= float(interval[0]) <= float(interval[1])),
         f"sample.guidance_interval must be () or (σ_lo, σ_hi) with 0 <= σ_lo <= σ_hi, got {interval}")
    need(cfg.loss.time in TIME_SAMPLERS, f"loss.time {cfg.loss.time!r} is not one of {tuple(TIME_SAMPLERS)}")
    need(cfg.model.kind in MODELS, f"model.kind {cfg.model.kind!r} is not one of {tuple(MODELS)}")
    need(cfg.model.prediction in dj.PREDICTIONS,
         f"model.prediction {cfg.model.prediction!r} is not one of {dj.PREDICTIONS}")
    need(cfg.process.name in PROCESSES, f"process.name {cfg.process.name!r} is not one of {tuple(PROCESSES)}")
    fsdp = fsdp_setting(cfg)
    need(isinstance(fsdp, int) and fsdp >= 1,
         f"parallel.fsdp must be an integer >= 1 (1: pure data parallelism), got {fsdp!r}")
    need(cfg.model.kind != "autoencoder",
         "model.kind='autoencoder' is trained by experiments.train_autoencoder (its own config schema)")
    need(not (latents_workdir(cfg) and couplings_file(cfg)),
         "data.latents and data.couplings exclude each other (a latent model's couplings hold latents)")
    need(not (latents_workdir(cfg) and s.clip_denoised),
         "sample.clip_denoised clips x̂0 to the pixel range [−1, 1]; a latent model's x̂0 is a normalised "
         "latent (std 1, not bounded): set sample.clip_denoised=False")
    need(not remat_enabled(cfg) or cfg.model.kind in ("unet", "dit"),
         f"model.remat recomputes U-Net and DiT blocks; model.kind={cfg.model.kind!r} has none")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    try:  # the free-form parts, by constructing what consumes them (cheap: no parameters)
        MODELS[cfg.model.kind][1](prediction=cfg.model.prediction, **dict(cfg.model.kwargs))
        process = dj.build_process(process_spec(cfg))
        if s.sampler not in FEW_STEP_SAMPLERS:
            dj.make_solver(s.sampler, **dict(s.options))
        build_time_sampler(cfg, process)
        dj.make_weighting(cfg.loss.weighting, **dict(cfg.loss.weighting_kwargs))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid config: {err}") from None
    if s.sampler.startswith("flow_map") and not cfg.model.kwargs.get("second_time", False):
        raise ConfigError(f"invalid config: sample.sampler={s.sampler!r} jumps with an average velocity "
                          "u(x, t, s): the network needs model.kwargs.second_time=True (MeanFlow).")
    if cfg.process.name == "ddpm" and cfg.model.prediction == "velocity":
        raise ConfigError("invalid config: the DDPM chain has no velocity (model.prediction='velocity').")


def ict_curriculum(option) -> tuple[int, int]:
    """(s0, s1) of loss.options.curriculum: True (iCT's 10 → 1280) or [s0, s1], integers 1 <= s0 <= s1
    (False, or no such option: a fixed loss.options.num_levels)."""
    pair = (10, 1280) if option is True else tuple(option) if isinstance(option, list | tuple) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair) \
            or not 1 <= pair[0] <= pair[1]:  # fmt: skip
        raise ConfigError("loss.options.curriculum is iCT's level curriculum: True (s0, s1 = 10, 1280) or "
                          f"[s0, s1] with integers 1 <= s0 <= s1; got {option!r}")
    return pair


def elbo_checks(cfg, need) -> None:
    """What the ELBO loss (VDM) and a learned schedule need of the rest of the config."""
    vdm, learned = cfg.loss.name in ELBO_LOSSES, cfg.process.name == "learned"
    need(not learned or vdm,
         "process.name='learned' (VDM's schedule, trained with the network) is trained by the ELBO whose "
         "variance its shape minimises: set loss.name='vdm'")
    need(not vdm or (cfg.loss.weighting == "none" and cfg.loss.time == "uniform" and not cfg.loss.time_kwargs
                     and not cfg.loss.get("learned_weighting", False)),
         "loss.name='vdm' is the ELBO itself (its weighting, its low-discrepancy uniform times): leave "
         "loss.weighting='none', loss.time='uniform' and loss.learned_weighting=False")  # fmt: skip
    need(not vdm or cfg.process.name not in ("ddpm", "ddpm_cosine"),
         "loss.name='vdm' is the continuous-time ELBO; the DDPM chain's is its variational bound "
         "(loss.name='ddpm')")
    need(not learned or cfg.model.preconditioning == "none",
         "process.name='learned' feeds the network the schedule's normalised γ, not a preconditioning's "
         "c_noise: set model.preconditioning='none'")


def few_step_checks(cfg, need) -> None:
    """What the few-step losses and samplers need of the rest of the config."""
    name, precond, sampler = cfg.loss.name, cfg.model.preconditioning, cfg.sample.sampler
    two_time = bool(cfg.model.kwargs.get("second_time", False))
    weighted = (*LOSSES, "consistency_continuous")  # the losses with a log_uncertainty argument
    need(not cfg.loss.get("learned_weighting", False) or name in weighted,
         f"loss.learned_weighting trains a weighting through the loss's log_uncertainty, which only "
         f"{weighted} have; got loss.name={name!r}")
    need(name not in TWO_TIME_LOSSES or two_time,
         f"loss.name={name!r} trains an average velocity u(x, t, s) (a flow map x + (s − t)·u): set "
         "model.kwargs.second_time=True")
    need(name in TWO_TIME_LOSSES or not two_time,
         "model.kwargs.second_time=True is a two-time network (MeanFlow network); "
         f"loss.name={name!r} trains a one-time one")
    need((name in PAIR_LOSSES) == bool(couplings_file(cfg)),
         f"loss.name in {PAIR_LOSSES} trains on data.couplings (a .npz of experiments.sample --couplings) "
         f"and only they do; got loss.name={name!r}, data.couplings={couplings_file(cfg)!r}")
    consistency = name.startswith("consistency_")
    need(consistency == (precond in CONSISTENCY_MODELS),
         f"consistency losses and model.preconditioning in {CONSISTENCY_MODELS} go together (got loss.name="
         f"{name!r}, model.preconditioning={precond!r})")
    need(consistency == (sampler == "consistency"),
         f"a consistency model samples with sample.sampler='consistency' (got {sampler!r} for "
         f"loss.name={name!r})")
    need(bool(cfg.teacher.workdir) == (name in NEEDS_TEACHER) or name in TEACHER_OPTIONAL,
         f"teacher.workdir is what loss.name in {NEEDS_TEACHER} distils (and {TEACHER_OPTIONAL} may); got "
         f"teacher.workdir={cfg.teacher.workdir!r} with loss.name={name!r}")
    options = dict(cfg.loss.options)
    need(name != "progressive_distillation" or "num_student_steps" in options,
         "loss.name='progressive_distillation' needs loss.options.num_student_steps (the student's steps; "
         "it matches two teacher DDIM steps in one)")
    need(options.get("guidance_scale", 1.0) == 1.0 or (name == "meanflow" and num_classes(cfg) is not None),
         "loss.options.guidance_scale is MeanFlow's guidance in training (loss.name='meanflow'): it needs a "
         f"class-conditional network (model.kwargs.num_classes); got loss.name={name!r}, "
         f"num_classes={num_classes(cfg)!r}")
    warmup_steps = options.get("warmup_steps", 0)
    need(name == "consistency_continuous" or "warmup_steps" not in options,
         "loss.options.warmup_steps is sCM's tangent warm-up (loss.name='consistency_continuous')")
    constant = "warmup" in options
    need(isinstance(warmup_steps, int) and warmup_steps >= 0 and not (warmup_steps and constant),
         f"loss.options.warmup_steps must be an int >= 0 (r rises from 0 to 1 over them), and not given "
         f"with a constant warmup; got warmup_steps={warmup_steps!r}, options={options}")
    if options.get("curriculum", False) is not False:
        need(name == "consistency_training" and "num_levels" not in options,
             "loss.options.curriculum grows iCT's number of levels over train.num_steps "
             "(loss.name='consistency_training'), instead of a fixed loss.options.num_levels")
        try:
            ict_curriculum(options["curriculum"])
        except ConfigError as err:
            need(False, str(err))
    need(not options or name in FEW_STEP_LOSSES,
         f"loss.options are options of a few-step loss {FEW_STEP_LOSSES}, not of {name!r}")


def teacher_flow_velocity(cfg, process):
    """v(x, t) of the teacher's probability flow (the EMA model of a work directory, or a network
    'pretrained:NAME'), checked to share the process."""
    teacher_config, trained = load_run(cfg.teacher.workdir)
    if process_spec(teacher_config) != process_spec(cfg):
        raise ConfigError(f"teacher.workdir={cfg.teacher.workdir!r} was trained on another process "
                          f"({trained.record['process']}); distil on the same one.")  # fmt: skip
    return trained.model, dj.ProbabilityFlow(trained.model, process, trained.model.prediction).velocity


def build_few_step_loss(cfg, process):
    """loss(model, x0, key) of a few-step method (`FEW_STEP_LOSSES`) with cfg.loss.options."""
    from diffjax.consistency import (
        consistency_distillation_loss,
        consistency_training_loss,
        continuous_consistency_loss,
        ict_num_levels,
    )
    from diffjax.flow_map import AverageVelocityMap
    from diffjax.meanflow import meanflow_loss, meanflow_times
    from diffjax.reflow import pair_distillation_loss, reflow_loss
    from diffjax.shortcut import shortcut_loss

    options = dict(cfg.loss.options)
    if cfg.loss.name == "meanflow":
        times = {k: options.pop(k) for k in ("mean", "std", "ratio") if k in options}
        time_sampler = meanflow_times(process, t_eps=cfg.loss.t_eps, **times)
        velocity = teacher_flow_velocity(cfg, process)[1] if cfg.teacher.workdir else None
        loss = functools.partial(meanflow_loss, process=process, time_sampler=time_sampler,
                                 velocity=velocity, **options)  # fmt: skip
        # guidance in training needs the network under ∅ (the train step passes it)
        return uses_unconditional(loss) if options.get("guidance_scale", 1.0) != 1.0 else loss
    if cfg.loss.name == "shortcut":
        velocity = teacher_flow_velocity(cfg, process)[1] if cfg.teacher.workdir else None
        return functools.partial(shortcut_loss, process=process, t_eps=cfg.loss.t_eps, velocity=velocity,
                                 **options)  # fmt: skip
    if cfg.loss.name == "reflow":
        return _on_stacked_pairs(functools.partial(
            reflow_loss, process=process, prediction=cfg.model.prediction,
            weighting=dj.make_weighting(cfg.loss.weighting, **dict(cfg.loss.weighting_kwargs)),
            time_sampler=build_time_sampler(cfg, process), **options))  # fmt: skip
    if cfg.loss.name == "pair_distillation":
        return _on_stacked_pairs(lambda model, pair, key: pair_distillation_loss(
            AverageVelocityMap(model, process), pair, key, process=process, **options),
            couplings_waypoint_times(cfg))  # fmt: skip
    if cfg.loss.name == "consistency_continuous":  # sCM: sCT, or sCD from teacher.workdir
        teacher = teacher_flow_velocity(cfg, process)[0] if cfg.teacher.workdir else None
        warmup_steps = options.pop("warmup_steps", 0)
        scm = functools.partial(continuous_consistency_loss, process=process, teacher=teacher, **options)
        if not warmup_steps:
            return scm

        def scm_warmed_up(model, x0, key, *, step, **kwargs):  # r = min(step/warmup_steps, 1)
            r = jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)
            return scm(model, x0, key, warmup=r, **kwargs)

        return uses_step(scm_warmed_up)
    if cfg.loss.name == "consistency_training":
        curriculum = options.pop("curriculum", False)
        if curriculum is False:
            options.setdefault("num_levels", 41)
            return functools.partial(consistency_training_loss, process=process, **options)
        s0, s1 = ict_curriculum(curriculum)
        total = cfg.train.num_steps

        def ict_with_curriculum(model, x0, key, *, step, **kwargs):  # N(step) of iCT's eq. 11, traced
            levels = ict_num_levels(step, total, s0, s1)
            return consistency_training_loss(model, x0, key, process=process, num_levels=levels,
                                             max_levels=s1 + 1, **options, **kwargs)  # fmt: skip

        return uses_step(ict_with_curriculum)
    teacher, _ = teacher_flow_velocity(cfg, process)
    if cfg.loss.name == "progressive_distillation":
        return functools.partial(dj.progressive_distillation_loss, teacher=teacher, process=process,
                                 t_eps=cfg.loss.t_eps, **options)  # fmt: skip
    solver = dj.make_solver(options.pop("solver", "heun"))
    num_steps = int(options.pop("num_steps", 18))
    ts = dj.make_grid(process, num_steps, options.pop("grid", "edm"), None)[::-1]  # t_min → t_noise
    return functools.partial(consistency_distillation_loss, teacher=teacher, solver=solver, process=process,
                             ts=ts, **options)  # fmt: skip


def couplings_file(cfg) -> str:
    """data.couplings, '' when unset or absent (a config saved before the field existed)."""
    return cfg.data.get("couplings", "") or ""


def latents_workdir(cfg) -> str:
    """data.latents, '' when unset or absent (a config saved before the field existed)."""
    return cfg.data.get("latents", "") or ""


LATENTS_FILE = "latents.npz"  # written by experiments.train_autoencoder into its work directory


def load_latents(cfg) -> tuple[np.ndarray, np.ndarray, dict]:
    """(latents z̃ (N, h, w, c), labels, the run record's `latent` entry) cached by
    experiments.train_autoencoder in the work directory data.latents; a clear ConfigError otherwise."""
    from diffjax.training.workdir import latent_record

    path = os.path.join(latents_workdir(cfg), LATENTS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"data.latents={latents_workdir(cfg)!r} has no {LATENTS_FILE}: train the "
                          "autoencoder there first (python -m experiments.train_autoencoder --config "
                          "experiments/configs/mnist_autoencoder.py --workdir ...).")  # fmt: skip
    with np.load(path) as f:
        latents, labels, shift, scale = f["latents"], f["labels"], float(f["shift"]), float(f["scale"])
    image_shape = source_record(latents_workdir(cfg))["data_shape"]
    if cfg.data.num_examples:
        latents, labels = latents[: cfg.data.num_examples], labels[: cfg.data.num_examples]
    return latents, labels, latent_record(latents_workdir(cfg), shift, scale, image_shape)


def _on_stacked_pairs(loss, waypoint_times=()):
    """loss(model, x, key) of the stacked couplings x (N, 2 + m, *event) = (noise, m waypoints, sample)
    (`training_data`) from a pair loss loss(model, Couplings, key)."""
    from diffjax.reflow import Couplings

    def on_stacked(model, x, key):
        waypoints = x[:, 1:-1] if waypoint_times else None
        pair = Couplings(x[:, 0], x[:, -1], waypoints=waypoints, waypoint_times=waypoint_times)
        return loss(model, pair, key)

    return on_stacked


def couplings_waypoint_times(cfg) -> tuple[float, ...]:
    """The waypoint times stored in data.couplings (() without waypoints); reads nothing else."""
    with np.load(couplings_file(cfg), allow_pickle=False) as f:
        return tuple(float(t) for t in f["waypoint_times"]) if "waypoint_times" in f.files else ()


def training_data(cfg) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """(examples, labels, event shape) a run trains on: the dataset `cfg.data`; with data.latents the
    normalised latents of that autoencoder (`load_latents`); or with data.couplings the pairs of that
    file stacked as x (N, 2 + m, *event) = (noise, m waypoints, sample), without labels (checked to come
    from a model of this run's process)."""
    from diffjax.reflow import load_couplings

    if latents_workdir(cfg):
        latents, labels, _ = load_latents(cfg)
        return latents, labels, tuple(latents.shape[1:])
    if not couplings_file(cfg):
        data, labels = load_dataset(cfg.data.name, "train", cfg.data.data_dir or None, cfg.data.source,
                                    cfg.data.num_examples or None)  # fmt: skip
        return data, labels, tuple(data.shape[1:])
    if not os.path.isfile(couplings_file(cfg)):
        raise ConfigError(f"data.couplings={couplings_file(cfg)!r} is not a file: write it with "
                          "`python -m experiments.sample --workdir TEACHER --couplings F.npz`.")  # fmt: skip
    pairs = load_couplings(couplings_file(cfg))
    made_by = pairs.header.get("process")
    if made_by is not None and made_by != json.loads(json.dumps(process_spec(cfg))):
        raise ConfigError(f"data.couplings={couplings_file(cfg)!r} were made on the process "
                          f"{made_by}, this run trains on {process_spec(cfg)}.")  # fmt: skip
    waypoints = [] if pairs.waypoints is None else [np.asarray(pairs.waypoints)]
    noise, data = np.asarray(pairs.noise)[:, None], np.asarray(pairs.data)[:, None]
    x = np.concatenate([noise, *waypoints, data], axis=1)
    if cfg.data.num_examples:
        x = x[: cfg.data.num_examples]
    return x, None, tuple(x.shape[2:])


def build_time_sampler(cfg, process):
    return TIME_SAMPLERS[cfg.loss.time](process, t_eps=cfg.loss.t_eps, **dict(cfg.loss.time_kwargs))


def build_loss(cfg, process):
    """loss(model, x0, key) -> scalar, the configured regression (`diffjax.losses.denoising_loss`)
    or few-step loss (`build_few_step_loss`)."""
    if cfg.loss.name in FEW_STEP_LOSSES:
        return build_few_step_loss(cfg, process)
    if cfg.loss.name == "vdm":  # a learned schedule comes as process= from the network, per example
        learned = cfg.process.name == "learned"
        eight_bit = cfg.data.name in EIGHT_BIT_DATA and not latents_workdir(cfg)  # VDM's discrete decoder
        return functools.partial(dj.vdm_loss, prediction=cfg.model.prediction, t_eps=cfg.loss.t_eps or None,
                                 decoder="discrete" if eight_bit else "gaussian", reduce=not learned,
                                 **({} if learned else {"process": process}))  # fmt: skip
    return functools.partial(
        dj.denoising_loss, process=process, prediction=cfg.model.prediction,
        target=LOSSES[cfg.loss.name],
        weighting=dj.make_weighting(cfg.loss.weighting, **dict(cfg.loss.weighting_kwargs)),
        time_sampler=build_time_sampler(cfg, process),
    )  # fmt: skip


# name → (renoise, η) of diffjax.flow_map.FlowMapStep: 'flow_map' jumps t → t_next with a two-time
# network; 'flow_map_renoise' jumps to the data and re-noises to t_next with fresh noise (multistep
# consistency sampling with a flow map), 'flow_map_ddim' with the noise the state implies (DDIM's
# deterministic step from the map's x̂0); 'consistency' re-noises a consistency model f(x, t)
FEW_STEP_SAMPLERS = {"flow_map": (False, 1.0), "flow_map_renoise": (True, 1.0), "flow_map_ddim": (True, 0.0),
                     "consistency": (True, 1.0)}  # fmt: skip


class SamplerSpec(NamedTuple):
    """A parsed sampler spec (`parse_sampler_spec`): the solver's name, its steps and guidance scale
    (None: the config's) and its options (keyword arguments of the solver, e.g. order=3)."""

    name: str
    steps: int | None
    guidance_scale: float | None
    options: dict

    def apply(self, cfg) -> None:
        """Set cfg.sample to this spec: sampler, steps and w where given; the options update the
        config's `sample.options` when the spec names the config's own sampler and replace them
        otherwise (one solver's options are not another's)."""
        same = self.name == cfg.sample.sampler
        cfg.sample.sampler = self.name
        if self.steps is not None:
            cfg.sample.num_steps = self.steps
        if self.guidance_scale is not None:
            cfg.sample.guidance_scale = self.guidance_scale
        cfg.sample.options = {**(dict(cfg.sample.options) if same else {}), **self.options}


def _option_value(text: str):
    """An option's value from its text: int, float, true/false/none, a Python literal (a tuple, a quoted
    string), else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float, ast.literal_eval):
        try:
            return kind(text)
        except (ValueError, SyntaxError):
            pass
    return text


def parse_sampler_spec(spec: str, flag: str = "--sampler") -> SamplerSpec:
    """The sampler spec `name[:steps[:w]][:key=value...]` — the one vocabulary of the scripts (e.g.
    heun:10, dpm_solver_pp:20:4, deis:10:order=3:interpolate_in=log_snr); the options are checked by
    constructing the solver. A clear ConfigError otherwise."""
    name, *rest = spec.split(":")
    positional = [part for part in rest if "=" not in part]
    pairs = [part.split("=", 1) for part in rest if "=" in part]
    ok = len(positional) <= 2 and all(rest) and rest[: len(positional)] == positional
    ok = ok and all(key.isidentifier() and value for key, value in pairs)
    try:
        steps = int(positional[0]) if positional else None
        w = float(positional[1]) if len(positional) == 2 else None
    except ValueError:
        ok = False
    if not ok or (steps is not None and steps < 1):
        raise ConfigError(f"{flag}: {spec!r} is not name[:steps[:w]][:key=value...] (e.g. heun:10, "
                          "dpm_solver_pp:20:4, deis:10:order=3).")  # fmt: skip
    if name not in (*dj.SOLVERS, *FEW_STEP_SAMPLERS):
        raise ConfigError(f"{flag}: {name!r} is not one of {(*dj.SOLVERS, *FEW_STEP_SAMPLERS)}.")
    options = {key: _option_value(value) for key, value in pairs}
    if len(options) < len(pairs):
        raise ConfigError(f"{flag}: {spec!r} gives an option twice.")
    if options and name in FEW_STEP_SAMPLERS:
        raise ConfigError(f"{flag}: {spec!r}: the few-step sampler {name!r} takes no options.")
    if options:
        try:
            dj.make_solver(name, **options)
        except ValueError as err:
            raise ConfigError(f"{flag}: {spec!r}: {err}") from None
    return SamplerSpec(name, steps, w, options)


def generate(cfg, model, process, key, n, data_shape, *, labels=None, save_trajectory=False, x_init=None,
             latent_space=None, bad_model=None):
    """n samples from `model` (an NNX network with the parameters to use) with the configured sampler,
    classifier-free guidance for class-conditional models (labels cycle 0..C−1 unless given) and x̂0
    clipped to [−1, 1] when cfg.sample.clip_denoised. Few-step samplers: 'flow_map' jumps with a
    two-time network's average velocity (MeanFlow, shortcut), 'flow_map_renoise' / 'flow_map_ddim' jump
    to the data and re-noise between jumps with fresh / implied noise, 'consistency' is multistep
    consistency sampling;
    an ODE sampler runs a two-time network on its diagonal u(x, t, t) = v(x, t). x_init: the initial
    noise (n, *data_shape) at t_noise instead of a prior draw from `key` (e.g. reflow's couplings).
    latent_space: a latent model's `diffjax.latent.LatentSpace` (`TrainedModel.latent_space`): the
    samples are decoded to images (the trajectory stays in latent space). cfg.sample.guidance_interval
    (σ_lo, σ_hi) limits the guidance to those noise levels σ/α. bad_model: autoguidance
    (Karras et al. 2024) — D_bad + w·(D − D_bad) with this weaker model of the same process, prediction
    and conditioning (e.g. an earlier checkpoint of the run) and w = cfg.sample.guidance_scale, in place
    of classifier-free guidance (a class-conditional pair gets the labels on both sides)."""
    res = _generate(cfg, model, process, key, n, data_shape, labels=labels, save_trajectory=save_trajectory,
                    x_init=x_init, bad_model=bad_model)  # fmt: skip
    if latent_space is None:
        return res
    return res._replace(samples=jnp.asarray(dj.decode_latents(latent_space, res.samples)))


def _generate(cfg, model, process, key, n, data_shape, *, labels, save_trajectory, x_init, bad_model):
    n_cls = num_classes(cfg)
    if cfg.sample.sampler in FEW_STEP_SAMPLERS:
        if bad_model is not None:
            raise ConfigError(f"autoguidance needs an ODE/SDE sampler, not {cfg.sample.sampler!r}.")
        return generate_few_step(cfg, model, process, key, n, data_shape, labels=labels, x_init=x_init)
    if cfg.model.kwargs.get("second_time", False):
        model = dj.flow_map.InstantaneousVelocity(model)
        bad_model = None if bad_model is None else dj.flow_map.InstantaneousVelocity(bad_model)
    if n_cls is not None:
        labels = jnp.asarray(np.arange(n) % n_cls if labels is None else np.asarray(labels))
        if bad_model is None:
            model = dj.cfg_model(model, labels, cfg.sample.guidance_scale, n_cls)
        else:
            model = dj.autoguidance(dj.bind_labels(model, labels), dj.bind_labels(bad_model, labels),
                                    cfg.sample.guidance_scale)  # fmt: skip
    elif bad_model is not None:
        model = dj.autoguidance(model, bad_model, cfg.sample.guidance_scale)
    elif labels is not None:
        raise ConfigError("labels were given for a model that is not class-conditional.")
    interval = tuple(cfg.sample.get("guidance_interval", ()) or ())
    if interval and n_cls is None and bad_model is None:
        raise ConfigError("sample.guidance_interval limits guidance: this model is neither class-conditional "
                          "nor autoguided.")  # fmt: skip
    if interval:
        model = dj.guidance_interval(model, process, float(interval[0]), float(interval[1]))
    if cfg.sample.clip_denoised:
        model = dj.clip_denoised(model, process, cfg.model.prediction)
    shape = None if x_init is not None else (n, *data_shape)
    return dj.sample(cfg.sample.sampler, model, process, key, shape, cfg.sample.num_steps,
                     prediction=cfg.model.prediction, save_trajectory=save_trajectory, x_init=x_init,
                     grid=cfg.sample.get("grid", "uniform"),
                     **dict(cfg.sample.options))  # fmt: skip


def generate_few_step(cfg, model, process, key, n, data_shape, *, labels=None, x_init=None):
    """`generate` for the few-step samplers: cfg.sample.num_steps jumps (one evaluation each) on the
    configured grid from t_noise to exactly t_data (no guidance: a class-conditional model gets its
    labels, cycling 0..C−1 unless given)."""
    from diffjax.flow_map import AverageVelocityMap, ToDataMap, flow_map_sample
    from diffjax.losses import BoundLabels

    n_cls = num_classes(cfg)
    if n_cls is not None:  # labels bound by a pytree wrapper: new labels reuse the compiled sampler
        labels = np.arange(n) % n_cls if labels is None else np.asarray(labels)
        model, keyword_s = BoundLabels(model, jnp.asarray(labels)), False
    elif labels is not None:
        raise ConfigError("labels were given for a model that is not class-conditional.")
    else:  # the NNX network itself: a pytree, so new parameters reuse the compiled sampler
        keyword_s = True
    renoise, eta = FEW_STEP_SAMPLERS[cfg.sample.sampler]
    if cfg.sample.sampler == "consistency":
        flow_map = ToDataMap(model)
    else:
        flow_map = AverageVelocityMap(model, process, keyword_s=keyword_s)
    steps = cfg.sample.num_steps
    ts = dj.make_grid(process, steps, cfg.sample.get("grid", "uniform"), 0.0)
    k_prior, k_steps = jax.random.split(key)
    x = process.prior_sample(k_prior, (n, *data_shape)) if x_init is None else x_init
    samples = flow_map_sample(flow_map, process, x, ts, key=k_steps, renoise=renoise, eta=eta)
    return dj.SampleResult(samples, None, steps)


def saved_config(workdir: str, missing_ok: bool = False) -> ml_collections.ConfigDict | None:
    """The config saved with the newest checkpoint of `workdir` (not the possibly edited file); None
    (missing_ok) or FileNotFoundError when there is none."""
    directory = os.path.join(workdir, "checkpoints")
    meta = {}
    if os.path.isdir(directory):
        ckpt = Checkpointer(directory, save_every=1)
        try:
            meta = ckpt.metadata() or {}
        finally:
            ckpt.close()
    if "config" not in meta:
        if missing_ok:
            return None
        raise FileNotFoundError(f"No checkpoint with a saved config in {workdir}/checkpoints: train first.")
    return ml_collections.ConfigDict(meta["config"])


def config_changes(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: saved → new' for every leaf of two nested config dicts that differs."""
    out = []
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


PRETRAINED = "pretrained:"  # a source 'pretrained:NAME' is a network shipped with diffjax (diffjax/weights)


def split_step(source: str) -> tuple[str, int | None]:
    """('W', 500) of a source 'W@500' (the checkpoint of training step 500 of work directory W), or
    (source, None) — also for a path whose '@' is not followed by digits only."""
    path, sep, step = source.rpartition("@")
    if not sep or not step.isdigit() or os.path.isdir(source):
        return source, None
    if path.startswith(PRETRAINED):
        raise ConfigError(f"{source!r}: a pretrained network has one set of parameters, no steps.")
    return path, int(step)


def load_run(source: str, sigma_rel: float | None = None) -> tuple[ml_collections.ConfigDict, TrainedModel]:
    """(config, trained model with EMA parameters — or the post-hoc EMA of width sigma_rel) of a work
    directory written by experiments.train (WORKDIR@STEP: its checkpoint of that step), or of
    'pretrained:NAME' (`dj.load_pretrained`: the config and record in its card)."""
    source, step = split_step(source)
    if step is not None and sigma_rel is not None:
        raise ConfigError(f"{source}@{step}: post-hoc EMA widths are reconstructed at the last snapshot, "
                          "not at an earlier checkpoint.")  # fmt: skip
    if source.startswith(PRETRAINED):
        if sigma_rel is not None:
            raise ConfigError(f"{source} stores one EMA; post-hoc EMA widths need a work directory.")
        name = source[len(PRETRAINED):]
        return ml_collections.ConfigDict(dj.pretrained_card(name)["config"]), dj.load_pretrained(name)
    trained = dj.load_model(workdir=source, sigma_rel=sigma_rel, step=step)
    return saved_config(source), trained


def source_record(source: str) -> dict:
    """The run record (network, process, data shape, classes) of a work directory or 'pretrained:NAME',
    read without restoring any parameters: a clear error for a source that does not exist."""
    from diffjax.training.workdir import read_record

    source, step = split_step(source)
    if source.startswith(PRETRAINED):
        return dj.pretrained_card(source[len(PRETRAINED):])["record"]
    if not os.path.isdir(os.path.join(source, "checkpoints")):
        known = tuple(dj.available_pretrained())
        raise ConfigError(f"{source!r} is not a work directory with checkpoints: train a model there "
                          f"first, or name a pretrained network ({PRETRAINED}NAME, NAME in {known})."
                          )  # fmt: skip
    try:
        return read_record(source, step)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None



def guidance_interval_flag(values: list[str], flag: str = "--guidance_interval") -> tuple[float, float]:
    """(σ_lo, σ_hi) of a flag 'lo,hi' (σ_hi may be inf), or a ConfigError."""
    try:
        lo, hi = (float(v) for v in values)
    except ValueError:
        raise ConfigError(f"{flag}: {','.join(values)!r} is not σ_lo,σ_hi (e.g. 0.3,5 or 0.3,inf).") from None
    if not 0 <= lo <= hi:
        raise ConfigError(f"{flag}: need 0 <= σ_lo <= σ_hi, got ({lo}, {hi}].")
    return lo, hi

def check_guide(source: str, record: dict, guide: str) -> None:
    """Autoguidance's weaker model must generate the same thing as the model it guides: the same
    process, prediction, data (or latent space) and classes."""
    bad = source_record(guide)
    for what, get in (("process", lambda r: r["process"]), ("data shape", lambda r: r["data_shape"]),
                      ("prediction", lambda r: r["model"].get("prediction")),
                      ("preconditioning", lambda r: r["model"].get("preconditioning")),
                      ("classes", lambda r: r.get("num_classes")),
                      ("latent space", lambda r: r.get("latent"))):
        if get(bad) != get(record):
            raise ConfigError(f"--guide_by {guide}: its {what} {get(bad)!r} differs from {source}'s "
                              f"{get(record)!r}; autoguidance needs a weaker model of the same kind.")


def train_wall_time(workdir) -> float | None:
    """Wall time in seconds of the training run (its summary.json, or a pretrained network's card), or
    None if it has none (or the source is an earlier checkpoint WORKDIR@STEP)."""
    if split_step(workdir)[1] is not None:
        return None
    if workdir.startswith(PRETRAINED):
        return dj.pretrained_card(workdir[len(PRETRAINED):]).get("training", {}).get("wall_time_s")
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("wall_time_s")
