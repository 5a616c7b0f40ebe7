"""A small MNIST CNN classifier: the feature extractor behind FD-MNIST and conditional accuracy.

Trained once on the MNIST training split and cached in a directory under a content hash of its
recipe and the training data, so every evaluation uses the same network. Its penultimate layer (128
features) plays the role Inception's pool features play in FID — "FD-MNIST" is NOT comparable to
Inception FID numbers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffjax.evaluation.batching import map_batches

RECIPE = dict(version=2, steps=3000, batch_size=128, learning_rate=2e-3, seed=0)  # cosine-decayed Adam


class MnistCNN(nnx.Module):
    """conv(32)-conv(32)-pool-conv(64)-conv(64)-pool-dense(128)-dense(10), inputs in [−1, 1]."""

    def __init__(self, rngs: nnx.Rngs):
        self.convs = nnx.List([
            nnx.Conv(1, 32, (3, 3), rngs=rngs), nnx.Conv(32, 32, (3, 3), rngs=rngs),
            nnx.Conv(32, 64, (3, 3), rngs=rngs), nnx.Conv(64, 64, (3, 3), rngs=rngs),
        ])  # fmt: skip
        self.hidden = nnx.Linear(7 * 7 * 64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def features(self, x):
        """(N, 28, 28, 1) → (N, 128) penultimate activations."""
        for i, conv in enumerate(self.convs):
            x = nnx.relu(conv(x))
            if i % 2 == 1:
                x = nnx.max_pool(x, (2, 2), (2, 2))
        return nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.out(self.features(x))


@dataclass(frozen=True)
class Classifier:
    """A trained classifier: `logits(x)`, `features(x)`, `predict(x)` on (N, 28, 28, 1) in [−1, 1]."""

    graphdef: nnx.GraphDef
    params: nnx.State
    test_accuracy: float

    def _apply(self, output, x, batch=1000):
        return map_batches(functools.partial(_forward, output, self.graphdef, self.params), x, batch)

    def logits(self, x):
        return self._apply("logits", x)

    def features(self, x):
        return self._apply("features", x)

    def predict(self, x):
        return self.logits(x).argmax(-1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(output: str, graphdef: nnx.GraphDef, params: nnx.State, x):
    """Compiled once per output kind, model and batch shape (not once per call)."""
    model = nnx.merge(graphdef, params)
    return model(x) if output == "logits" else model.features(x)


def _digest(train_x: np.ndarray, steps: int) -> str:
    h = hashlib.sha256(json.dumps({**RECIPE, "steps": steps}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(train_x[::97]).tobytes())
    return h.hexdigest()[:16]


def train_classifier(train, test, log=print, steps: int = RECIPE["steps"]) -> Classifier:
    """Train `MnistCNN` with Adam on (x (N, 28, 28, 1) in [−1, 1], y (N,)); report test accuracy."""
    (x, y), (xt, yt) = train, test
    graphdef, params = nnx.split(MnistCNN(nnx.Rngs(RECIPE["seed"])))
    opt = optax.adam(optax.cosine_decay_schedule(RECIPE["learning_rate"], steps))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            logits = nnx.merge(graphdef, p)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(RECIPE["seed"])
    b = RECIPE["batch_size"]
    for i in range(steps):
        idx = rng.integers(0, len(x), b)
        params, opt_state, value = step(params, opt_state, x[idx], y[idx])
        if i % 1000 == 0:
            log(f"classifier step {i}: loss {float(value):.4f}")
    clf = Classifier(graphdef, params, 0.0)
    acc = float(np.mean(clf.predict(xt) == yt))
    return Classifier(graphdef, params, acc)


def load_or_train_classifier(
    cache_dir: str, data_dir: str | None = None, log=print, steps: int = RECIPE["steps"]
) -> Classifier:
    """The cached classifier for this recipe and data, training it (a few CPU minutes) if absent."""
    from diffjax.data import load_dataset

    train = load_dataset("mnist", "train", data_dir)
    test = load_dataset("mnist", "test", data_dir)
    path = os.path.join(cache_dir, f"mnist_classifier_{_digest(train[0], steps)}.npz")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: MnistCNN(nnx.Rngs(0))))  # shapes: no compute
    if os.path.exists(path):
        stored = np.load(path)
        leaves = [jnp.asarray(stored[f"p{i}"]) for i in range(len(jax.tree_util.tree_leaves(params)))]
        params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
        return Classifier(graphdef, params, float(stored["test_accuracy"]))
    clf = train_classifier(train, test, log, steps)
    os.makedirs(cache_dir, exist_ok=True)
    leaves = {f"p{i}": np.asarray(v) for i, v in enumerate(jax.tree_util.tree_leaves(clf.params))}
    tmp = path + ".tmp.npz"
    np.savez(tmp, test_accuracy=clf.test_accuracy, **leaves)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache
    log(f"MNIST classifier test accuracy {100 * clf.test_accuracy:.2f}% (cached in {path})")
    return clf
