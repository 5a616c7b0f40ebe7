"""MNIST k-step distillation of the reflowed flow (Liu et al. 2022, §2.3): a two-time network
Φ(x, t, s) = x + (s − t)·u(x, t, s), fine-tuned from the reflow run (its velocity on the diagonal, the
interval embedding new), regresses the jumps between the points of the couplings' straight lines on a
k-step grid; it samples with k jumps ('flow_map'). The couplings are the 2-rectified flow's own (its
trajectories are nearly straight, so its k-step Euler samples are already close):

    python -m experiments.sample --workdir outputs/mnist_reflow --sampler midpoint --steps 4 \
        --num 12000 --couplings outputs/couplings/mnist_reflow_midpoint4.npz
    python -m experiments.train --config experiments/configs/mnist_pair_distillation.py \
        --workdir outputs/mnist_rf_distil1 --config.loss.options.num_steps=1
"""

from experiments.configs import mnist_reflow


def get_config():
    c = mnist_reflow.get_config()
    c.data.couplings = "outputs/couplings/mnist_reflow_midpoint4.npz"
    c.loss.name = "pair_distillation"
    c.loss.options = dict(num_steps=1)
    c.model.kwargs.update(second_time=True)
    c.train.update(init_from="outputs/mnist_reflow", num_steps=400)
    c.sample.update(sampler="flow_map", num_steps=1)
    return c
