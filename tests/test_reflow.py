"""Reflow (Liu et al. 2022): straightness against closed forms, couplings on disk, the reflow loss and
the distillation of pairs against the exact flows of a Gaussian under CondOT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order

import diffjax as dj
from diffjax.flow_map import AverageVelocityMap
from diffjax.reflow import (
    Couplings,
    gaussian_straightness,
    load_couplings,
    make_couplings,
    pair_distillation_loss,
    reflow_loss,
    save_couplings,
    straightness,
)

MEAN, DIM = np.array([1.0, -2.0]), 2


def _noise(n=256, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, DIM), jnp.float64)


def _ell(t, s):
    """The CondOT line of the Gaussian pair (z, m + s z): x_t = t m + ℓ(t) z, ℓ = t s + 1 − t."""
    return t * s + 1.0 - t


def _r(t, s):
    """The exact flow's x_t = t m + r(t) z, r = √(t² s² + (1 − t)²)."""
    return np.sqrt(t**2 * s**2 + (1.0 - t) ** 2)


def _rectified_velocity(std):
    """The velocity of the rectified Gaussian coupling (lines do not cross): m + (s − 1) z with
    z = (x − t m)/ℓ(t)."""
    m = jnp.asarray(MEAN)

    def v(x, t):
        t = t[:, None]
        return m + (std - 1.0) * (x - t * m) / _ell(t, std)

    return v


def test_straightness_of_exact_gaussian_flow_matches_closed_form():
    """S_z = ‖z‖²·std·(2 − π/2) per draw (`gaussian_straightness`), > 0 for every std > 0 (std = 1
    included: the ray x_t = t m + r(t) z is traversed at varying speed), reached at RK4's order."""
    with x64():
        path, z = dj.CondOTPath(), _noise()
        for std in (0.5, 1.0):
            model = dj.gaussian(MEAN, std**2).model(path, "velocity")
            exact = gaussian_straightness(std, 1) * np.sum(np.asarray(z) ** 2, axis=1)
            steps = (4, 8, 16)
            per = [np.asarray(straightness(model, path, z, num_steps=n, reduce=False)) for n in steps]
            errs = [float(np.max(np.abs(p - exact))) for p in per]
            assert fitted_order(steps, errs) > 3.5, errs
            assert errs[-1] < 1e-4 * exact.mean()
            assert float(per[-1].mean()) == pytest.approx(float(exact.mean()), rel=1e-4)
            assert gaussian_straightness(std, DIM) > 0


def test_straightness_is_zero_iff_straight_at_constant_speed():
    """x_t = (I + tB) z (straight, constant speed): S = 0 to rounding (RK4 is exact on it); x_t = z + t² b
    (straight, accelerating): S = ‖b‖²·∫(1 − 2t)² dt = ‖b‖²/3."""
    with x64():
        path, z = dj.CondOTPath(), _noise(64)
        b_mat = jnp.array([[0.5, 0.3], [-0.2, 0.8]])

        def linear(x, t):
            a = jnp.eye(DIM)[None] + t[:, None, None] * b_mat[None]
            return jnp.linalg.solve(a, x[..., None])[..., 0] @ b_mat.T

        assert abs(float(straightness(linear, path, z, num_steps=4))) < 1e-12
        b = jnp.array([2.0, -1.0])
        accel = float(straightness(lambda x, t: 2.0 * t[:, None] * b + 0.0 * x, path, z, num_steps=4))
        assert accel == pytest.approx(float(b @ b) / 3.0, rel=1e-12)


def test_straightness_does_not_depend_on_the_direction_of_the_time_axis():
    """The VP SDE (data at t = 0) and the same process read as a flow path (data at t = 1) have the same
    trajectories, so the same S per draw (and S > 0: the ∫‖v‖² term keeps its sign on either axis)."""
    with x64():
        vp, z = dj.VPSDE(), _noise(64)
        flow_time = dj.flow_path_from_sde(vp)
        model = dj.gaussian(MEAN, 0.25)
        a = straightness(model.model(vp, "velocity"), vp, z, num_steps=32, t_eps=1e-3, reduce=False)
        b = straightness(model.model(flow_time, "velocity"), flow_time, z, num_steps=32, t_eps=1e-3,
                         reduce=False)  # fmt: skip
        assert float(jnp.min(a)) > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)


