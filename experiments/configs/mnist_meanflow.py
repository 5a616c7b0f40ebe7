"""MNIST MeanFlow (Geng et al. 2025): a two-time U-Net u(x, t, s) on the CondOT path, sampled in one
or two jumps.

Variant `finetune` (default): fine-tuned from the flow-matching run (its velocity network becomes the
diagonal u(x, t, t) = v(x, t); the new interval embedding starts at zero) and distilled from it (the
teacher's velocity replaces the conditional one in the MeanFlow target):

    python -m experiments.train --config experiments/configs/mnist_meanflow.py \
        --workdir outputs/mnist_meanflow --config.data.data_dir=../shared/data/mnist \
        --config.train.init_from=outputs/mnist_fm --config.teacher.workdir=outputs/mnist_fm

Variant `smooth` (`mnist_meanflow.py:smooth`): a new network whose time features are sin/cos of t
itself (time_scale 1, not flow matching's 1000·t), distilled from the shipped teacher's velocity. The
MeanFlow target v − (t − s)·du/dt differentiates the network in t; with 1000·t features the teacher's
own du/dt along its ODE is dominated by wiggles of period ≈ 0.006 in t (jvp RMS 6–10 against a slope of
2–4 over Δt = 0.01, |v| ≈ 1.3; measured 2026-12-04), so a student that inherits those features
regresses onto noise (sCM, Lu & Song 2024, lower the time features' frequency for the same reason):

    python -m experiments.train --config experiments/configs/mnist_meanflow.py:smooth \
        --workdir outputs/mnist_meanflow_smooth --config.data.data_dir=../shared/data/mnist

Measured (2026-12-04, 1500 × 128): FD-MNIST 233 / 139 / 94 at 1 / 2 / 4 `flow_map` jumps (three noise
seeds at 1–2), 120 at two `flow_map_ddim` jumps; the fine-tune from the 1000·t teacher: 2565 / 779 / 236.

Variant `imf` (`mnist_meanflow.py:imf`): improved MeanFlow from scratch, no teacher at all — the
`smooth` network trained on the conditional velocity with du/dt along its own u(x, t, t)
(`loss.options.tangent='model'`, Geng et al. 2025b). Measured (2026-12-04, 1500 × 128, 35.7 min): FD-MNIST
176 / 142 at 1 / 2 `flow_map` jumps, 118 at two `flow_map_ddim` jumps (means of three noise seeds);
resumed to 2500 steps (`--config.train.num_steps=2500`, shipped as `pretrained:mnist_imf`): 136 / 91 and
86 — level with the trajectory-distilled `pretrained:mnist_few_step`.

Variant `mf` (`mnist_meanflow.py:mf`): `imf`'s ablation — the same network and schedule from scratch with
MeanFlow's own tangent (du/dt along the conditional velocity, `tangent='velocity'`), so the difference
between the two runs is the tangent alone. Measured (2026-12-04, 1500 × 128, 62.3 min on shared cores):
FD-MNIST 220 / 137 at 1 / 2 `flow_map` jumps, 110 at two `flow_map_ddim` jumps (means of three noise
seeds) — iMF's tangent lowers the one jump (176) only.

Variant `cfg` (`mnist_meanflow.py:cfg`): class-conditional `imf` (labels 0–9, null label 10, 10% label
dropout) with MeanFlow's guidance in training (`loss.options.guidance_scale=2`: the regressed velocity is
2·v_c − u(x_t, t, t | ∅)), so one jump samples the guided ODE at w = 2 with one evaluation
(`sample.guidance_scale` stays 1: the guidance is in the network). Measured (2026-12-04, 1500 × 128, 68.7 min
on shared cores): one `flow_map` jump FD-MNIST 24.4 with 99.0–99.5% the requested digit (three noise
seeds), two `flow_map_ddim` jumps 27.9.

Without init_from / teacher.workdir `finetune` trains MeanFlow from scratch on the data alone.
"""

from experiments.configs import mnist_ddpm, mnist_fm

VARIANTS = ("finetune", "smooth", "imf", "mf", "cfg")


def get_config(variant: str = "finetune"):
    if variant not in VARIANTS:
        raise ValueError(f"mnist_meanflow: variant must be one of {VARIANTS}, got {variant!r}.")
    c = mnist_fm.get_config()
    c.model.kwargs = {**c.model.kwargs, "second_time": True}
    c.loss.name = "meanflow"
    c.loss.options = dict(ratio=0.25, adaptive_p=1.0)
    c.train.update(num_steps=600, learning_rate=1e-3, warmup_steps=50, checkpoint_every=100,
                   sample_every=0)
    c.sample.update(sampler="flow_map", num_steps=1)
    if variant in ("smooth", "imf", "mf", "cfg"):
        c.model.kwargs = mnist_ddpm.unet_kwargs(time_scale=1.0, second_time=True)
        c.teacher.workdir = "pretrained:mnist_fm" if variant == "smooth" else ""
        c.train.update(num_steps=1500, learning_rate=2e-3, warmup_steps=100, checkpoint_every=250)
    if variant in ("imf", "cfg"):
        c.loss.options = dict(ratio=0.25, adaptive_p=1.0, tangent="model")
    if variant == "cfg":
        c.model.kwargs["num_classes"] = 10
        c.train.label_dropout = 0.1
        c.loss.options["guidance_scale"] = 2.0
    return c
