"""MNIST, conditional flow matching on the CondOT (rectified-flow) path, velocity-predicting U-Net.

    python -m experiments.train --config experiments/configs/mnist_fm.py --workdir outputs/mnist_fm \
        --config.data.data_dir=../shared/data/mnist

Times t ~ U[0, 1] (the shipped `pretrained:mnist_fm`: FD-MNIST 67.7 at midpoint 10 steps, 1.78 bits/dim;
seed 1: 71.5).
`--config.loss.time=logit_normal` (t = sigmoid(N(0, 1)), Esser et al. 2024) trades likelihood for
samples: FD 59.0 / 58.7, 2.68 / 2.60 bits/dim on two seeds (measured 2026-12-04; README, MNIST results).

The variant `mnist_fm.py:autoguide` is the same network with the design space's sample-quality choices:
logit-normal times, two power-function EMAs for post-hoc EMA (σ_rel 0.05, 0.10) and every 250-step
checkpoint kept, so that the run's own early checkpoint can autoguide it (Karras et al. 2024). Its step 250
is the best weaker model (FD-MNIST 28.2 at w = 2.5, 20 evaluations, against 68.6 unguided: three noise
seeds; step 500 scored 37.8, step 750 47.8 on seed 1; measured 2026-12-05, shipped as
`pretrained:mnist_fm_autoguide` with `mnist_fm_autoguide_step250`):

    python -m experiments.evaluate --workdirs outputs/mnist_fm_autoguide \
        --guide_by outputs/mnist_fm_autoguide@250 --guidance_interval 0.28,5.42 \
        --samplers dpm_solver_pp:10:2.5 --data_dir ../shared/data/mnist
"""

from experiments.configs import mnist_ddpm


def get_config(variant: str = "uniform"):
    if variant not in ("uniform", "autoguide"):
        raise ValueError(f"mnist_fm: variant must be 'uniform' or 'autoguide', got {variant!r}.")
    c = mnist_ddpm.get_config()
    c.model.prediction = "velocity"
    c.model.kwargs = mnist_ddpm.unet_kwargs(time_scale=1000.0)
    c.process = dict(name="condot", kwargs={})
    c.loss.update(name="cfm", weighting="none", time="uniform", time_kwargs={}, t_eps=0.0)
    c.sample.sampler = "heun"
    c.sample.num_steps = 20
    if variant == "autoguide":
        c.loss.update(time="logit_normal", time_kwargs={})
        c.train.update(posthoc_ema=(0.05, 0.1), snapshot_every=100, checkpoint_every=250, keep=8)
    return c
