"""MNIST trajectory distillation: a two-time network Φ(x, t, s) = x + (s − t)·u(x, t, s) regresses the
flow-matching teacher's own trajectories (its midpoint solve with 10 steps, the state after step 5 kept
as a waypoint x_½): with `num_steps=(1, 2)` each example draws one of three jumps — the whole z → x
(½), or a half z → x_½ or x_½ → x (¼ each) — so ONE network samples in one jump and in two. Unlike
distillation on the pair's straight line (`mnist_pair_distillation.py`), each jump is a piece of the
teacher's flow map, and unlike the shortcut model's self-consistency no target is the network's own
output. It starts from the shipped one-step model (`pretrained:mnist_reflow_1step`, a two-time network
that already jumps), so the recipe needs nothing but the shipped networks:

    python -m experiments.sample --workdir pretrained:mnist_fm --sampler midpoint --steps 10 \
        --num 16000 --couplings outputs/couplings/mnist_fm_midpoint10_w1.npz --waypoints 1
    python -m experiments.train --config experiments/configs/mnist_trajectory_distillation.py \
        --workdir outputs/mnist_traj12 --config.data.data_dir=../shared/data/mnist
    python -m experiments.evaluate --workdirs outputs/mnist_traj12 \
        --samplers flow_map:1,flow_map_ddim:2 --clip_denoised --bpd_examples 0 --data_dir ../shared/data/mnist

Measured (FD-MNIST, 1000 samples, noise seeds 1 / 2 / 3; the teacher at 20 evaluations 67.7): after 1600
steps (16.4 min on 2 CPU cores) one jump 138.5 / 131.5 / 151.3, two jumps with DDIM re-noising 83.8 /
79.7 / 94.8; resumed to 2400 steps (`--config.train.num_steps=2400`, 7 more minutes) 134.4 / 127.6 / 147.9
and 82.4 / 78.4 / 93.9, shipped as `pretrained:mnist_few_step`. The earlier two-network recipe
(`num_steps=(2,)` from a 2200-step shortcut model, then
`num_steps=(1,)` fine-tuned from it: `--config.loss.options.num_steps='(1,)'`) gave 93.7 at two jumps
and 134.0 at one, mean of the same three seeds, from two different networks.
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.data.couplings = "outputs/couplings/mnist_fm_midpoint10_w1.npz"
    c.loss.name = "pair_distillation"
    c.loss.options = dict(num_steps=(1, 2))  # a tuple, so that the flag can give others: '(2,)'
    c.model.kwargs = {**c.model.kwargs, "second_time": True}
    c.train.update(init_from="pretrained:mnist_reflow_1step", num_steps=1600, learning_rate=3e-4,
                   warmup_steps=20, ema_decay=0.995, checkpoint_every=200, sample_every=0)  # fmt: skip
    c.sample.update(sampler="flow_map", num_steps=2, clip_denoised=True)
    return c
