"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models", NeurIPS, arXiv 2309.05019): stochastic Adams predictor–corrector steps of the family of
reverse SDEs with the model's marginals, in data-prediction form on the half log-SNR l = log(α/σ).

With τ ≥ 0 (τ = 0: the probability-flow ODE; τ = 1: the reverse SDE of the process) and
κ = 1 + τ², the family's exact solution over a step from l_t to l_next (h = l_next − l_t) is

    y_next = (s_n/s_t) e^{−τ²h} y + w_n κ ∫_0^h e^{−κ(h−u)} P(l_t + u) du + s_n √(1 − e^{−2τ²h}) ξ

(`diffjax.solvers.multistep`: scale s = σ, signal weight w = s·e^l = α, P = x̂0, ξ ~ N(0, I)).
With P the Lagrange polynomial through the current and the p − 1 previous predictions (nodes
u_j = l_j − l_t), the integral is exact for the polynomial:

    SA-Predictor-p   y_next = (s_n/s_t) e^{−τ²h} y + w_n (1 − e^{−κh}) m₀ + w_n Σ_{j≥1} c_j (m_j − m₀)
                            + s_n √(1 − e^{−2τ²h}) ξ,       c_j = κ∫_0^h e^{−κ(h−u)} L_j(u) du

(`deis_coefficients` with κ: at τ = 0 this IS DEIS-tAB-p, at τ = 1 and p = 2 it is SDE-DPM-Solver++
2M with its exact ('heun') second-order coefficient — both identities are tested). The SA-Corrector-q
redoes the step from the same y and with the same ξ, with the model evaluated at the predicted point
as one more node (u = h) and q − 1 earlier ones (Adams–Moulton); like UniPC's corrector it is applied
at the start of the next step with the evaluation that step makes anyway (the stored prediction is
the one at the uncorrected point), so it costs no evaluation, and the last step is not corrected.
Deterministic (τ = 0) orders: predictor p; with the corrector min(q, p + 1) (measured on Gaussian
data, tests/test_solvers_multistep.py). With τ > 0 the scheme is exact in distribution when x̂0 is
constant (a point mass) for any step size — tested by z-tests on the moments.

Options (static): predictor_order p ∈ {1, 2, 3}; corrector_order q ∈ {0 (off), 1, 2, 3, 4} (≤ p + 1
is used; the number of nodes, the new one included); tau ≥ 0 and tau_interval = (lo, hi): τ where the
step starts with σ/α ∈ (lo, hi], 0 elsewhere. Default τ = 1 on (0.72, 25]: diffusers' SASolverScheduler
uses τ = 1 on its middle timesteps 200–800 of the linear β schedule, which are σ/α ∈ [0.72, 25] (VP);
(0, inf) is the whole reverse SDE. Measured on the 2D ring (VP, log-SNR grid, mean log-density gap to
the exact samples, 3 seeds × 4000): 10 steps τ = 0 −0.050, the default −0.285, τ = 1 everywhere
−0.806 (its predictor alone, = SDE-DPM-Solver++ 2M 'heun', −1.052; 'midpoint' −0.322); 20 steps
−0.020 / −0.035 / −0.050 / −0.089 — noise pays off only with enough steps, as the paper reports.
lower_order_final as in `multistep.step_order`. interpolate_in ∈ {'auto' (default), 'log_snr',
'flow_time'}: the variable of the Lagrange polynomial, as DEIS's (`diffjax.solvers.deis`).

