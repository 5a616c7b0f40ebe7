"""Bookkeeping shared by the multistep exponential integrators (DPM-Solver++, UniPC, DEIS, and the
2M SDE solver): the half log-SNR, the stored history, the order of each step, the exponential
φ-functions and the one semi-linear update they all end in.

Every such solver writes each leaf of the state as y/s evolving by d(y/s)/dl = e^l P(y, l) in the
half log-SNR l = ½λ = log(α/σ) (diffusers' λ), with the term's linear scale s and signal weight
w = s·e^l (`term.scales(t) -> (s, w)`; the probability flow has (σ, α), a likelihood's log-density
leaf s = 1) and P the data prediction. A step of size h = l_next − l_t that interpolates P through
the current prediction m₀ and earlier ones m_j is, with φ₁ = 1 − e^{−h},

    y_next = (s_next/s_t) y + w_next φ₁ m₀ + w_next Σ_j c_j (m_j − m₀)          (`semilinear_update`)

where the c_j (scalars) are the method's. Where h = −∞ (α_next = 0, integrating towards a flow's
noise end) w_next φ₁ is replaced by its limit −s_next e^{l_t}.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


def half_log_snr(term, t):
    """l(t) = ½ log-SNR = log(α/σ) of the term's process (±∞ where σ or α is 0)."""
    return 0.5 * term.process.log_snr(t)


def init_history(size: int, y0, ts):
    """(ms, ls, k, n): `size` stored predictions (zeros like y0) and their half log-SNRs, the step
    index k = 0 and the number of steps n (from the static grid length)."""
    zero = jnp.zeros((), jnp.result_type(ts))
    zeros = jax.tree.map(jnp.zeros_like, y0)
    n = jnp.asarray(ts.shape[0] - 1, jnp.int32)
    return (zeros,) * size, (zero,) * size, jnp.zeros((), jnp.int32), n


def push(history: tuple, value) -> tuple:
    """The history with `value` first and the oldest entry dropped."""
    return (value, *history[:-1])


def step_order(order: int, k, n, h, ls_prev: tuple, lower_order_final: bool, infinite_nodes_ok: bool = False):
    """The order used on step k of n (int32 scalar): at most `order`; at most k + 1 (warm-up); with
    `lower_order_final`, at most n − k (order 1 on the last step, ≤ 2 on the one before), at every
    number of steps (diffusers' UniPC rule; its DPM-Solver++ applies it below 15 steps only, as
    diffjax did until 2026-12-03); 1 where h is infinite (a step that ends at σ = 0 or α = 0 or starts
    at α = 0); and never reaching back past a stored point in ls_prev whose l is infinite (a flow's
    α = 0). On the default uniform-t grids the last steps are the longest in l, and extrapolating the
    multistep polynomial across them costs more than the lower order: median endpoint errors with the
    rule at every n vs only below 15 steps (2000 noises, bench problems) — UniPC-3 2D VP 20 / 40 / 160
    steps 0.018 / 0.0033 / 0.00067 vs 0.22 / 0.12 / 0.0040, 16D VP 20 0.032 vs 1.27, 2D CondOT 20
    0.0019 vs 0.0089; DPM-Solver++ 3M 2D VP 20 0.021 vs 0.26. On log-SNR and EDM grids (equal or
    shrinking final steps) the two agree within ±40% from 20 steps on. The price is the asymptotic
    order (≤ 2 with a first-order last step): `lower_order_final=False` keeps it.
    ls_prev: the half log-SNRs of the stored predictions, newest first. `infinite_nodes_ok`: the
    polynomial lives in a variable that is finite there (`FLOW_TIME`), so such points are used."""
    eff = jnp.minimum(order, k + 1)
    if lower_order_final:
        eff = jnp.minimum(eff, n - k)
    for j, l_j in enumerate(ls_prev[: order - 1]):
        if not infinite_nodes_ok:
            eff = jnp.where(jnp.isfinite(l_j), eff, jnp.minimum(eff, j + 1))
    return jnp.where(jnp.isfinite(h), eff, 1).astype(jnp.int32)


def select(eff, options: list[list]) -> list:
    """options[e − 1] is the coefficient list of order e (padded with zeros to a common length);
    returns the list of the order `eff` (traced), elementwise."""
    width = max(len(o) for o in options)
    padded = [list(o) + [0.0] * (width - len(o)) for o in options]
    out = []
    for i in range(width):
        c = padded[0][i]
        for e, o in enumerate(padded[1:], start=2):
            c = jnp.where(eff == e, o[i], c)
        out.append(jnp.where(eff <= len(options), c, 0.0))
    return out


def usable_nodes(h, deltas: list, k, first: int = 0, infinite_ok: bool = False):
    """(h, deltas) with finite, distinct stand-ins where a value will not be used: h where it is
    infinite (that step is first order), and the offsets δ_j = l_j − l_t of stored points that do
    not exist yet (warm-up: k ≤ j + first) or lie at l = ±∞. `step_order`/`select` discard the
    coefficients built on them, but computing those on ±∞ or on repeated nodes would leave
    0·∞ = NaN in reverse-mode gradients (jnp.where differentiates both branches). `infinite_ok`:
    keep infinite offsets of stored points (their flow time is finite, see `flow_time_offsets`)."""
    h_ok = jnp.where(jnp.isfinite(h), h, 1.0)
    out = []
    for j, d in enumerate(deltas):
        ok = (k > j + first) & (jnp.isfinite(d) | infinite_ok)
        out.append(jnp.where(ok, d, -(j + 1.0) * h_ok))
    return h_ok, out


