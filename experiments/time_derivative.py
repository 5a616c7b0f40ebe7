"""How smooth is a trained network in time? Its total derivative along its own probability-flow ODE,
by `jax.jvp`, against finite differences over growing Δt.

MeanFlow's target v − (t − s)·du/dt and the consistency tangents of sCM differentiate the network in
t. For a velocity field v(x, t) the total derivative along dx/dt = v,

    dv/dt = ∂_t v + (∇_x v)·v        (one jvp with tangents (v, 1) on (x, t)),

is the trajectories' acceleration. A network whose time features oscillate fast (flow matching's
sinusoidal features of 1000·t have periods down to 2π/1000 ≈ 0.006) can fit v well at every t and
still carry wiggles between the times it was trained on: then the jvp is large, while the slope over
a step Δt that spans many wiggles, (v(x + Δt·v, t + Δt) − v(x, t))/Δt, is not. This prints, at several
t, the RMS of v, of the jvp, and of the finite-difference slopes with their distance from the jvp
(which falls to 0 as Δt → 0 for any differentiable network; a gap at Δt = 0.01 of the size of the jvp
itself means the derivative is wiggle, not trend):

    python -m experiments.time_derivative --workdir pretrained:mnist_fm --data_dir ../shared/data/mnist

Measured 2026-12-04 on `pretrained:mnist_fm` (64 test images): |v| ≈ 1.3, jvp RMS 6–10, slope over
Δt = 0.01 only 2–4 with a gap of 6–10 to the jvp (experiments/configs/mnist_meanflow.py, variant
`smooth`, draws the consequence).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags, logging

import diffjax as dj
from diffjax.data.pipeline import load_dataset
from experiments.builders import load_run, parse_flags, user_errors

STEPS = (1e-2, 1e-3, 1e-4)


def define_flags():
    flags.DEFINE_string("workdir", None, "a run of experiments.train, WORKDIR@STEP or pretrained:NAME")
    flags.DEFINE_string("data_dir", None, "the data's directory (MNIST IDX files)")
    flags.DEFINE_integer("num", 64, "test examples")
    flags.DEFINE_list("times", ["0.1", "0.3", "0.5", "0.7", "0.9"], "fractions of the way from noise to data")
    flags.DEFINE_integer("seed", 0, "noise seed of x_t")


FLAGS = flags.FLAGS


def rms(a: jax.Array) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(a))))


def time_derivative_table(velocity, x_t: jax.Array, t: float, steps=STEPS) -> dict:
    """RMS of v, of dv/dt (jvp along (v, 1)) and of the slopes (v(x + h·v, t + h) − v(x, t))/h with
    their RMS distance from the jvp, at the time t (x_t: (N, *event)); x + h·v is the ODE's Euler
    step to t + h, whichever end of the axis the noise is at."""
    tt = jnp.full((x_t.shape[0],), t, x_t.dtype)
    v = velocity(x_t, tt)
    dv = jax.jvp(velocity, (x_t, tt), (v, jnp.ones_like(tt)))[1]
    row = {"t": t, "v": rms(v), "jvp": rms(dv)}
    for h in steps:
        slope = (velocity(x_t + h * v, tt + h) - v) / h
        row[f"slope_{h:g}"], row[f"gap_{h:g}"] = rms(slope), rms(slope - dv)
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (a trained run or pretrained:NAME).")
    with user_errors():
        cfg, trained = load_run(FLAGS.workdir)
        x0, _ = load_dataset(cfg.data.name, "test", FLAGS.data_dir, num_examples=FLAGS.num)
        x0 = jnp.asarray(x0[: FLAGS.num])
    process = trained.process
    velocity = jax.jit(dj.ProbabilityFlow(trained.model, process, trained.model.prediction).velocity)
    end, noise = process.data_end(), process.t_noise
    print(f"{FLAGS.workdir}: {type(process).__name__}, {x0.shape[0]} test examples, t from noise {noise:g} "
          f"to data {end:g}")  # fmt: skip
    header = ["fraction", "t", "|v|", "|dv/dt| jvp"] + [f"slope Δt={h:g} (gap to jvp)" for h in STEPS]
    print(" | ".join(header))
    for fraction in (float(f) for f in FLAGS.times):
        t = float(noise + fraction * (end - noise))
        tt = jnp.full((x0.shape[0],), t)
        x_t = process.sample_marginal(jax.random.key(FLAGS.seed), x0, tt).x_t
        row = time_derivative_table(velocity, x_t, t)
        cells = [f"{fraction:g}", f"{t:.3f}", f"{row['v']:.3f}", f"{row['jvp']:.3f}"]
        cells += [f"{row[f'slope_{h:g}']:.3f} ({row[f'gap_{h:g}']:.3f})" for h in STEPS]
        print(" | ".join(cells))


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
