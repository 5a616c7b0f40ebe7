"""Latent diffusion: the KL autoencoder, the normalised latent space, and the experiment pipeline
(autoencoder → cached latents → latent model → decoded samples)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax.latent import LatentSpace, kl_to_standard_normal, latent_statistics
from diffjax.models import AutoencoderConfig, build_model
from diffjax.pretrained import network_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
SMALL = dict(channels=8, channel_mults=(1, 2, 2), latent_channels=3, num_groups=4)


def small_autoencoder(seed=0):
    return build_model({"kind": "autoencoder", **SMALL}, seed)


def test_shapes_and_the_posterior_draw():
    ae = small_autoencoder()
    assert ae.config.latent_shape == (7, 7, 3)
    x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1), minval=-1, maxval=1)
    mean, log_var = ae.encode(x)
    assert mean.shape == log_var.shape == (5, 7, 7, 3)
    assert ae.decode(mean).shape == (5, 28, 28, 1)
    recon, m, lv = ae(x)  # no key: z = mean
    np.testing.assert_array_equal(recon, ae.decode(mean))
    recon_key, _, _ = ae(x, jax.random.key(1))
    assert not np.allclose(recon_key, recon)  # a draw from q(z | x), not its mean


@pytest.mark.parametrize("fields, match", [
    (dict(image_size=30, channel_mults=(1, 2, 2)), "divisible by 4"),
    (dict(channels=10, num_groups=4), "divisible by num_groups"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(channel_mults=()), "non-empty"),
])  # fmt: skip
def test_config_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        AutoencoderConfig(**fields)


def test_bad_shapes_are_refused_before_compute():
    ae = small_autoencoder()
    with pytest.raises(ValueError, match=r"x must be \(batch, 28, 28, 1\)"):
        ae.encode(jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"z must be \(batch, 7, 7, 3\)"):
        ae.decode(jnp.zeros((2, 7, 7, 4)))


def test_kl_matches_monte_carlo_and_its_gradient_is_analytic():
    """½(μ² + σ² − 1 − log σ²) against E_q[log q(z) − log p(z)] from 400k draws (4 standard errors),
    and its gradient (μ, ½(σ² − 1)) against autodiff."""
    mean, log_var = jnp.array([0.7, -1.3, 0.0]), jnp.array([-0.5, 0.4, -2.0])
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.key(0), (400_000, 3))
    log_q = -0.5 * ((z - mean) ** 2 / jnp.exp(log_var) + log_var)  # the 2π terms cancel
    log_p = -0.5 * z**2
    terms = np.asarray(log_q - log_p, np.float64)
    se = terms.std(0) / np.sqrt(len(terms))
    exact = np.asarray(kl_to_standard_normal(mean, log_var))
    assert np.all(np.abs(terms.mean(0) - exact) < 4 * se), (terms.mean(0), exact, se)
    g_mean, g_log_var = jax.grad(lambda m, v: kl_to_standard_normal(m, v).sum(), argnums=(0, 1))(
        mean, log_var
    )
    np.testing.assert_allclose(g_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(g_log_var, 0.5 * (jnp.exp(log_var) - 1), rtol=1e-6)


def test_loss_is_reconstruction_plus_weighted_kl():
    ae = small_autoencoder()
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1), minval=-1, maxval=1)
    key = jax.random.key(3)
    recon, mean, log_var = ae(x, key)
    mse = jnp.mean((recon - x) ** 2)
    kl = jnp.mean(kl_to_standard_normal(mean, log_var))
    for beta in (0.0, 0.1):
        np.testing.assert_allclose(
            dj.autoencoder_loss(ae, x, key, kl_weight=beta), mse + beta * kl, rtol=1e-6
        )


def test_normalisation_round_trips_and_standardises():
    """z̃ = (μ − shift)·scale has mean 0 and std 1 on the data it was fitted on, and decoding z̃ is
    decoding μ: the normalisation is exactly undone."""
    ae = small_autoencoder()
    x = jax.random.uniform(jax.random.key(0), (37, 28, 28, 1), minval=-1, maxval=1)
    raw = dj.encode_dataset(LatentSpace(ae), x, batch_size=16)  # 37 = 16 + 16 + 5: a padded last batch
    np.testing.assert_allclose(raw, ae.encode(x)[0], atol=1e-5)
    shift, scale = latent_statistics(raw)
    space = LatentSpace(ae, shift, scale)
    z = dj.encode_dataset(space, x, batch_size=16)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    np.testing.assert_allclose(
        dj.decode_latents(space, z, batch_size=10), ae.decode(ae.encode(x)[0]), atol=1e-5
    )
    with pytest.raises(ValueError, match="positive"):
        latent_statistics(np.zeros((3, 7, 7, 3)))


def test_training_reduces_the_reconstruction_error():
    """60 Adam steps on 64 images of a Gaussian blob at random places (2 numbers each: compressible):
    the reconstruction error ends below a quarter of the error of the best constant image (the data's
    per-pixel variance) — a broken gradient, posterior draw or decoder wiring would not get there."""
    ae = small_autoencoder()
    centres = np.random.default_rng(0).uniform(6, 22, (64, 2))
    i = np.arange(28)
    rows, cols = i[None, :, None], i[None, None, :]
    blobs = np.exp(
        -((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2) / 18.0
    )
    x = jnp.asarray(2 * blobs[..., None] - 1, jnp.float32)
    variance = float(jnp.mean(jnp.var(x, axis=0)))
    graphdef, params = nnx.split(ae)
    optimizer, _ = dj.training.make_optimizer(learning_rate=3e-3, total_steps=60, warmup_steps=10)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(lambda p: dj.autoencoder_loss(nnx.merge(graphdef, p), x, key, kl_weight=1e-3))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

    def error(p):
        m = nnx.merge(graphdef, p)
        return float(jnp.mean((m.decode(m.encode(x)[0]) - x) ** 2))

    for k in range(60):
        params, opt_state = step(params, opt_state, jax.random.key(k))
    assert error(params) < variance / 4, (variance, error(params))


@pytest.mark.skipif(
    not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
    reason="MNIST IDX files not found in ../shared/data/mnist",
)
def test_pipeline_autoencoder_latents_latent_model_decoded_samples(tmp_path):
    from experiments.builders import ConfigError
    from experiments.configs import mnist_autoencoder, mnist_latent_dit
    from experiments.train import train_and_evaluate
    from experiments.train_autoencoder import train_autoencoder

    ae_dir, ld_dir = str(tmp_path / "ae"), str(tmp_path / "latent")
    cfg = mnist_autoencoder.get_config()
    cfg.data.update(data_dir=MNIST, num_examples=200)
    cfg.model.kwargs.update(SMALL)
    cfg.train.update(num_steps=3, warmup_steps=1, batch_size=16, checkpoint_every=3, log_every=3)
    evaluation = train_autoencoder(cfg, ae_dir)
    assert evaluation["latent_shape"] == [7, 7, 3] and evaluation["num_latents"] == 200
    cached = np.load(os.path.join(ae_dir, "latents.npz"))
    assert cached["latents"].shape == (200, 7, 7, 3) and cached["labels"].shape == (200,)
    assert abs(cached["latents"].std() - 1) < 1e-4 and os.path.getsize(
        os.path.join(ae_dir, "reconstructions.png")
    )

    lcfg = mnist_latent_dit.get_config()
    lcfg.data.update(data_dir=MNIST, latents=ae_dir)
    lcfg.model.kwargs.update(in_channels=3, hidden_size=32, depth=1, num_heads=2)
    lcfg.train.update(num_steps=3, warmup_steps=1, batch_size=16, checkpoint_every=3, sample_every=0)
    lcfg.sample.update(num_steps=2, num_samples=4)
    train_and_evaluate(lcfg, ld_dir)
    assert np.load(os.path.join(ld_dir, "samples.npz"))["samples"].shape == (4, 28, 28, 1)  # decoded

    trained = dj.load_model(ld_dir)
    assert trained.record["data_shape"] == [7, 7, 3] and trained.record["latent"]["image_shape"] == [
        28,
        28,
        1,
    ]
    assert trained.latent_space.scale == pytest.approx(float(cached["scale"]))
    z = dj.sample("euler", trained.model, trained.process, jax.random.key(0), (2, 7, 7, 3), 2).samples
    assert trained.latent_space.decode(z).shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="holds an autoencoder"):
        dj.load_model(ae_dir)
    # shipped as one pretrained network: the autoencoder rides in the same files, the samples decode alike
    path = dj.save_pretrained(trained, str(tmp_path / "x.npz"), storage_dtype="float32")
    shipped, card = dj.load_pretrained(path), dj.pretrained_card(path)
    sizes = [sum(v.size for v in network_parameters(m).values()) for m in (trained.latent_space.autoencoder,
                                                                            trained.model)]
    assert card["autoencoder"]["num_parameters"] == sizes[0] > 0 and card["num_parameters"] == sizes[1]
    assert (shipped.latent_space.shift, shipped.latent_space.scale) == (
        trained.latent_space.shift, trained.latent_space.scale)
    z2 = dj.sample("euler", shipped.model, shipped.process, jax.random.key(0), (2, 7, 7, 3), 2).samples
    np.testing.assert_array_equal(np.asarray(shipped.latent_space.decode(z2)),
                                  np.asarray(trained.latent_space.decode(z)))
    with pytest.raises(ValueError, match="names a latent space but the TrainedModel has none"):
        dj.save_pretrained(trained._replace(latent_space=None), str(tmp_path / "y.npz"))
    shutil.copy(path, tmp_path / "z.npz")  # a latent model's card without its autoencoder: refused
    with open(tmp_path / "z.json", "w") as f:
        json.dump({k: v for k, v in card.items() if k != "autoencoder"}, f)
    with pytest.raises(ValueError, match="is a latent model without its autoencoder"):
        dj.load_pretrained(str(tmp_path / "z.npz"))

    other = str(tmp_path / "ae2")  # resuming on another autoencoder's latents is refused by field
    os.symlink(ae_dir, other)
    lcfg.data.latents = other
    lcfg.train.num_steps = 4
    with pytest.raises(dj.training.RunMismatchError, match="latent.autoencoder"):
        train_and_evaluate(lcfg, ld_dir)
    lcfg.data.latents = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="has no latents.npz"):
        train_and_evaluate(lcfg, str(tmp_path / "fresh"))
