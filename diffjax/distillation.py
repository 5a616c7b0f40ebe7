"""Progressive distillation (Salimans & Ho 2022): a student learns in one DDIM step what the teacher
does in two, and is then the next teacher (N → N/2 → … → 1 steps).

On the student's grid t_0 = t_noise, …, t_N = data end, an example draws a step i, its times
t = t_i, t'' = t_{i+1} and their midpoint t' = (t + t'')/2 (the teacher's grid of 2N steps), and
z_t = α_t x0 + σ_t ε. The teacher takes two deterministic DDIM steps (`diffjax.solvers.DDIM`, η = 0,
on its `diffjax.flow.as_flow` term),

    z_t → z_t' → z_t'',     DDIM: z_next = α_next x̂0(z) + σ_next ε̂(z),

and the target is the x̃ for which ONE student DDIM step from z_t lands on z_t'' (Salimans & Ho,
Alg. 2): with ε̂ = (z_t − α_t x̃)/σ_t the step is α_t'' x̃ + (σ_t''/σ_t)(z_t − α_t x̃), so

    x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t),

and the loss is w(t)·mean‖x̂0_θ(z_t, t) − x̃‖², x̂0_θ from the student's declared prediction
(`diffjax.parameterization`), w = max(SNR(t), 1) ('truncated_snr', their choice), SNR + 1
('snr_plus_one') or 1 ('none'). The denominator (α_t''σ_t − σ_t''α_t)/σ_t is > 0 whenever t'' is
nearer the data than t (α/σ grows towards the data). On a flow path with σ_min = 0 (CondOT: α_t = t,
σ_t = 1 − t) DDIM is the Euler step of the velocity, exactly.

The noise end of a flow path (α(t_noise) = 0): there z_t = σ_t ε carries no data, the DDIM step is
α_t'' x̂0 + (σ_t''/σ_t) z_t for any ε̂-consistent pair, and x̃ = (z_t'' − (σ_t''/σ_t) z_t)/α_t'' is
finite; what must be finite is x̂0 itself, which an 'eps' or 'score' prediction cannot give at
α = 0 (x̂0 = (z − σε̂)/α). Such a student or teacher on such a grid is rejected at trace time; use
'x0', 'v' or 'velocity' (Salimans & Ho's v-parameterization is well defined at every SNR).

Shapes: x0 (batch, *event); t (batch,). Models are callables (x, t) -> prediction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

from diffjax._array import expand
from diffjax._validate import check_key, is_concrete
from diffjax.flow import as_flow, check_model_output
from diffjax.grids import make_grid
from diffjax.parameterization import check_prediction, to_x0_eps
from diffjax.processes.base import GaussianProcess
from diffjax.solvers import DDIM

DISTILLATION_WEIGHTINGS = ("truncated_snr", "snr_plus_one", "none")


def distillation_weight(snr: Array, weighting: str) -> Array:
    """w on ‖x̂0 − x̃‖² from SNR = α²/σ²: max(SNR, 1), SNR + 1 or 1 (Salimans & Ho 2022, §4)."""
    if weighting == "truncated_snr":
        return jnp.maximum(snr, 1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    if weighting == "none":
        return jnp.ones_like(snr)
    raise ValueError(f"Unknown distillation weighting {weighting!r}; choose one of "
                     f"{DISTILLATION_WEIGHTINGS}.")


def student_grid(process: GaussianProcess, num_student_steps: int, grid=None, t_eps: float | None = 0.0):
    """The student's grid of N steps (a concrete array of N+1 times, noise → data end): `grid` as
    given, or the process's uniform grid to data_end(t_eps). t_eps defaults to 0: DDIM never evaluates
    the model at the last time, so even a VP grid may end exactly at the data."""
    if not isinstance(num_student_steps, int) or num_student_steps < 1:
        raise ValueError(f"progressive distillation: num_student_steps must be an int >= 1, got "
                         f"{num_student_steps!r}.")  # fmt: skip
    if grid is None:
        return make_grid(process, num_student_steps, "uniform", t_eps)
    ts = make_grid(process, num_student_steps, grid, t_eps) if isinstance(grid, str) else jnp.asarray(grid)
    if ts.shape != (num_student_steps + 1,):
        raise ValueError(f"progressive distillation: the student grid must have num_student_steps + 1 = "
                         f"{num_student_steps + 1} times, got shape {ts.shape}.")  # fmt: skip
    return ts


def teacher_grid(student_ts: Array) -> Array:
    """The teacher's grid: the student's with every midpoint inserted (2N steps)."""
    mids = 0.5 * (student_ts[:-1] + student_ts[1:])
    return jnp.concatenate([jnp.stack([student_ts[:-1], mids], axis=1).reshape(-1), student_ts[-1:]])


def _check_defined_at_zero_alpha(process, ts, prediction: str, who: str) -> None:
    if prediction not in ("eps", "score") or not is_concrete(ts):
        return
    alphas = process.alpha(ts[:-1])
    if is_concrete(alphas) and bool(jnp.any(alphas == 0)):
        raise ValueError(
            f"progressive distillation: the {who} predicts {prediction!r}, whose x̂0 = (z − σε̂)/α is "
            f"undefined where α = 0 (the noise end of {type(process).__name__}); use prediction 'x0', "
            "'v' or 'velocity', or a grid that starts after the noise end."
        )


def ddim_target(z_t: Array, z_t2: Array, c_t, c_t2) -> Array:
    """x̃ = (z_t'' − (σ_t''/σ_t) z_t)/(α_t'' − (σ_t''/σ_t) α_t): the x̂0 with which one DDIM step
    z_t → t'' lands on z_t'' (coefficients (α, σ) of shape () or (batch,))."""
    ratio = expand(c_t2[1] / c_t[1], z_t)
    return (z_t2 - ratio * z_t) / (expand(c_t2[0], z_t) - ratio * expand(c_t[0], z_t))


def progressive_distillation_loss(
    student,
    x0: Array,
    key: Array,
    *,
    teacher,
    process: GaussianProcess,
    num_student_steps: int,
    grid=None,
    weighting: str = "truncated_snr",
    prediction: str | None = None,
    teacher_prediction: str | None = None,
    t_eps: float | None = 0.0,
    reduce: bool = True,
) -> Array:
    """Salimans & Ho's loss E_i E_{x0,ε} w(t_i)·mean‖x̂0_θ(z_t, t) − x̃‖² (module docstring).

    student, teacher: models (x, t) -> prediction (declared, or `prediction=` / `teacher_prediction=`);
    the teacher is held fixed (stop_gradient). grid: the student's N+1 times (default the uniform grid
    to data_end(t_eps), `student_grid`). A scalar (or (batch,) with reduce=False)."""
    if x0.ndim < 1 or x0.shape[0] == 0 or not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"progressive_distillation_loss: x0 must be a non-empty float batch, got "
                         f"{x0.dtype} {x0.shape}.")  # fmt: skip
    distillation_weight(jnp.ones(()), weighting)  # validates the name
    ts = student_grid(process, num_student_steps, grid, t_eps).astype(x0.dtype)
    s_flow = as_flow(student, process, prediction)
    t_flow = as_flow(teacher, process, teacher_prediction)
    check_prediction(s_flow.prediction)
    _check_defined_at_zero_alpha(process, ts, s_flow.prediction, "student")
    _check_defined_at_zero_alpha(process, ts, t_flow.prediction, "teacher")
    k_i, k_eps = jax.random.split(check_key(key, "progressive_distillation_loss"))
    n = x0.shape[0]
    i = jax.random.randint(k_i, (n,), 0, num_student_steps)
    t, t2 = ts[i], ts[i + 1]
    t1 = 0.5 * (t + t2)
    noised = process.sample_marginal(k_eps, x0, t)
    z_t = noised.x_t

    ddim = DDIM()

    def teacher_two_steps(z, ta, tb, tc):  # one example, as a batch of one (DDIM takes scalar times)
        z1 = ddim.step(t_flow, z[None], None, ta, tb, None)[0]
        return ddim.step(t_flow, z1, None, tb, tc, None)[0][0]

    z_t2 = jax.lax.stop_gradient(jax.vmap(teacher_two_steps)(z_t, t, t1, t2)).astype(x0.dtype)
    c_t, c_t2 = noised.coefficients, (process.alpha(t2), process.sigma(t2))
    target = jax.lax.stop_gradient(ddim_target(z_t, z_t2, (c_t.alpha, c_t.sigma), c_t2))

    out = student(z_t, t)
    check_model_output(out, x0, "progressive_distillation_loss")
    x0_hat = to_x0_eps(out, s_flow.prediction, z_t, c_t)[0]
    per_example = jnp.mean(jnp.square(x0_hat - target).reshape(n, -1), axis=-1)
    snr = (c_t.alpha / c_t.sigma) ** 2
    per_example = distillation_weight(snr, weighting) * per_example
    return jnp.mean(per_example) if reduce else per_example


__all__ = [
    "DISTILLATION_WEIGHTINGS", "ddim_target", "distillation_weight", "progressive_distillation_loss",
    "student_grid", "teacher_grid",
]  # fmt: skip
