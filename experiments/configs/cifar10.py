"""CIFAR-10 (32×32×3) with the VP SDE, ε-prediction, ADM-style U-Net — for GPU/TPU.

    python -m experiments.train --config experiments/configs/cifar10.py --workdir outputs/cifar10
(needs a prepared tensorflow-datasets `cifar10`: `pip install 'diffjax[tf]'` and `tfds build cifar10`)
"""

from experiments.configs import base


def get_config():
    c = base.get_config()
    c.data.update(name="cifar10", data_dir="", source="tfds", num_examples=0)
    c.model.update(kind="unet", prediction="eps",
                   kwargs=dict(in_channels=3, image_size=32, channels=128, channel_mults=(1, 2, 2, 2),
                               num_res_blocks=2, attention_resolutions=(16,), num_groups=32,
                               dropout=0.1, time_scale=1000.0, dtype="bfloat16"))
    c.process = dict(name="vp", kwargs={})
    c.loss.update(name="dsm", weighting="eps", time="uniform", time_kwargs={}, t_eps=1e-3)
    c.train.update(num_steps=400_000, batch_size=128, learning_rate=2e-4, warmup_steps=5000,
                   weight_decay=0.0, clip_norm=1.0, ema_decay=0.9999, checkpoint_every=10_000,
                   keep=3, log_every=100, sample_every=10_000, label_dropout=0.0)
    c.sample.update(sampler="dpm_solver_pp", num_steps=20, num_samples=64, guidance_scale=1.0,
                    clip_denoised=True, options={})
    return c
