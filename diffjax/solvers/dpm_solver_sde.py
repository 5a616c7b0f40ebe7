"""SDE-DPM-Solver++ 2M (Lu et al. 2022, "DPM-Solver++", §5 / App. and diffusers'
DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++', solver_order = 2): the reverse
SDE dx = [f x − g²∇log p] dt + g dw̄ in data-prediction form, solved exactly for its linear part and its
noise, with x̂0 interpolated linearly in the half log-SNR l = log(α/σ) (h = l_next − l_t > 0):

    x_next = (σ_n/σ_t) e^{−h} x + α_n (1 − e^{−2h}) x̂0_t + α_n C(h) D₁ + σ_n √(1 − e^{−2h}) z,

D₁ = (h/h₀)(x̂0_t − x̂0_prev) ≈ h dx̂0/dl (h₀ the previous step), C(h) = ½(1 − e^{−2h}) ('midpoint') or
1 − (1 − e^{−2h})/(2h) ('heun', the exact integral of 2e^{−2(h−τ)} τ/h); order 1 drops D₁. With x̂0
exact (constant in l, e.g. at the data of a point mass) the step is the exact transition of the
reverse SDE; its error is first order in h in the strong sense and the samples have the model's
marginals. Per leaf it uses the term's scales (s, w) = (σ, α); it draws fresh noise from `key` every
step. Towards the data only (1 − e^{−2h} < 0 otherwise; checked where the grid is concrete), and
not for a likelihood. A last step to σ = 0 (h = ∞) returns α x̂0; a first step from α = 0 (a flow's
noise end) draws x from the one-step posterior. Lower orders as `multistep.step_order` (warm-up,
infinite steps, `lower_order_final`: order 1 on the last step, ≤ 2 before it). One evaluation per
step; needs only α and σ.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import is_concrete
from diffjax.solvers.base import Solver
from diffjax.solvers.multistep import (
    compact_repr,
    half_log_snr,
    init_history,
    normal_like,
    push,
    step_order,
)

SECOND_ORDER = ("midpoint", "heun")


@pytree_dataclass
class DPMSolverPPSDE(Solver):
    """SDE-DPM-Solver++ of multistep order 1 or 2 (2M; see the module docstring)."""

    order: int = static_field(default=2)
    second_order: str = static_field(default="midpoint")
    lower_order_final: bool = static_field(default=True)
    needs_rates: ClassVar[bool] = False
    __repr__ = compact_repr

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"dpm_solver_pp_sde: order must be 1 or 2, got {self.order}.")
        if self.second_order not in SECOND_ORDER:
            raise ValueError(f"dpm_solver_pp_sde: second_order must be one of {SECOND_ORDER}, "
                             f"got {self.second_order!r}.")  # fmt: skip

    def init(self, term, y0, ts):
        if is_concrete(ts):
            p = term.process
            if np.sign(float(ts[-1]) - float(ts[0])) != np.sign(p.t_data - p.t_noise):
                raise ValueError("dpm_solver_pp_sde: integrates the reverse SDE towards the data only; "
                                 "reverse the grid or use an ODE solver (e.g. 'dpm_solver_pp').")  # fmt: skip
        return init_history(1, y0, ts)

    def step(self, term, y, carry, t, t_next, key):
        (m1,), (l1,), k, n = carry
        m0 = term.data_prediction(y, t)
        l_t = half_log_snr(term, t)
        h = half_log_snr(term, t_next) - l_t
        eff = step_order(self.order, k, n, h, (l1,), self.lower_order_final)
        (s_t, _), (s_n, w_n) = term.scales(t), term.scales(t_next)
        decay = jnp.exp(-h)
        one_minus = -jnp.expm1(-2.0 * h)  # 1 − e^{−2h}
        if self.second_order == "midpoint":
            c2 = 0.5 * one_minus
        else:
            c2 = 1.0 + one_minus / (-2.0 * h)
        c2 = jnp.where(eff == 2, c2 * h / (l_t - l1), 0.0)  # times (x̂0_t − x̂0_prev)
        noise = normal_like(key, y)

        def leaf(y_, m0_, m1_, s_t_, s_n_, w_n_, z_):
            out = (s_n_ / s_t_) * decay * y_ + w_n_ * one_minus * m0_ + s_n_ * jnp.sqrt(one_minus) * z_
            if self.order == 2:
                out = out + (w_n_ * c2) * (m0_ - m1_)
            return out

        y_next = jax.tree.map(leaf, y, m0, m1, s_t, s_n, w_n, noise)
        return y_next, ((m0,), push((l1,), l_t), k + 1, n)
