"""MNIST reflow (Liu et al. 2022) of the flow-matching run: the 2-rectified flow, started from the
teacher's parameters and trained by flow matching on the teacher's own couplings (noise z, sample
Φ(z)), so that its trajectories straighten and Euler with 1–2 steps lands near Φ(z):

    python -m experiments.sample --workdir outputs/mnist_fm --sampler midpoint --steps 10 \
        --num 12000 --couplings outputs/couplings/mnist_fm_midpoint10.npz
    python -m experiments.train --config experiments/configs/mnist_reflow.py --workdir outputs/mnist_reflow

Then k-step distillation of the reflowed flow into a two-time network (`mnist_pair_distillation.py`).
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.data.couplings = "outputs/couplings/mnist_fm_midpoint10.npz"
    c.loss.name = "reflow"
    c.train.update(init_from="outputs/mnist_fm", num_steps=1500, learning_rate=5e-4, warmup_steps=20,
                   ema_decay=0.995, checkpoint_every=250, sample_every=0)  # fmt: skip
    c.sample.update(sampler="euler", num_steps=2, clip_denoised=True)
    return c
