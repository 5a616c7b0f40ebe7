"""Every key an experiment config has, with its default: the schema `validate_config` checks.

Free-form sub-dicts (validated by what consumes them): model.kwargs (the network's config fields),
process.kwargs (the process's parameters), loss.time_kwargs (the time sampler's parameters),
sample.options (the solver's options).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # data.name: checkerboard | moons | eight_gaussians | spirals | mnist | cifar10 ...;
    # num_examples 0 = all (toys: how many to draw); couplings: a .npz of (noise, sample) pairs written by
    # `experiments.sample --couplings`, the training data of loss.name reflow | pair_distillation;
    # latents: the work directory of an autoencoder (experiments.train_autoencoder): train on its cached,
    # normalised latents of data.name (latent diffusion; samples are decoded to images)
    c.data = dict(name="checkerboard", data_dir="", source="auto", num_examples=0, couplings="", latents="")
    # model.kind: mlp | unet | dit; model.prediction: eps | x0 | score | v | velocity;
    # model.preconditioning: none | edm (EDM's c_skip/c_out/c_in/c_noise with sigma_data; needs prediction x0)
    #   | consistency (Song et al.'s boundary-respecting c_skip/c_out: a consistency model f(x, t));
    # model.noise_input (consistency models): log_sigma (EDM's ¼ ln σ̃) | trig (TrigFlow's τ, sCM's choice)
    # model.remat: recompute each U-Net ResBlock / DiT block in the backward pass instead of storing its
    # activations (gradient checkpointing: less memory, ≈ one more forward pass, the same numbers; not in
    # the run record, so a run may resume with it switched). bf16 compute: model.kwargs.dtype='bfloat16'
    # (with the default param_dtype='float32': float32 parameters, optimizer and EMA, bfloat16 matmuls and
    # convolutions; a run record field, like every network field)
    c.model = dict(kind="mlp", prediction="velocity", kwargs={}, preconditioning="none", sigma_data=0.5,
                   remat=False, noise_input="log_sigma")
    # process.name: a key of diffjax.processes.PROCESSES (vp, subvp, ve, cosine_vp, condot, ddpm, ...)
    c.process = dict(name="condot", kwargs={})
    # loss.name: dsm (target ε) | cfm (target velocity) | ddpm (= dsm on the chain);
    # weighting: none | eps | likelihood | uniform | edm | min_snr (see diffjax.losses), weighting_kwargs
    # its options (edm: sigma_data; min_snr: gamma); time: uniform | logit_normal | lognormal | antithetic,
    # time_kwargs its options (lognormal: p_mean, p_std); t_eps: data-end offset of the training times
    # learned_weighting: EDM2's learned uncertainty u(λ) on top (e^{−u}·L + u; diffjax.models.uncertainty)
    # few-step losses (diffjax.meanflow, .shortcut, .consistency, .distillation, .reflow), options = the
    # loss's keyword options: meanflow (a two-time network, model.kwargs.second_time=True; options mean,
    # std, ratio, adaptive_p, adaptive_c; teacher.workdir optional) | shortcut (Frans et al.; two-time;
    # options max_steps, bootstrap_fraction; teacher.workdir optional) | consistency_training (iCT; options
    # num_levels, distance, sigma_max, ...) | consistency_distillation (needs teacher.workdir; options
    # num_steps (the grid), solver, distance) | consistency_continuous (sCM, Lu & Song 2024: sCT, or sCD
    # with teacher.workdir; options p_mean, p_std, warmup, tangent_c); the consistency losses need
    # model.preconditioning='consistency', or 'ddim_consistency': an ordinary network's one-step DDIM
    # jump, which a trained diffusion/flow network starts with train.init_from) | progressive_distillation
    # (needs teacher.workdir and options.num_student_steps, weighting; sample with 'ddim') | reflow (flow
    # matching on data.couplings, Liu et al.; weighting and time as for cfm) | pair_distillation (k-step
    # distillation of the couplings into a two-time network; options num_steps, grid). Two-time networks
    # sample with 'flow_map'.
    c.loss = dict(name="cfm", weighting="none", weighting_kwargs={}, time="uniform", time_kwargs={},
                  t_eps=0.0, learned_weighting=False, options={})
    # teacher.workdir: a finished run (or 'pretrained:NAME') whose EMA model a distillation loss follows
    # (its process must be this run's); with loss.name='meanflow' it replaces the conditional velocity by
    # the teacher's
    c.teacher = dict(workdir="")
    c.train = dict(num_steps=6000, batch_size=512, learning_rate=2e-3, warmup_steps=200,
                   weight_decay=0.0, clip_norm=1.0, ema_decay=0.999, checkpoint_every=2000,
                   keep=2, log_every=200, sample_every=0, label_dropout=0.0,
                   init_from="",  # a work directory / pretrained:NAME whose EMA parameters start a run
                   # post-hoc EMA (EDM2): widths σ_rel of the power-function EMAs tracked (e.g. (0.05, 0.1)),
                   # saved to <workdir>/ema_snapshots every snapshot_every steps (0: checkpoint_every)
                   posthoc_ema=(), snapshot_every=0)
    # sample.sampler: a name of diffjax.solvers.SOLVERS; options: its keyword options
    # sample.grid: uniform | edm | logsnr (diffjax.grids), the times the sampler steps through
    # sample.guidance_interval: (σ_lo, σ_hi) — guidance (classifier-free or autoguidance) only where the
    # noise level σ/α lies in (σ_lo, σ_hi] (Kynkäänniemi et al. 2024); () everywhere
    c.sample = dict(sampler="heun", num_steps=32, num_samples=4000, guidance_scale=1.0,
                    clip_denoised=False, options={}, grid="uniform", guidance_interval=())
    # timeout_s: how long a process waits for the coordinator (process 0) before a clear error
    c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, timeout_s=300.0)
    # parallel.fsdp: split the parameters, optimizer state and EMA F ways (FSDP / ZeRO-3) over a
    # (devices // F) × F mesh ('data', 'fsdp'); 1 = pure data parallelism (the state replicated). F must
    # divide the device count; the batch is split over all devices (diffjax.training.parallel)
    c.parallel = dict(fsdp=1)
    return c
