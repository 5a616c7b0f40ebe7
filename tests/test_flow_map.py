"""The flow map Φ_{t→s} (diffjax.flow_map) and the oracle's exact flow map, consistency function and
average velocity: closed forms, convergence order, composition, inversion, and few-step sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order, gaussian_flow_map, mixture_2d

import diffjax as dj
from diffjax._pytree import pytree_dataclass, static_field
from diffjax.flow_map import AverageVelocityMap, flow_map_sample, solve_flow_map

PROCESSES = {"condot": dj.CondOTPath, "vp": dj.VPSDE}


def _points(n=256, dim=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, dim), jnp.float64)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_gaussian_flow_map_closed_form_and_fourth_order(name):
    """For N(m, s²I) data the flow map is affine in closed form (samplers_util.gaussian_flow_map);
    RK4 in rescaled time converges to it at order 4, for per-example (t, s) in both directions."""
    process = PROCESSES[name]()
    mean, std = jnp.array([1.0, -2.0]), 0.3
    gauss = dj.gaussian(mean, std**2 * jnp.eye(2))
    with x64():
        x = _points(64)
        t = jnp.linspace(0.95, 0.3, 64)
        s = jnp.where(jnp.arange(64) % 2 == 0, 0.05 + 0.0 * t, 0.99)  # towards data and towards noise
        exact = gaussian_flow_map(process, mean, std, x, t[:, None], s[:, None])
        steps = [8, 16, 32]
        errs = [float(jnp.max(jnp.abs(gauss.flow_map(process, n)(x, t, s) - exact))) for n in steps]
    order = fitted_order(steps, errs)
    assert 3.5 < order < 5.0, (errs, order)
    assert errs[-1] < 1e-4


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_flow_map_composes_and_inverts(name):
    """Φ_{s→r}∘Φ_{t→s} = Φ_{t→r} and Φ_{s→t}∘Φ_{t→s} = id, to the solver's error: the residual shrinks
    ≥ 8× (order ≥ 3) when the steps double from 32 to 64."""
    process, mix = PROCESSES[name](), mixture_2d()
    with x64():
        x = _points()
        res = []
        for n in (32, 64):
            fm = mix.flow_map(process, n)
            compose = jnp.max(jnp.abs(fm(fm(x, 0.9, 0.5), 0.5, 0.1) - fm(x, 0.9, 0.1)))
            invert = jnp.max(jnp.abs(fm(fm(x, 0.9, 0.2), 0.2, 0.9) - x))
            res.append((float(compose), float(invert)))
    for (c32, i32), (c64, i64) in [(res[0], res[1])]:
        assert c64 < c32 / 8 and i64 < i32 / 8, res
    assert res[1][0] < 1e-4 and res[1][1] < 1e-3, res


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_consistency_function(name):
    """Boundary condition f(x, t_data) = x, self-consistency f(Φ_{t→s}(x), s) = f(x, t), and the
    consistency function pushes the prior onto the data: its images have the mixture's mean
    log-density (the check of samplers_util: within 0.1 nats/dim)."""
    process, mix = PROCESSES[name](), mixture_2d()
    with x64():
        x = _points()
        f, fm = mix.consistency_function(process), mix.flow_map(process)
        assert float(jnp.max(jnp.abs(f(x, process.t_data) - x))) == 0.0
        self_consistency = jnp.max(jnp.abs(f(fm(x, 0.8, 0.3), 0.3) - f(x, 0.8)))
        assert float(self_consistency) < 1e-4
        noise = process.prior_sample(jax.random.key(1), (2000, 2), jnp.float64)
        data, _ = mix.sample(jax.random.key(2), 2000)
        gap = jnp.mean(mix.log_prob(f(noise, process.t_noise))) - jnp.mean(mix.log_prob(data))
    assert abs(float(gap)) / 2 < 0.1, float(gap)


def test_exact_average_velocity_reproduces_the_map():
    """x + (s − t)·u(x, t, s) = Φ_{t→s}(x) through `AverageVelocityMap`, and u(x, t, t) = v(x, t)."""
    process, mix = dj.CondOTPath(), mixture_2d()
    with x64():
        x = _points()
        u = mix.average_velocity(process)
        jump = AverageVelocityMap(u, process)
        err = jnp.max(jnp.abs(jump(x, 0.7, 0.2) - mix.flow_map(process)(x, 0.7, 0.2)))
        assert float(err) < 1e-12
        t = jnp.full(x.shape[:1], 0.4, jnp.float64)
        assert float(jnp.max(jnp.abs(u(x, t, t) - mix.velocity(x, process, t)))) == 0.0


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_flow_map_sample_with_exact_maps(name):
    """Few-step sampling with the exact flow map lands on the exact endpoint from the same noise for
    any number of jumps; multistep consistency sampling (renoise) with the exact consistency function
    returns samples of the data distribution (mean log-density test)."""
    process, mix = PROCESSES[name](), mixture_2d()
    with x64():
        noise = process.prior_sample(jax.random.key(3), (2000, 2), jnp.float64)
        fm = mix.flow_map(process, 64)
        end = mix.consistency_function(process)(noise, process.t_noise)
        for jumps in (1, 3):
            ts = jnp.linspace(process.t_noise, process.t_data, jumps + 1)
            out = jax.jit(flow_map_sample, static_argnums=())(fm, process, noise, ts)
            assert float(jnp.max(jnp.abs(out - end))) < 1e-3, jumps
        f = mix.consistency_function(process, 64)
        ts = jnp.array([0.0, 0.5, 0.8, 1.0]) * (process.t_data - process.t_noise) + process.t_noise
        out = flow_map_sample(lambda x, t, s: f(x, t), process, noise, ts, key=jax.random.key(4),
                              renoise=True)  # fmt: skip
        data, _ = mix.sample(jax.random.key(5), 2000)
        gap = jnp.mean(mix.log_prob(out)) - jnp.mean(mix.log_prob(data))
    assert abs(float(gap)) / 2 < 0.1, float(gap)
    assert not np.allclose(np.asarray(out), np.asarray(end))  # renoising really drew new noise


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_deterministic_renoising_is_ddim_with_the_maps_denoiser(name):
    """Re-noising with η = 0 (x ← α' x̂0 + σ' ε̂, ε̂ = (x − α x̂0)/σ) is DDIM's deterministic step with
    x̂0 from the map: the exact consistency function as an x0-model under `dj.sample('ddim')` on the
    same grid gives the same samples (float64); it draws no noise (no key needed), and η = 1 is the
    fresh-noise sampler of the test above."""
    process, mix = PROCESSES[name](), mixture_2d()
    with x64():
        noise = process.prior_sample(jax.random.key(3), (512, 2), jnp.float64)
        f = mix.consistency_function(process, 32)
        ts = jnp.array([0.0, 0.3, 0.6, 0.85, 1.0]) * (process.t_data - process.t_noise) + process.t_noise
        to_data = dj.flow_map.ToDataMap(f)
        det = flow_map_sample(to_data, process, noise, ts, renoise=True, eta=0.0)
        ddim = dj.sample("ddim", f, process, jax.random.key(9), num_steps=4, prediction="x0", grid=ts,
                         x_init=noise, denoise_final=False).samples  # fmt: skip
        assert float(jnp.max(jnp.abs(det - ddim))) < 1e-10
        keyed = flow_map_sample(to_data, process, noise, ts, key=jax.random.key(1), renoise=True, eta=0.0)
        np.testing.assert_array_equal(np.asarray(keyed), np.asarray(det))
        fresh = flow_map_sample(to_data, process, noise, ts, key=jax.random.key(4), renoise=True)
        half = flow_map_sample(to_data, process, noise, ts, key=jax.random.key(4), renoise=True, eta=0.5)
    half, det, fresh = np.asarray(half), np.asarray(det), np.asarray(fresh)
    assert np.all(np.isfinite(half))
    assert 0 < np.mean(np.abs(half - det)) < np.mean(np.abs(fresh - det))


def test_solve_flow_map_differentiates_in_time():
    """d/ds Φ_{t→s}(x) = v(Φ_{t→s}(x), s) (jax.jvp through the solve, float64) and
    d/dt Φ_{t→s}(x) = −∇_xΦ_{t→s}(x)·v(x, t)."""
    process, mix = dj.CondOTPath(), mixture_2d()
    with x64():
        x = _points(32)
        fm = mix.flow_map(process, 128)
        t, s = jnp.full(32, 0.8), jnp.full(32, 0.3)
        y, dy_ds = jax.jvp(lambda s_: fm(x, t, s_), (s,), (jnp.ones(32),))
        assert float(jnp.max(jnp.abs(dy_ds - mix.velocity(y, process, s)))) < 1e-5
        _, dy_dt = jax.jvp(lambda t_: fm(x, t_, s), (t,), (jnp.ones(32),))
        v = mix.velocity(x, process, t)
        _, push = jax.jvp(lambda x_: fm(x_, t, s), (x,), (v,))
        assert float(jnp.max(jnp.abs(dy_dt + push))) < 1e-5


def test_bad_inputs():
    process = dj.CondOTPath()
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="num_steps"):
        solve_flow_map(lambda y, t: y, x, 1.0, 0.0, num_steps=0)
    with pytest.raises(ValueError, match="renoise"):
        flow_map_sample(lambda y, t, s: y, process, x, jnp.array([1.0, 0.0]), renoise=True)
    with pytest.raises(ValueError, match="eta"):
        flow_map_sample(lambda y, t, s: y, process, x, jnp.array([1.0, 0.0]), renoise=True, eta=1.5)
    with pytest.raises(ValueError, match="grid"):
        flow_map_sample(lambda y, t, s: y, process, x, jnp.array([1.0]))
    with pytest.raises(ValueError):
        solve_flow_map(lambda y, t: y, x, jnp.ones(3), 0.0)  # t of the wrong batch size


TRACES = []


@pytree_dataclass(eq=False)
class _CountingTwoTimeNet:
    """u(x, t, s, y) = w·x·(1 + y) + (s − t): records each trace of its body."""

    w: jax.Array
    prediction: str = static_field(default="velocity")

    def __call__(self, x, t, y, s):
        TRACES.append(1)
        return self.w * x * (1.0 + y[:, None]) + (s - t)[:, None]


def test_flow_map_sample_compiles_once_for_new_labels_and_parameters():
    """A class-conditional flow map (labels bound by `BoundLabels`, a pytree) reuses the compiled
    sampler for new labels and new parameters of the same shapes."""
    from diffjax.losses import BoundLabels

    path, x = dj.CondOTPath(), jnp.ones((4, 2))
    TRACES.clear()
    outs = []
    for w, labels in ((1.0, [0, 1, 2, 0]), (2.0, [2, 2, 1, 0]), (3.0, [1, 1, 1, 1])):
        net = BoundLabels(_CountingTwoTimeNet(jnp.asarray(w)), jnp.asarray(labels, jnp.float32))
        outs.append(dj.flow_map_sample(AverageVelocityMap(net, path), path, x, jnp.array([0.0, 0.5, 1.0])))
    assert len(TRACES) == 1  # the scanned step traced once: one compilation for the three calls
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
