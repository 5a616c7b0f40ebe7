"""Figure 14: what VDM's learned schedule learned on MNIST — the schedule γ(t) = −λ(t) after training
against its initialisation, and the integrand of the diffusion loss along t under both.

The continuous-time loss ½∫|γ'(t)|·E‖ε − ε̂‖² dt does not depend on the schedule's shape for a network
that sees the SNR (`diffjax.models.WithSchedule` feeds it the normalised γ), but the variance of its
one-time Monte Carlo estimate does, and is smallest where the integrand is flat in t (VDM §4.2). The
right panel shows the integrand (bits/dim per unit t, averaged over test images) under the trained
shape and under the initial shape with the trained endpoints, for the same network; the title gives
the variance of the one-time estimate over test images under each (one draw of t and ε per image).

    python -m experiments.figures.fig14_learned_schedule --out docs/figures \\
        [--workdir outputs/mnist_vdm] [--data_dir ../shared/data/mnist]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments.figures import _common

NAME = "fig14_learned_schedule"


def schedules(workdir: str):
    """(network, trained schedule, initial shape with the trained endpoints) of a VDM work directory."""
    import diffjax as dj
    from diffjax.models import build_model

    trained = dj.load_model(workdir)
    if not trained.record["model"].get("learned_schedule"):
        raise ValueError(f"{workdir} was not trained with a learned schedule (process.name='learned').")
    with open(os.path.join(workdir, "config.json")) as f:
        seed = json.load(f).get("seed", 0)
    initial = build_model(trained.record["model"], seed).process  # the run's own initialisation
    endpoints = {"gamma_min": trained.process.gamma_min, "gamma_max": trained.process.gamma_max}
    initial = dataclasses.replace(initial, **endpoints)
    return trained.model, trained.process, initial


def integrand(network, process, x, key, t):
    """(len(t), batch): ½|γ'(t)|·‖ε − ε̂(x_t, τ(t))‖² / (D ln 2), the diffusion loss's integrand in
    bits/dim per unit t, at each t for each image (one ε per pair); ε̂ from the network fed this
    process's normalised γ."""
    from diffjax.flow import as_flow

    model = lambda x_t, s: network.network(x_t, process.unit_gamma(s))  # noqa: E731
    flow = as_flow(model, process, "eps")
    dim = x[0].size

    def at(t_k, k):
        ts = jnp.full((x.shape[0],), t_k)
        noised = process.sample_marginal(k, x, ts)
        eps_hat = flow.denoise(noised.x_t, ts)[1]
        _, d_gamma = jax.jvp(process.gamma, (ts,), (jnp.ones_like(ts),))
        sq = jnp.sum(jnp.square(noised.eps - eps_hat).reshape(x.shape[0], -1), -1)
        return 0.5 * jnp.abs(d_gamma) * sq / (dim * np.log(2.0))

    over_times = jax.jit(lambda ts, keys: jax.lax.map(lambda pair: at(*pair), (ts, keys)))  # one program
    return over_times(jnp.asarray(t), jax.random.split(key, len(t)))


def one_time_estimates(network, process, x, key):
    """(batch,): the diffusion term of `continuous_elbo` with one time per image, in bits/dim."""
    from diffjax.likelihood import continuous_elbo

    model = lambda x_t, s: network.network(x_t, process.unit_gamma(s))  # noqa: E731
    bound = jax.jit(lambda k: continuous_elbo(model, process, x, k, num_times=1, prediction="eps"))(key)
    return np.asarray(bound.diffusion) / (x[0].size * np.log(2.0))


def main(argv=None) -> str:
    p = _common.parser(__doc__)
    p.add_argument("--workdir", default="outputs/mnist_vdm", help="a run of experiments/configs/mnist_vdm.py")
    p.add_argument("--data_dir", default=_common.DEFAULT_MNIST, help="the MNIST IDX files")
    p.add_argument("--num", type=int, default=1000, help="test images for the variance (default 1000)")
    p.add_argument("--bins", type=int, default=24, help="times at which the integrand is drawn")
    args = p.parse_args(argv)
    if not _common.has_checkpoint(args.workdir):
        raise _common.MissingInput(f"fig14: no checkpoint in {args.workdir}; train experiments/configs/"
                                   "mnist_vdm.py first")  # fmt: skip
    from diffjax.data import load_dataset

    network, learned, initial = schedules(args.workdir)
    images = load_dataset("mnist", split="test", data_dir=args.data_dir)[0][: args.num]
    x = jnp.asarray(images)
    t_plot = np.linspace(0.0, 1.0, 201)
    t_bins = (np.arange(args.bins) + 0.5) / args.bins
    curves, stats = {}, {}
    for name, process, seed in (("trained shape", learned, 1), ("initial shape", initial, 2)):
        curves[name] = np.asarray(integrand(network, process, x[:256], jax.random.key(seed), t_bins)).mean(1)
        values = one_time_estimates(network, process, x, jax.random.key(10 + seed))
        stats[name] = (values.mean(), values.std() / np.sqrt(values.size), values.var())
        print(f"{name}: diffusion term {stats[name][0]:.4f} ± {stats[name][1]:.4f} bits/dim, variance of the "
              f"one-time estimate {stats[name][2]:.4f}")  # fmt: skip

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax0.plot(t_plot, np.asarray(learned.gamma(t_plot)), label="trained γ(t)")
    ax0.plot(t_plot, np.asarray(initial.gamma(t_plot)), "--", label="initial shape, trained endpoints")
    ax0.set(xlabel="t", ylabel="γ(t) = −log-SNR", title=f"the schedule: γ ∈ [{float(learned.gamma_min):.2f}, "
            f"{float(learned.gamma_max):.2f}] after training")  # fmt: skip
    ax0.legend()
    for name, curve in curves.items():
        mean, se, var = stats[name]
        label = f"{name}: {mean:.3f} ± {se:.3f} bits/dim, variance {var:.3f}"
        ax1.plot(t_bins, curve, "o-", ms=3, label=label)
    ax1.set(xlabel="t", ylabel="½|γ'(t)|·E‖ε − ε̂‖² (bits/dim per unit t)", yscale="log",
            title="the diffusion loss's integrand (flat: low variance)")  # fmt: skip
    ax1.legend()
    fig.tight_layout()
    return _common.save(fig, args.out, NAME)


if __name__ == "__main__":
    sys.exit(_common.run(main))
