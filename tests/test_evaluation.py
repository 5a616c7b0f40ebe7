"""Evaluation metrics: Fréchet distance against closed forms; the classifier cache round trip."""

import os

import numpy as np
import pytest

from diffjax.evaluation import (
    class_histogram,
    class_tv,
    conditional_accuracy,
    feature_statistics,
    frechet_distance,
    load_or_train_classifier,
)
from diffjax.evaluation.batching import map_batches

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    # diagonal covariances: ‖μ1 − μ2‖² + Σ (√a − √b)²
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a full covariance against itself, rotated means: only the mean term remains
    m = rng.normal(size=(4, 4))
    cov = m @ m.T + np.eye(4)
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(np.sum((mu1 - mu2) ** 2), abs=1e-8)


def test_feature_statistics_converge_and_validate():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(200_000, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]
    mu, cov = feature_statistics(f)
    np.testing.assert_allclose(mu, [1.0, 0.0, -1.0], atol=0.02)
    np.testing.assert_allclose(np.diag(cov), [1.0, 4.0, 0.25], rtol=0.02)
    with pytest.raises(ValueError, match="need"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_map_batches_pads_the_last_batch_and_compiles_once():
    import jax

    traces = []

    @jax.jit
    def f(x):
        traces.append(x.shape)
        return x.sum(axis=1) * 2.0

    x = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    np.testing.assert_allclose(map_batches(f, x, 5), x.sum(axis=1) * 2.0)  # 5+5+5+5+3 (padded)
    assert traces == [(5, 3)]
    np.testing.assert_allclose(map_batches(f, x[:2], 5), x[:2].sum(axis=1) * 2.0)  # one short batch
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(f, x, 0)
    with pytest.raises(ValueError, match="non-empty"):
        map_batches(f, x[:0], 5)


def test_class_tv_bounds_and_sampling_rate():
    p = np.full(10, 0.1)
    assert class_tv(p, p) == 0.0
    assert class_tv(np.eye(10)[0], np.eye(10)[1]) == pytest.approx(1.0)
    assert class_tv(np.eye(10)[3], p) == pytest.approx(0.9)  # mode collapse onto one digit
    # a multinomial histogram of n draws: E TV ≈ Σ_k √(p_k(1−p_k)/n) · √(2/π) / 2 (half-normal means)
    rng = np.random.default_rng(0)
    n = 1000
    tvs = [class_tv(rng.multinomial(n, p) / n, p) for _ in range(2000)]
    assert np.mean(tvs) == pytest.approx(10 * np.sqrt(0.09 / n) * np.sqrt(2 / np.pi) / 2, rel=0.05)
    with pytest.raises(ValueError, match="shape"):
        class_tv(np.ones(9), p)


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST, "train-images-idx3-ubyte.gz")),
                    reason="MNIST IDX files not found in ../shared/data/mnist")
def test_classifier_trains_caches_and_scores(tmp_path):
    """A short (60-step: 95.0% measured) training run already separates the digits; the cache reloads it
    exactly."""
    logs = []
    clf = load_or_train_classifier(str(tmp_path), MNIST, log=logs.append, steps=60)
    assert clf.test_accuracy > 0.9
    again = load_or_train_classifier(str(tmp_path), MNIST, log=logs.append, steps=60)
    assert again.test_accuracy == clf.test_accuracy
    assert sum("cached in" in line for line in logs) == 1  # trained once, then loaded
    from diffjax.data import load_dataset

    x, y = load_dataset("mnist", "test", MNIST, num_examples=500)
    np.testing.assert_array_equal(again.predict(x), clf.predict(x))
    assert clf.features(x[:10]).shape == (10, 128)
    hist = class_histogram(clf, x)
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    assert conditional_accuracy(clf, x, y) > 0.9
    assert conditional_accuracy(clf, x, (y + 1) % 10) < 0.1  # wrong labels are recognised as wrong
