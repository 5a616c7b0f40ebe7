"""MNIST two-step trajectory distillation: a two-time network Φ(x, t, s) = x + (s − t)·u(x, t, s) regresses
the two halves of the flow-matching teacher's own trajectories, z → x_½ and x_½ → x (its midpoint solve
with 10 steps, the state after step 5 kept as a waypoint), so that two jumps land where the teacher's
20 evaluations do. Unlike distillation on the pair's straight line (`mnist_pair_distillation.py`),
each jump is a piece of the teacher's flow map, and unlike the shortcut model's self-consistency no
target is the network's own output. Fine-tuned from the shortcut model (which already jumps at
dyadic steps). `--config.loss.options.num_steps='(1, 2)'` trains one network on the whole jump and both
halves at once (not yet measured on MNIST):

    python -m experiments.sample --workdir pretrained:mnist_fm --sampler midpoint --steps 10 \
        --num 16000 --couplings outputs/couplings/mnist_fm_midpoint10_w1.npz --waypoints 1
    python -m experiments.train --config experiments/configs/mnist_trajectory_distillation.py \
        --workdir outputs/mnist_traj2
"""

from experiments.configs import mnist_fm


def get_config():
    c = mnist_fm.get_config()
    c.data.couplings = "outputs/couplings/mnist_fm_midpoint10_w1.npz"
    c.loss.name = "pair_distillation"
    c.loss.options = dict(num_steps=(2,))  # a tuple, so that the flag can give several: (1, 2)
    c.model.kwargs = {**c.model.kwargs, "second_time": True}
    c.train.update(init_from="outputs/mnist_shortcut_2200", num_steps=800, learning_rate=3e-4,
                   warmup_steps=20, ema_decay=0.995, checkpoint_every=200, sample_every=0)  # fmt: skip
    c.sample.update(sampler="flow_map", num_steps=2, clip_denoised=True)
    return c
