"""Evaluation: FD-MNIST and classifier-based metrics, Fréchet distance, pluggable features
(FID: `fd_score(inception_extractor(weights), samples, reference)` with user-supplied weights)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffjax.evaluation.classifier import Classifier, MnistCNN, load_or_train_classifier, train_classifier
from diffjax.evaluation.frechet import feature_statistics, frechet_distance
from diffjax.evaluation.inception import InceptionV3, inception_extractor, load_inception_params

FeatureExtractor = Callable[[np.ndarray], np.ndarray]  # images (N, H, W, C) in [−1, 1] → (N, F)


def fd_score(extractor: FeatureExtractor, samples, reference) -> float:
    """Fréchet distance between the extractor's features of `samples` and of `reference` images.
    With the MNIST classifier's features this is "FD-MNIST" (not comparable to Inception FID)."""
    return frechet_distance(*feature_statistics(extractor(samples)),
                            *feature_statistics(extractor(reference)))  # fmt: skip


def class_histogram(clf: Classifier, samples) -> np.ndarray:
    """Fraction of samples the classifier assigns to each of the 10 digits."""
    return np.bincount(clf.predict(samples), minlength=10) / len(samples)


def class_tv(histogram, reference) -> float:
    """Total-variation distance ½ Σ_k |h_k − p_k| between a class histogram and reference class
    frequencies (e.g. the test set's labels): 0 for matching class balance, 1 for disjoint support."""
    h, p = np.asarray(histogram, np.float64), np.asarray(reference, np.float64)
    if h.shape != p.shape:
        raise ValueError(f"class_tv: histogram shape {h.shape} != reference shape {p.shape}")
    return 0.5 * float(np.abs(h / h.sum() - p / p.sum()).sum())


def conditional_accuracy(clf: Classifier, samples, labels) -> float:
    """Fraction of class-conditional samples the classifier recognises as their requested label."""
    return float(np.mean(clf.predict(samples) == np.asarray(labels)))


__all__ = [
    "Classifier", "FeatureExtractor", "InceptionV3", "MnistCNN", "class_histogram", "class_tv",
    "conditional_accuracy", "fd_score", "feature_statistics", "frechet_distance", "inception_extractor",
    "load_inception_params", "load_or_train_classifier", "train_classifier",
]  # fmt: skip
