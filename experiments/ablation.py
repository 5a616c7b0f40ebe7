"""The MNIST analogue of EDM's Table 2: one recipe ingredient changed per row, at a fixed reduced CPU
budget (same U-Net, same steps and batch, same seed), each row trained (or resumed) into
`<out>/<row>` and scored by `experiments.evaluate` with one sampler for all rows.

    python -m experiments.ablation --data_dir ../shared/data/mnist --steps 300 --out outputs/ablation

Rows (`ROWS`): the EDM recipe of `configs/mnist_edm.py`, then each with one change — no
preconditioning (a raw x0-network), uniform instead of log-normal noise levels, min-SNR-5 instead
of EDM's weighting, EDM2's learned uncertainty weighting on top of EDM's — then the textbook
ε-prediction VP SDE (`configs/mnist_vp.py`) and flow matching (`configs/mnist_fm.py`: a velocity
network on the CondOT path, unweighted) with uniform and with logit-normal times. Every row shares
the U-Net (its time-feature scale aside), optimiser, learning rate, EMA, batch, steps and seed.
EMA length is ablated after training by `experiments.evaluate --sigma_rels` on a run with
`train.posthoc_ema`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags, logging

from experiments.builders import user_errors, validate_config
from experiments.configs import mnist_edm, mnist_fm, mnist_vp
from experiments.train import train_and_evaluate

flags.DEFINE_string("data_dir", None, "MNIST IDX directory.")
flags.DEFINE_integer("steps", 300, "Training steps of every row (batch 128).")
flags.DEFINE_string("out", "outputs/ablation", "Folder of the rows' work directories.")
flags.DEFINE_string("rows", "", "Comma-separated subset of the rows (default all).")
flags.DEFINE_string("sampler", "dpm_solver_pp:10", "The one sampler of every row (name:steps, EDM grid).")
flags.DEFINE_integer("num", 1000, "Samples per row for FD-MNIST and class TV.")
flags.DEFINE_integer("bpd_examples", 8, "Test images for bits/dim.")
FLAGS = flags.FLAGS


def edm():
    return mnist_edm.get_config()


def no_preconditioning():
    c = edm()
    c.model.preconditioning = "none"
    c.model.kwargs["time_scale"] = 1000.0  # the raw network sees t ∈ [0, 1] of the VE process
    return c


def uniform_noise():
    c = edm()
    c.loss.update(time="uniform", t_eps=1e-3)
    c.loss.time_kwargs = {}  # assigned: ConfigDict.update would merge {} into EDM's (p_mean, p_std)
    return c


def min_snr():
    c = edm()
    c.loss.weighting, c.loss.weighting_kwargs = "min_snr", dict(gamma=5.0)  # (update would keep σ_d)
    return c


def learned_weighting():
    c = edm()
    c.loss.learned_weighting = True  # EDM2: e^{−u(σ)}·L + u(σ), u a small network of c_noise
    return c


def eps_vp():
    return mnist_vp.get_config()


def flow_matching():
    c = mnist_fm.get_config()
    c.loss.time, c.loss.time_kwargs = "uniform", {}  # pinned: the row stays if mnist_fm's default moves
    return c


def flow_matching_logit_normal():
    c = mnist_fm.get_config()
    c.loss.time, c.loss.time_kwargs = "logit_normal", {}  # Esser et al. 2024: t = sigmoid(N(0, 1))
    return c


ROWS = {"edm": edm, "no_precond": no_preconditioning, "uniform_noise": uniform_noise, "min_snr": min_snr,
        "learned_weighting": learned_weighting, "eps_vp": eps_vp, "fm": flow_matching,
        "fm_logit_normal": flow_matching_logit_normal}  # fmt: skip


def row_config(name: str):
    c = ROWS[name]()
    c.data.data_dir = FLAGS.data_dir or ""
    c.train.update(num_steps=FLAGS.steps, warmup_steps=min(100, FLAGS.steps // 4),
                   checkpoint_every=FLAGS.steps, sample_every=0, posthoc_ema=(),
                   snapshot_every=0)  # fmt: skip
    c.sample.update(num_samples=64, grid="edm", clip_denoised=False)
    return c


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    names = [n for n in FLAGS.rows.split(",") if n] or list(ROWS)
    with user_errors():
        unknown = sorted(set(names) - set(ROWS))
        if unknown:
            raise ValueError(f"unknown rows {unknown}; choose from {tuple(ROWS)}.")
        for name in names:  # every row checked before the first one trains
            validate_config(row_config(name))
        workdirs = []
        for name in names:
            workdir = os.path.join(FLAGS.out, name)
            print(f"== {name}: {workdir}", flush=True)
            if train_and_evaluate(row_config(name), workdir)["preempted"]:
                print(f"stopped (SIGTERM) during {name}; rerun the same command to resume", flush=True)
                sys.exit(1)
            workdirs.append(workdir)
    cmd = [sys.executable, "-m", "experiments.evaluate", "--workdirs", ",".join(workdirs), "--samplers",
           FLAGS.sampler, "--num", str(FLAGS.num), "--bpd_examples", str(FLAGS.bpd_examples),
           "--noclip_denoised", "--out", os.path.join(FLAGS.out, "results.jsonl")]  # fmt: skip
    if FLAGS.data_dir:
        cmd += ["--data_dir", FLAGS.data_dir]
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    app.run(main)