# the variables a multistep polynomial can live in; AUTO: FLOW_TIME on a flow path (α = 0 at the
# noise end), LOG_SNR elsewhere (`uses_flow_time`)
LOG_SNR, FLOW_TIME, AUTO = "log_snr", "flow_time", "auto"


def check_interpolation(name: str, value: str) -> None:
    if value not in (LOG_SNR, FLOW_TIME, AUTO):
        raise ValueError(f"{name}: interpolate_in must be {LOG_SNR!r}, {FLOW_TIME!r} or {AUTO!r}, "
                         f"got {value!r}.")  # fmt: skip


def uses_flow_time(interpolate_in: str, term) -> bool:
    """Whether a step interpolates in the flow time (static): 'flow_time', or 'auto' on a process
    whose α is 0 at the noise end (flow paths: their start is a node at l = −∞). Measured on the
    bench mixtures (median endpoint error against the exact ODE from the same 2000 noises, uniform
    grids, DEIS-2/3 and SA-Solver 2+2/2+3/3+3 at τ = 0): flow time is better in 26 of 36 (problem,
    solver, NFE) cells of CondOT and the cosine path at 5/10/20 NFE (2D CondOT 20 NFE, SA-Solver 2+3:
    0.0124 → 0.0014; 16D CondOT 10 NFE, DEIS-2: 0.489 → 0.081), worse in some at 5 NFE and for
    SA-Solver on the 16D cosine path (0.41 → 0.52); on VP (log-SNR and uniform grids) log-SNR is
    better at 10–20 NFE, hence the rule."""
    if interpolate_in == AUTO:
        return term.process.alpha_is_zero_at_noise()
    return interpolate_in == FLOW_TIME


def flow_time_offsets(l_t):
    """The map τ ↦ v(l_t + τ) − v(l_t) from offsets in the half log-SNR to offsets in the flow time
    v = α/(α + σ) = sigmoid(l) — the time of the rectified-flow path x/(α + σ) that every Gaussian
    process is a rescaling of (CondOT: v = t). v is finite where l is not (v = 0 at α = 0, 1 at σ = 0),
    so a flow's start at α = 0 is an ordinary interpolation node in v. Computed from 1 − v = sigmoid(−l)
    where l_t > 0, so that offsets near the data end keep their digits. A step that starts at
    l_t = ±∞ is first order (its coefficients are not used): a finite stand-in keeps them NaN-free."""
    l0 = jnp.where(jnp.isfinite(l_t), l_t, 0.0)
    upper = l0 > 0

    def v(l):
        return jnp.where(upper, -jax.nn.sigmoid(-l), jax.nn.sigmoid(l))

    v0 = v(l0)
    return lambda tau: v(l0 + tau) - v0


def phi(z, k: int):
    """φ_k(z) = Σ_{m≥0} z^m/(m+k)! (φ₀ = e^z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z): the series for
    |z| < 1 (the recursion cancels there), the recursion elsewhere."""
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, 0.0)
    series = sum(zs**m * (1.0 / math.factorial(m + k)) for m in range(14))
    zl = jnp.where(small, 1.0, z)
    rec = jnp.exp(zl)
    for j in range(k):
        rec = (rec - 1.0 / math.factorial(j)) / zl
    return jnp.where(small, series, rec)


def semilinear_update(term, y, m0, ms: list, coeffs: list, t, t_next, h):
    """y_next = (s_next/s_t) y + w_next φ₁ m₀ + w_next Σ_j c_j (m_j − m₀) on every leaf of the
    pytrees y, m₀, m_j (see the module docstring); zero coefficients are skipped where static."""
    (s_t, w_t), (s_n, w_n) = term.scales(t), term.scales(t_next)
    phi1 = -jnp.expm1(-h)
    pairs = [(c, m) for c, m in zip(coeffs, ms, strict=True) if not (isinstance(c, float) and c == 0.0)]

    def leaf(y_, m0_, s_t_, s_n_, w_t_, w_n_, *mj):
        # w φ₁ = s_n(e^{l_n} − e^{l_t}); its limit −s_n e^{l_t} where h = −∞ (α_next = 0)
        w_phi1 = jnp.where(h == -jnp.inf, -s_n_ * w_t_ / s_t_,
                           w_n_ * jnp.where(h == -jnp.inf, 0.0, phi1))  # fmt: skip
        out = (s_n_ / s_t_) * y_ + w_phi1 * m0_
        for (c, _), m in zip(pairs, mj, strict=True):
            out = out + (w_n_ * c) * (m - m0_)
        return out

    return jax.tree.map(leaf, y, m0, s_t, s_n, w_t, w_n, *[m for _, m in pairs])


def compact_repr(solver) -> str:
    """`Name(option=value, …)` with the options that differ from their defaults (so a solver built
    with the options it had before new ones were added keeps its repr)."""
    opts = [f"{f.name}={getattr(solver, f.name)!r}" for f in dataclasses.fields(solver)
            if getattr(solver, f.name) != f.default]  # fmt: skip
    return f"{type(solver).__name__}({', '.join(opts)})"


def normal_like(key, y):
    """Standard normal noise like the pytree y: one key per leaf, split from `key` (the stochastic
    multistep solvers draw their ξ this way)."""
    leaves, treedef = jax.tree.flatten(y)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape, a.dtype) for k, a in
                                        zip(keys, leaves, strict=True)])  # fmt: skip


def tree_where(cond, a, b):
    """Leafwise jnp.where(cond, a, b) of two pytrees of the same structure (cond a scalar)."""
    return jax.tree.map(lambda x, z: jnp.where(cond, x, z), a, b)
