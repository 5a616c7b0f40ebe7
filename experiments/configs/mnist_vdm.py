"""MNIST with VDM's learned noise schedule (Kingma et al. 2021): the ε-prediction U-Net trained on the
continuous-time negative ELBO in bits/dim (`dj.vdm_loss`: prior + 8-bit reconstruction + ½∫|λ'|‖ε − ε̂‖²,
low-discrepancy times over the batch) while the schedule γ(t) = −λ(t) learns with it
(`diffjax.models.WithSchedule`): its endpoints γ(0), γ(1) descend the bound, its shape descends the
variance of the bound's estimate (the gradient of the mean square, VDM §4.2). The network sees the
schedule's normalised γ instead of t. Same U-Net and budget as the other MNIST configs.

    python -m experiments.train --config experiments/configs/mnist_vdm.py --workdir outputs/mnist_vdm \
        --config.data.data_dir=../shared/data/mnist
    python -m experiments.evaluate --workdirs outputs/mnist_vdm --samplers dpm_solver_pp:20,heun:10 \
        --clip_denoised --data_dir ../shared/data/mnist

`--config.process.kwargs.learn_endpoints=False` keeps γ ∈ [−13.3, 5] (then only the shape learns).
The variant `mnist_vdm.py:vp` trains on the same bound with the fixed VP SDE (β ∈ [0.1, 20], the network
fed t): the schedule's share of the result.
"""

from experiments.configs import mnist_ddpm, mnist_vp


def get_config(variant: str = "learned"):
    if variant not in ("learned", "vp"):
        raise ValueError(f"mnist_vdm: variant must be 'learned' or 'vp', got {variant!r}.")
    c = mnist_vp.get_config()
    c.model.kwargs = mnist_ddpm.unet_kwargs(time_scale=1000.0)  # fed τ = (γ − γ_min)/(γ_max − γ_min) ∈ [0, 1]
    c.process = dict(name="learned",
                     kwargs=dict(gamma_min=-13.3, gamma_max=5.0, hidden=16, learn_endpoints=True))
    c.loss.update(name="vdm", weighting="none", time="uniform", time_kwargs={}, t_eps=0.0)
    c.sample.update(sampler="dpm_solver_pp", num_steps=20)
    if variant == "vp":
        c.process = dict(name="vp", kwargs={})
    return c
