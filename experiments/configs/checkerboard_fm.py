"""2D checkerboard with conditional flow matching (CondOT path) and a residual MLP — the demo.

    python -m experiments.train --config experiments/configs/checkerboard_fm.py --workdir outputs/demo
"""

from experiments.configs import base


def get_config():
    c = base.get_config()
    c.data.num_examples = 100_000
    c.model.kwargs = dict(dim=2, width=256, depth=4, time_embedding="sinusoidal")
    return c