def test_couplings_are_the_ode_endpoints_and_round_trip_bit_identically(tmp_path):
    """make_couplings draws (or keeps) the noise z and returns Φ(z) = m + s z of the exact Gaussian flow
    at Heun's order 2; save/load returns the same bits, dtype and header."""
    with x64():
        path, std = dj.CondOTPath(), 0.5
        model = dj.gaussian(MEAN, std**2).model(path, "velocity")
        coarse = make_couplings(model, path, jax.random.key(1), (128, DIM), solver="heun", num_steps=16)
        z = coarse.noise
        fine = make_couplings(model, path, jax.random.key(1), z, solver="heun", num_steps=32)
        assert np.array_equal(np.asarray(fine.noise), np.asarray(z)) and float(jnp.std(z)) > 0.5
        exact = MEAN + std * np.asarray(z)
        errs = [float(np.max(np.abs(np.asarray(p.data) - exact))) for p in (coarse, fine)]
        assert fitted_order((16, 32), errs) > 1.8, errs  # Heun: order 2 (8 → 16 steps: 1.7, pre-asymptotic)
        assert fine.header["num_steps"] == 32 and fine.header["solver"] == "Heun()"
        assert fine.header["nfe"] == 64  # Heun to the data with a velocity model: 2n (finite at t_data)
        file = tmp_path / "pairs.npz"
        save_couplings(file, fine)
        back = load_couplings(file)
        for a, b in ((fine.noise, back.noise), (fine.data, back.data)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert back.header == fine.header
        with pytest.raises(ValueError, match=".npz"):
            save_couplings(tmp_path / "pairs.txt", fine)


def test_reflow_loss_is_zero_for_the_rectified_velocity_and_exact_for_the_original():
    """On the pairs (z, m + s z): the rectified velocity has loss 0 (also as an 'x0' model, and under
    the default uniform times); the original flow's velocity m + r'(t)(x − t m)/r has the closed form
    (r'ℓ/r − (s − 1))²·mean‖z‖²/D at time t — a fresh ε instead of the paired z would break both."""
    with x64():
        path, std, z = dj.CondOTPath(), 0.5, _noise()
        pair = Couplings(z, MEAN + std * z)
        rect = _rectified_velocity(std)
        as_x0 = dj.as_prediction(rect, path, "velocity", "x0")
        original = dj.gaussian(MEAN, std**2).model(path, "velocity")

        @jax.jit
        def losses(t, pair):
            fixed = lambda key, n: jnp.full((n,), t)  # noqa: E731
            key = jax.random.key(0)
            return (reflow_loss(rect, pair, key, process=path, time_sampler=fixed),
                    reflow_loss(as_x0, pair, key, process=path, prediction="x0", time_sampler=fixed),
                    reflow_loss(original, pair, key, process=path, time_sampler=fixed))  # fmt: skip

        assert float(reflow_loss(rect, (z, pair.data), jax.random.key(0), process=path)) < 1e-25
        for t in (0.0, 0.3, 0.9):
            rect_loss, x0_loss, orig_loss = losses(jnp.asarray(t), pair)
            assert float(rect_loss) < 1e-25 and float(x0_loss) < 1e-20
            r = _r(t, std)
            dr = (t * std**2 - (1.0 - t)) / r
            coef = (dr * _ell(t, std) / r - (std - 1.0)) ** 2
            expected = coef * float(jnp.mean(jnp.sum(z**2, axis=1))) / DIM
            assert float(orig_loss) == pytest.approx(expected, rel=1e-10)


def test_pair_distillation_loss_against_exact_flow_maps():
    """A straight map (the rectified flow's Euler jump, as an AverageVelocityMap) distils the Gaussian
    pairs exactly at k = 1 and 4; the original flow's exact map Φ_{t→s}(x) = s m + r(s)/r(t)·(x − t m)
    does so at k = 1 only (to RK4 accuracy), and at k = 4 every example's loss is one of the four
    closed forms (r(t_{i+1}) ℓ(t_i)/r(t_i) − ℓ(t_{i+1}))²·‖z‖²/D."""
    with x64():
        path, std, z = dj.CondOTPath(), 0.5, _noise()
        pair = Couplings(z, MEAN + std * z)
        rect = _rectified_velocity(std)
        straight = AverageVelocityMap(lambda x, t, s: rect(x, t), path)
        for k in (1, 4):
            loss = pair_distillation_loss(straight, pair, jax.random.key(0), process=path, num_steps=k)
            assert float(loss) < 1e-25
        exact_map = dj.gaussian(MEAN, std**2).flow_map(path)
        assert float(pair_distillation_loss(exact_map, pair, process=path)) < 1e-16
        per = np.asarray(pair_distillation_loss(exact_map, pair, jax.random.key(0), process=path, num_steps=4,
                                                reduce=False))  # fmt: skip
        ts = np.linspace(0.0, 1.0, 5)
        c = np.array([(_r(b, std) * _ell(a, std) / _r(a, std) - _ell(b, std)) ** 2
                      for a, b in zip(ts[:-1], ts[1:], strict=True)])  # fmt: skip
        ratio = per / (np.sum(np.asarray(z) ** 2, axis=1) / DIM)
        nearest = np.min(np.abs(ratio[:, None] - c[None]), axis=1)
        assert np.all(nearest < 1e-9 * c.max()), nearest.max()
        assert len(np.unique(np.argmin(np.abs(ratio[:, None] - c[None]), axis=1))) == 4
        with pytest.raises(ValueError, match="pass key"):
            pair_distillation_loss(exact_map, pair, process=path, num_steps=2)


def test_trajectory_distillation_regresses_the_teachers_own_waypoints(tmp_path):
    """make_couplings(waypoints=1) keeps the solve's state at the middle of its grid — the exact
    x_½ = ½m + r(½)z of the Gaussian flow at RK4's order 4 — and saves/loads it bit for bit; on these
    states the exact flow map's 2-step loss is the square of the teacher's solve error (< 1e-12 of the
    line's), while on the pair's line (the same pairs without waypoints) it is the closed form
    (r(1)ℓ(½)/r(½) − ℓ(1))² ‖z‖²/D > 0."""
    with x64():
        path, std = dj.CondOTPath(), 0.5
        gauss = dj.gaussian(MEAN, std**2)
        errs = []
        for n in (16, 32):
            pairs = make_couplings(gauss.model(path, "velocity"), path, jax.random.key(1), (256, DIM),
                                   solver="rk4", num_steps=n, waypoints=1)  # fmt: skip
            z = np.asarray(pairs.noise)
            errs.append(np.max(np.abs(np.asarray(pairs.waypoints[:, 0]) - (0.5 * MEAN + _r(0.5, std) * z))))
        assert pairs.waypoint_times == (0.5,) and pairs.waypoints.shape == (256, 1, DIM)
        assert fitted_order((16, 32), errs) > 3.7, errs
        exact_map = gauss.flow_map(path)
        key = jax.random.key(0)
        on_waypoints = pair_distillation_loss(exact_map, pairs, key, process=path, num_steps=2, reduce=False)
        line = Couplings(pairs.noise, pairs.data)
        on_line = pair_distillation_loss(exact_map, line, key, process=path, num_steps=2, reduce=False)
        on_line = np.asarray(on_line)
        second = np.asarray(jax.random.randint(key, (256,), 0, 2)) == 1  # the step each example drew
        c = (_r(1.0, std) * _ell(0.5, std) / _r(0.5, std) - _ell(1.0, std)) ** 2
        np.testing.assert_allclose(on_line[second], c * np.sum(z[second] ** 2, axis=1) / DIM, rtol=1e-6)
        assert c > 1e-3 and second.sum() > 64
        assert float(jnp.max(on_waypoints)) < 1e-12 * float(np.mean(on_line[second]))
        file = tmp_path / "pairs.npz"
        save_couplings(file, pairs)
        back = load_couplings(file)
        assert back.waypoint_times == pairs.waypoint_times
        assert np.asarray(back.waypoints).tobytes() == np.asarray(pairs.waypoints).tobytes()
        one_jump = pair_distillation_loss(exact_map, pairs, process=path, num_steps=1)  # z → x only
        assert float(one_jump) == float(pair_distillation_loss(exact_map, line, process=path, num_steps=1))
        with pytest.raises(ValueError, match="must divide 2"):
            pair_distillation_loss(exact_map, pairs, key, process=path, num_steps=4)
        with pytest.raises(ValueError, match="grid is theirs"):
            pair_distillation_loss(exact_map, pairs, key, process=path, num_steps=2, grid="edm")
        with pytest.raises(ValueError, match="not a multiple of 2"):
            make_couplings(gauss.model(path, "velocity"), path, key, (4, DIM), solver="rk4", num_steps=5,
                           waypoints=1)  # fmt: skip
        with pytest.raises(ValueError, match="come together"):
            Couplings(pairs.noise, pairs.data, waypoints=pairs.waypoints)


def test_several_jump_counts_train_one_map_on_every_piece_of_the_trajectory():
    """num_steps=(k_1, k_2, …): each example draws k uniformly, then a step of the k-step grid. On the
    pair's line with the exact (curved) Gaussian map and (1, 2): every example's loss is one of the
    closed forms (r(b)ℓ(a)/r(a) − ℓ(b))²·‖z‖²/D of the jumps (0 → 1: zero; 0 → ½; ½ → 1), drawn ½, ¼, ¼
    of the time (binomial, 4 standard errors); on the teacher's own trajectory with 3 waypoints the
    exact map's loss over (1, 2, 4) is its solve error squared (< 1e-12); a 1-tuple draws exactly as
    the int; bad counts are refused."""
    with x64():
        path, std, n = dj.CondOTPath(), 0.5, 4000
        gauss = dj.gaussian(MEAN, std**2)
        exact_map = gauss.flow_map(path)
        z = _noise(n, seed=3)
        line = Couplings(z, MEAN + std * z)
        key = jax.random.key(5)
        per = np.asarray(pair_distillation_loss(exact_map, line, key, process=path, num_steps=(1, 2),
                                                reduce=False))  # fmt: skip
        jumps = [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)]
        c = np.array([(_r(b, std) * _ell(a, std) / _r(a, std) - _ell(b, std)) ** 2 for a, b in jumps])
        assert c[0] < 1e-20 and min(c[1:]) > 1e-3
        ratio = per / (np.sum(np.asarray(z) ** 2, axis=1) / DIM)
        which = np.argmin(np.abs(ratio[:, None] - c[None]), axis=1)
        assert np.all(np.abs(ratio - c[which]) < 1e-9 * c.max())
        for j, p in enumerate((0.5, 0.25, 0.25)):
            assert abs(np.mean(which == j) - p) < 4 * np.sqrt(p * (1 - p) / n), (j, np.mean(which == j))
        single = pair_distillation_loss(exact_map, line, key, process=path, num_steps=(2,), reduce=False)
        assert np.array_equal(np.asarray(single), np.asarray(
            pair_distillation_loss(exact_map, line, key, process=path, num_steps=2, reduce=False)))
        pairs = make_couplings(gauss.model(path, "velocity"), path, jax.random.key(1), (256, DIM),
                               solver="rk4", num_steps=32, waypoints=3)  # fmt: skip
        on_trajectory = pair_distillation_loss(exact_map, pairs, key, process=path, num_steps=(1, 2, 4))
        assert float(on_trajectory) < 1e-12 * float(np.mean(per[which > 0]))
        for bad in ((), (1, 1), (0, 2), (True,), 2.0):
            with pytest.raises(ValueError, match="num_steps must be"):
                pair_distillation_loss(exact_map, line, key, process=path, num_steps=bad)
        with pytest.raises(ValueError, match="must divide 4"):
            pair_distillation_loss(exact_map, pairs, key, process=path, num_steps=(1, 3))
        with pytest.raises(ValueError, match="named grid"):
            pair_distillation_loss(exact_map, line, key, process=path, num_steps=(1, 2),
                                   grid=jnp.linspace(0.0, 1.0, 3))  # fmt: skip