Ends: a step to σ = 0 (h = ∞) is first order and returns α x̂0 (no noise); a first step from α = 0
(a flow's noise end, h = ∞) is first order. Its correction: in the flow time v, P is linear through
(0, m_prev) and (v_n, m_new) and integrated exactly (`first_step_from_alpha_zero`: weight → ½ on the new
node as v_n → 0, UniPC's bh2 limit); in the log-SNR, or with τ > 0 there, the limit h → ∞ of the
Adams–Moulton weights (all weight on the new node: e^{−κ(h−u)} concentrates at u = h).
With τ > 0 it integrates towards the data only. One evaluation per step; needs only α and σ (runs on
the DDPM chain); noise per leaf of a pytree state, drawn from the step's key.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import is_concrete
from diffjax.solvers.base import Solver
from diffjax.solvers.deis import deis_coefficients
from diffjax.solvers.multistep import (
    AUTO,
    check_interpolation,
    compact_repr,
    flow_time_offsets,
    half_log_snr,
    init_history,
    normal_like,
    push,
    select,
    step_order,
    usable_nodes,
    uses_flow_time,
)


def first_step_from_alpha_zero(l_n):
    """c_new of the corrector of a step from α = 0 (l = −∞) to l_n when P is linear in the flow time v
    through (0, m_prev) and (v_n, m_new), v = sigmoid(l): with U = e^{l_n},
    c_new = e^{−l_n} ∫_{−∞}^{l_n} e^l v(l)/v_n dl = (U − log(1 + U))(1 + U)/U², by its series
    ½ − U/3 + U²/4 − … (times 1 + U) where U < 0.1 (the closed form cancels there). → ½ as U → 0,
    UniPC's bh2 limit at h = ∞."""
    u = jnp.exp(jnp.minimum(l_n, 30.0))
    small = u < 0.1
    us = jnp.where(small, u, 0.0)
    series = sum((-1.0) ** k * us ** (k - 2) / k for k in range(2, 12))
    ul = jnp.where(small, 1.0, u)
    closed = (ul - jnp.log1p(ul)) / ul**2
    return jnp.where(small, series, closed) * (1.0 + u)


@pytree_dataclass
class SASolver(Solver):
    """SA-Solver: stochastic Adams predictor of order p with the Adams–Moulton corrector of order q
    (see the module docstring)."""

    predictor_order: int = static_field(default=2)
    corrector_order: int = static_field(default=2)
    tau: float = static_field(default=1.0)
    tau_interval: tuple = static_field(default=(0.72, 25.0))
    lower_order_final: bool = static_field(default=True)
    interpolate_in: str = static_field(default=AUTO)
    needs_rates: ClassVar[bool] = False
    __repr__ = compact_repr

    def __post_init__(self):
        if self.predictor_order not in (1, 2, 3):
            raise ValueError(f"sa_solver: predictor_order must be 1, 2 or 3, got {self.predictor_order}.")
        if self.corrector_order not in (0, 1, 2, 3, 4):
            raise ValueError(f"sa_solver: corrector_order must be 0 (off) … 4, got {self.corrector_order}.")
        if not (isinstance(self.tau, int | float) and np.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"sa_solver: tau must be a finite number >= 0, got {self.tau!r}.")
        lo, hi = (tuple(self.tau_interval) + (None, None))[:2]
        if len(tuple(self.tau_interval)) != 2 or not 0.0 <= lo <= hi:
            raise ValueError(f"sa_solver: tau_interval must be (lo, hi) with 0 <= lo <= hi, got "
                             f"{self.tau_interval!r}.")  # fmt: skip
        object.__setattr__(self, "tau_interval", (float(lo), float(hi)))
        check_interpolation("sa_solver", self.interpolate_in)

    @property
    def order(self) -> int:
        q = min(self.corrector_order, self.predictor_order + 1)
        return max(self.predictor_order, q)

    @property
    def _history(self) -> int:
        return max(self.predictor_order - 1, self.corrector_order - 1, 1)

    def init(self, term, y0, ts):
        if self.tau > 0 and is_concrete(ts):
            p = term.process
            if np.sign(float(ts[-1]) - float(ts[0])) != np.sign(p.t_data - p.t_noise):
                raise ValueError("sa_solver: with tau > 0 it integrates the reverse SDE towards the data "
                                 "only; reverse the grid or use tau=0.")  # fmt: skip
        ms, ls, k, n = init_history(self._history, y0, ts)
        zero = jnp.zeros((), jnp.result_type(ts))
        noise = jax.tree.map(jnp.zeros_like, y0)
        # the previous state and time, its step's order and τ², the noise it drew, the history
        return y0, ts[0], jnp.ones((), jnp.int32), zero, noise, ms, ls, k, n

    def _tau2(self, term, t):
        """τ² of a step that starts at t: τ² where σ/α(t) ∈ (lo, hi] (+∞ where α = 0), else 0."""
        if self.tau == 0:
            return jnp.zeros((), jnp.result_type(float))
        c = term.process.coefficients(jnp.asarray(t))
        level = jnp.where(c.alpha > 0, c.sigma / jnp.where(c.alpha > 0, c.alpha, 1.0), jnp.inf)
        lo, hi = self.tau_interval
        return jnp.where((level > lo) & (level <= hi), self.tau**2, 0.0)

    def _update(self, term, y, m0, ms: list, cs: list, t, t_next, h, tau2, noise):
        """(s_n/s_t) e^{−τ²h} y + w_n (1 − e^{−κh}) m₀ + w_n Σ c_j (m_j − m₀) + s_n √(1 − e^{−2τ²h}) ξ."""
        (s_t, _), (s_n, w_n) = term.scales(t), term.scales(t_next)
        tau2h = jnp.where(tau2 > 0, tau2 * h, 0.0)  # 0·∞ = 0 where τ = 0 and h = ∞
        noisy = tau2h > 0  # (√ at 0 has an infinite derivative: keep gradients finite where τ = 0)
        decay = jnp.exp(-tau2h)
        spread = jnp.where(noisy, jnp.sqrt(jnp.where(noisy, -jnp.expm1(-2.0 * tau2h), 1.0)), 0.0)
        base = -jnp.expm1(-(1.0 + tau2) * h)  # 1 − e^{−κh}, → 1 as h → ∞

        def leaf(y_, m0_, s_t_, s_n_, w_n_, z_, *mj):
            out = (s_n_ / s_t_) * decay * y_ + (w_n_ * base) * m0_ + (s_n_ * spread) * z_
            for c, m in zip(cs, mj, strict=True):
                out = out + (w_n_ * c) * (m - m0_)
            return out

        return jax.tree.map(leaf, y, m0, s_t, s_n, w_n, noise, *ms)

    def _correct(self, term, y, m_new, carry, t):
        """SA-Corrector of the previous step (from the previous state and time to t), its own noise."""
        y_prev, t_prev, p_prev, tau2, noise, ms, ls, k, _ = carry
        q = min(self.corrector_order, self.predictor_order + 1)
        h = half_log_snr(term, t) - ls[0]
        finite = jnp.isfinite(h)
        h_ok = jnp.where(finite & (k > 0), h, 1.0)
        in_v = uses_flow_time(self.interpolate_in, term)
        # nodes relative to the previous start: the new prediction at u = h, then older ones
        _, older = usable_nodes(h_ok, [l_j - ls[0] for l_j in ls[1 : max(q - 1, 1)]], k, first=1,
                                infinite_ok=in_v)  # fmt: skip
        kappa = 1.0 + tau2
        coordinate = flow_time_offsets(ls[0]) if in_v else None
        # order e uses the new node and e − 1 stored ones (m_prev = ms[0] is the base node u = 0);
        # q_eff = min(q, p_prev + 1): no further back than the predictor reached
        options = [deis_coefficients(h_ok, [h_ok, *older[: e - 2]], kappa, coordinate)
                   for e in range(2, q + 1)]  # fmt: skip
        q_eff = jnp.minimum(q, p_prev + 1)
        if q >= 2:
            cs = select(q_eff - 1, options)  # coefficients of [new, older...]
        else:
            cs = [jnp.asarray(0.0)]
        # q_eff = 1 (backward): P ≡ m_new, i.e. c_new = 1 − e^{−κh}; h = ∞ (a first step from α = 0):
        # the limit of every order puts all weight on the new node
        base = -jnp.expm1(-kappa * h)
        c_new = jnp.where(q_eff == 1, base, cs[0])
        infinite_limit = 1.0
        if in_v:  # P linear in v through (0, m_prev) and (v(l_t), m_new), integrated exactly (κ = 1)
            linear = (q_eff > 1) & (tau2 == 0) & (h > 0)  # from α = 0 (towards the data)
            infinite_limit = jnp.where(linear, first_step_from_alpha_zero(half_log_snr(term, t)), 1.0)
        c_new = jnp.where(finite, c_new, infinite_limit)
        cs = [c_new] + [jnp.where(finite, c, 0.0) for c in cs[1:]]
        mj = [m_new, *ms[1 : len(cs)]]
        y_c = self._update(term, y_prev, ms[0], mj, cs, t_prev, t, h, tau2, noise)
        return jax.tree.map(lambda a, b: jnp.where(k > 0, a, b), y_c, y)

    def step(self, term, y, carry, t, t_next, key):
        m0 = term.data_prediction(y, t)
        if self.corrector_order > 0:
            y = self._correct(term, y, m0, carry, t)
        _, _, _, _, _, ms, ls, k, n = carry
        p = self.predictor_order
        l_t = half_log_snr(term, t)
        h = half_log_snr(term, t_next) - l_t
        in_v = uses_flow_time(self.interpolate_in, term)
        eff = step_order(p, k, n, h, ls, self.lower_order_final, infinite_nodes_ok=in_v)
        tau2 = self._tau2(term, t)
        h_ok, deltas = usable_nodes(h, [l_j - l_t for l_j in ls[: p - 1]], k, infinite_ok=in_v)
        coordinate = flow_time_offsets(l_t) if in_v else None
        options = [deis_coefficients(h_ok, deltas[: e - 1], 1.0 + tau2, coordinate) for e in range(1, p + 1)]
        cs = select(eff, options) if p > 1 else []
        noise = normal_like(key, y) if self.tau > 0 else jax.tree.map(jnp.zeros_like, y)
        y_next = self._update(term, y, m0, list(ms[: p - 1]), cs, t, t_next, h, tau2, noise)
        return y_next, (y, t, eff, tau2.astype(jnp.result_type(t)), noise, push(ms, m0), push(ls, l_t),
                        k + 1, n)  # fmt: skip
