"""2D checkerboard with conditional flow matching (CondOT path) and a residual MLP — the demo.

    python experiments/train.py --config experiments/configs/checkerboard_fm.py --workdir outputs/demo
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="checkerboard", data_dir="", source="auto", num_examples=100_000)
    c.model = dict(kind="mlp", output="velocity",
                   kwargs=dict(dim=2, width=256, depth=4, time_embedding="sinusoidal"))
    c.process = dict(name="condot", kwargs={})
    c.loss = dict(name="cfm", t_eps=0.0, weighting="eps")
    c.train = dict(num_steps=6000, batch_size=512, learning_rate=2e-3, warmup_steps=200,
                   weight_decay=0.0, clip_norm=1.0, ema_decay=0.999, checkpoint_every=2000,
                   keep=2, log_every=200, sample_every=0, label_dropout=0.0)
    c.sample = dict(sampler="heun", num_steps=32, num_samples=4000, guidance_scale=1.0)
    c.distributed = dict(coordinator_address="", num_processes=1, process_id=0)
    return c
