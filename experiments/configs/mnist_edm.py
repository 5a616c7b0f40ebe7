"""MNIST, the EDM recipe (Karras et al. 2022) on the shared CPU-sized U-Net and budget (1500 × 128).

EDM-preconditioned denoiser (c_skip, c_out, c_in, c_noise of `diffjax.preconditioning`) on the
variance-exploding process σ ∈ [0.002, 80], noise levels ln σ ~ N(P_mean, P_std²), EDM's loss weight
(σ² + σ_d²)/(σ σ_d)² and EDM's Heun sampler in σ on its ρ = 7 grid. σ_d is the root-mean-square of MNIST
pixels in [−1, 1] (0.96, measured; EDM's 0.5 is CIFAR-10's), and P_mean = −1.2 + ln(σ_d/0.5) = −0.55
keeps EDM's noise levels relative to the data's scale. Two power-function EMAs (σ_rel 0.05, 0.10) are
tracked for post-hoc EMA (`python -m experiments.evaluate --sigma_rels ...`). Every checkpoint is kept: the
run's own checkpoint of step 500 is the weaker model that autoguides it (`python -m experiments.evaluate
--guide_by outputs/mnist_edm@500 --samplers dpm_solver_pp:10:2.5`).

    python -m experiments.train --config experiments/configs/mnist_edm.py --workdir outputs/mnist_edm \
        --config.data.data_dir=../shared/data/mnist
"""

import math

from experiments.configs import mnist_ddpm

SIGMA_DATA = 0.96


def get_config():
    c = mnist_ddpm.get_config()
    # c_noise = ¼ ln σ ∈ [−1.6, 1.1]: time_scale 250 gives the time embedding the range of 1000·t
    c.model.update(prediction="x0", preconditioning="edm", sigma_data=SIGMA_DATA,
                   kwargs=mnist_ddpm.unet_kwargs(time_scale=250.0))  # fmt: skip
    c.process = dict(name="ve", kwargs=dict(sigma_min=0.002, sigma_max=80.0))
    c.loss.update(name="dsm", weighting="edm", weighting_kwargs=dict(sigma_data=SIGMA_DATA),
                  time="lognormal", time_kwargs=dict(p_mean=-1.2 + math.log(SIGMA_DATA / 0.5), p_std=1.2),
                  t_eps=0.0)  # fmt: skip
    # post-hoc EMA (EDM2): two power-function EMAs, snapshots every 100 steps
    # checkpoints every 250 steps, all kept: the one of step 500 is the weaker model of autoguidance
    c.train.update(posthoc_ema=(0.05, 0.1), snapshot_every=100, checkpoint_every=250, keep=8)
    # EDM's deterministic sampler (Heun in σ = σ/α), 17 steps on its ρ = 7 grid + the final denoising: 35 NFE
    c.sample.update(sampler="edm", num_steps=17, clip_denoised=False, grid="edm")
    return c
