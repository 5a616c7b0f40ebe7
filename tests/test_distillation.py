"""Progressive distillation (Salimans & Ho 2022): the DDIM target algebra, the loss of the ideal student
(0) and of the teacher itself (> 0, shrinking at DDIM's local order) on the exact 2D mixture, on a
VP SDE and on CondOT (whose noise end has α = 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from samplers_util import fitted_order, mixture_2d

import diffjax as dj
from diffjax._jit import filter_jit
from diffjax.distillation import (
    ddim_target,
    distillation_weight,
    progressive_distillation_loss,
    student_grid,
    teacher_grid,
)
from diffjax.flow import as_flow

CASES = [(dj.VPSDE, "eps"), (dj.CondOTPath, "velocity")]


def _ddim(term, z, t, t_next):
    return dj.DDIM().step(term, z, None, t, t_next, None)[0]


@pytest.mark.parametrize(("make_process", "prediction"), CASES)
def test_one_student_step_with_the_target_lands_on_the_teachers_two_steps(make_process, prediction):
    """x̃ = (z'' − (σ''/σ) z)/(α'' − (σ''/σ) α): a DDIM step whose x̂0 is x̃ reaches the teacher's
    two-step point to rounding, from the noise end (α = 0 on CondOT) and from inside."""
    with x64():
        process, mixture = make_process(), mixture_2d()
        term = as_flow(mixture.model(process, prediction), process)
        z = 3.0 * jax.random.normal(jax.random.key(0), (512, 2))
        ts = np.asarray(student_grid(process, 4))

        @filter_jit
        def two_and_one(term, z, t, t2):
            t1 = 0.5 * (t + t2)
            z2 = _ddim(term, _ddim(term, z, t, t1), t1, t2)
            coef = lambda s: (process.alpha(s), process.sigma(s))  # noqa: E731
            target = ddim_target(z, z2, coef(t), coef(t2))
            student = as_flow(lambda x, s: target, process, "x0")
            return z2, _ddim(student, z, t, t2)

        for t, t2 in ((ts[0], ts[1]), (ts[2], ts[3])):
            z2, one = two_and_one(term, z, jnp.asarray(t), jnp.asarray(t2))
            assert float(jnp.max(jnp.abs(one - z2))) < 1e-12 * float(jnp.max(jnp.abs(z2)))


def _closure_student(teacher, process, ts):
    """The ideal student: at z_t it returns the x̃ of its own step (an 'x0' model)."""
    term = as_flow(teacher, process)

    def student(x, t):
        i = jnp.argmin(jnp.abs(ts[:-1][None] - t[:, None]), axis=1)
        t2 = ts[i + 1]

        def one(xi, ta, tc):
            tb = 0.5 * (ta + tc)
            z2 = _ddim(term, _ddim(term, xi[None], ta, tb), tb, tc)[0]
            return ddim_target(xi, z2, (process.alpha(ta), process.sigma(ta)),
                               (process.alpha(tc), process.sigma(tc)))  # fmt: skip

        return jax.vmap(one)(x, t, t2)

    return student


@pytest.mark.parametrize(("make_process", "prediction"), CASES)
def test_loss_is_zero_for_the_ideal_student_and_shrinks_at_ddim_order_for_the_teacher(
    make_process, prediction
):
    """The ideal student has loss 0 (on a 4-step grid). The teacher as its own student does not (one
    DDIM step ≠ two): on a one-step grid [t0, t0 + h] the z-gap is DDIM's local error O(h²), divided
    by the O(h) denominator of x̃, so the unweighted loss E‖x̂0 − x̃‖² falls as h² (fitted order
    2 ± 0.25) from inside; from the noise end (α = 0 on CondOT) at least as fast (on VP the leading
    constant vanishes there, α(T) ≈ 0.006: x̂0 hardly depends on z_T, and the fit gives ≈ 2.6 over
    these h). Truncated SNR multiplies each example's loss by max(SNR(t), 1). (One compiled program:
    the grids are traced.)"""
    with x64():
        process, mixture = make_process(), mixture_2d()
        teacher = mixture.model(process, prediction)
        x0 = mixture.sample(jax.random.key(1), 2000)[0]
        key = jax.random.key(2)
        towards = float(np.sign(process.t_data - process.t_noise))

        @filter_jit
        def losses(ts4, starts, hs):
            def loss(student, grid, weighting, prediction=prediction):
                return progressive_distillation_loss(
                    student, x0, key, teacher=teacher, process=process, num_student_steps=grid.shape[0] - 1,
                    grid=grid, weighting=weighting, prediction=prediction, reduce=False)  # fmt: skip

            ideal = loss(_closure_student(teacher, process, ts4), ts4, "truncated_snr", "x0")
            grids = jnp.stack([starts, starts + towards * hs], axis=-1)  # (m, 2)
            gaps = jax.vmap(lambda g: jnp.mean(loss(teacher, g, "none")))(grids)
            ratio = loss(teacher, ts4, "truncated_snr") / loss(teacher, ts4, "none")
            return ideal, gaps, ratio

        ts4 = student_grid(process, 4)
        hs = np.array([0.2, 0.1, 0.05, 0.025])
        t_mid = 0.5 * (process.t_data + process.t_noise)
        starts = np.concatenate([np.full(4, process.t_noise), np.full(4, t_mid)])
        ideal, gaps, ratio = losses(ts4, jnp.asarray(starts), jnp.asarray(np.tile(hs, 2)))
        assert float(jnp.max(ideal)) < 1e-20
        gaps = np.asarray(gaps)
        assert np.all(gaps > 0)
        assert abs(fitted_order(1.0 / hs, gaps[4:]) - 2.0) < 0.25, gaps  # inside: exactly DDIM's order
        assert fitted_order(1.0 / hs, gaps[:4]) > 1.75, gaps  # noise end: at least (see docstring)
        snr = np.asarray((process.alpha(ts4[:-1]) / process.sigma(ts4[:-1])) ** 2)
        allowed = np.maximum(snr, 1.0)
        rel = np.abs(np.asarray(ratio)[:, None] - allowed[None]) / allowed[None]
        assert np.all(np.min(rel, axis=1) < 1e-10)


def test_bad_inputs_and_grids():
    process = dj.CondOTPath()
    mixture = mixture_2d()
    x0 = jnp.zeros((8, 2))
    teacher = mixture.model(process, "velocity")
    eps_student = mixture.model(process, "eps")
    with pytest.raises(ValueError, match="α = 0"):
        progressive_distillation_loss(eps_student, x0, jax.random.key(0), teacher=teacher, process=process,
                                      num_student_steps=2)  # fmt: skip
    with pytest.raises(ValueError, match="weighting"):
        distillation_weight(jnp.ones(3), "snr")
    with pytest.raises(ValueError, match="num_student_steps"):
        student_grid(process, 0)
    np.testing.assert_allclose(teacher_grid(student_grid(process, 4)), np.linspace(0.0, 1.0, 9), atol=1e-7)
