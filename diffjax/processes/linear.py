"""General linear SDEs dX = (A(t) X + b(t)) dt + G(t) dW with Cov(dW) = Q dt.

X_t | X_0 = x0 is Gaussian with mean e(t) and covariance V(t) solving (Särkkä & Solin 2019,
"Applied Stochastic Differential Equations", §6.1)

    e' = A e + b,                 e(0) = x0,
    V' = A V + V Aᵀ + G Q Gᵀ,     V(0) = 0.

We solve for the transition instead, once for every x0: Φ' = A Φ (Φ(0) = I), m' = A m + b
(m(0) = 0), so that e(t) = Φ(t) x0 + m(t). For constant coefficients the same quantities have a
closed form by matrix exponentials (Van Loan 1978, "Computing integrals involving the matrix
exponential"): `constant_coefficient_moments`.

Shapes: D is the state dimension, M the dimension of the Brownian motion; A(t) is (D, D), b(t) is
(D,), G(t) is (D, M), Q is (M, M) symmetric positive semi-definite; x is (batch, D) or (D,); t is a
scalar or of shape (batch,) (then every output gains a leading batch axis).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_positive, check_time, is_concrete
from diffjax.solvers import ODE, Adaptive, Solver, integrate

Coefficient = Callable[[Array], Array]


class Transition(NamedTuple):
    """X_t | X_0 = x0 ~ N(Φ x0 + m, V): the Gaussian transition from time 0 to t."""

    Phi: Float[Array, "*t D D"]
    m: Float[Array, "*t D"]
    V: Float[Array, "*t D D"]

    def mean(self, x0: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D"]:
        """e(t) = Φ(t) x0 + m(t)."""
        return jnp.einsum("...ij,...j->...i", self.Phi, jnp.asarray(x0)) + self.m


def _check_coefficient_shapes(a_shape, b_shape, g_shape, q_shape, owner: str) -> tuple[int, int]:
    """Validate the shapes of A, b (None: absent), G and Q (None: identity); returns (D, M)."""
    if len(a_shape) != 2 or a_shape[0] != a_shape[1] or a_shape[0] < 1:
        raise ValueError(f"{owner}: A(t) must be a square (D, D) matrix, got shape {a_shape}.")
    d = a_shape[0]
    if b_shape is not None and tuple(b_shape) != (d,):
        raise ValueError(f"{owner}: b(t) must have shape (D,) = ({d},), got {b_shape}.")
    if len(g_shape) != 2 or g_shape[0] != d:
        raise ValueError(
            f"{owner}: G(t) must be a (D, M) matrix with D = {d} rows (the state dimension of A), "
            f"got shape {g_shape}."
        )
    m = g_shape[1]
    if q_shape is not None and tuple(q_shape) != (m, m):
        raise ValueError(
            f"{owner}: Q must be (M, M) = ({m}, {m}) to match the {m} columns of G, got {q_shape}."
        )
    return d, m


def _check_psd(q, owner: str) -> None:
    """Q must be symmetric positive semi-definite (checked on concrete values only)."""
    if not is_concrete(q):
        return
    qn = np.asarray(q, dtype=np.float64)
    scale = max(float(np.abs(qn).max()), 1e-300)
    if not np.allclose(qn, qn.T, atol=1e-10 * scale, rtol=0):
        raise ValueError(f"{owner}: Q must be symmetric; symmetrize it with (Q + Q.T) / 2.")
    if np.linalg.eigvalsh(qn).min() < -1e-10 * scale:
        raise ValueError(
            f"{owner}: Q must be positive semi-definite (a covariance), its smallest eigenvalue is "
            f"{np.linalg.eigvalsh(qn).min():.3g}."
        )


def psd_sqrt(v: Float[Array, "*b K K"]) -> Float[Array, "*b K K"]:
    """Symmetric square root U √Λ Uᵀ of a PSD matrix V = U Λ Uᵀ (negative round-off clipped);
    unlike a Cholesky factor it exists for singular V."""
    lam, u = jnp.linalg.eigh(v)
    return (u * jnp.sqrt(jnp.clip(lam, 0.0))[..., None, :]) @ jnp.swapaxes(u, -1, -2)


def constant_coefficient_moments(
    A: Float[ArrayLike, "D D"],
    b: Float[ArrayLike, " D"] | None,
    G: Float[ArrayLike, "D M"],
    Q: Float[ArrayLike, "M M"] | None,
    t: Float[ArrayLike, "*t"],
) -> Transition:
    """Closed-form transition (Φ, m, V) of dX = (A X + b) dt + G dW, Cov(dW) = Q dt, constant
    coefficients, by matrix exponentials (`jax.scipy.linalg.expm`):

        expm([[A, b], [0, 0]] t) = [[Φ, m], [0, 1]],   Φ = e^{At},  m = ∫₀ᵗ e^{As} b ds,
        expm([[−A, G Q Gᵀ], [0, Aᵀ]] t) = [[·, F], [0, Φᵀ]],
        V = Φ F = ∫₀ᵗ e^{As} G Q Gᵀ e^{Aᵀs} ds

    (Van Loan 1978, Theorem 1), evaluated at t/2^k (‖A‖₁ t/2^k ≤ 1) and doubled k times, which keeps
    it accurate for large ‖A‖t. b = None means b = 0, Q = None means Q = I. t is a scalar or (k,)
    (then Φ, m, V gain a leading axis k). Mean of X_t | X_0 = x0: `Transition.mean(x0)`.
    """
    dtype = jnp.result_type(float)
    A = jnp.asarray(A, dtype)
    G = jnp.asarray(G, dtype)
    b = None if b is None else jnp.asarray(b, dtype)
    Q = None if Q is None else jnp.asarray(Q, dtype)
    d, m_dim = _check_coefficient_shapes(
        A.shape, None if b is None else b.shape, G.shape, None if Q is None else Q.shape,
        "constant_coefficient_moments",
    )
    if Q is not None:
        _check_psd(Q, "constant_coefficient_moments")
    b = jnp.zeros(d, dtype) if b is None else b
    S = G @ G.T if Q is None else G @ Q @ G.T
    t = jnp.asarray(t, dtype)
    if t.ndim > 1:
        raise ValueError(
            f"constant_coefficient_moments: t must be a scalar or (k,), got shape {t.shape}."
        )

    return _van_loan(A, b, S, t)


@jax.jit
def _van_loan(A: Array, b: Array, S: Array, t: Array) -> Transition:
    """Compiled core of `constant_coefficient_moments` (S = G Q Gᵀ)."""
    d = A.shape[0]
    mean_gen = jnp.zeros((d + 1, d + 1), A.dtype).at[:d, :d].set(A).at[:d, d].set(b)
    cov_gen = jnp.block([[-A, S], [jnp.zeros((d, d), A.dtype), A.T]])
    norm = jnp.abs(A).sum(axis=0).max()  # ‖A‖₁

    def at(t):
        # e^{−At} in the covariance block grows like e^{‖A‖t}, and V = Φ F then cancels
        # catastrophically for large ‖A‖t; so evaluate at h = t/2^k with ‖A‖h ≤ 1 and double k times
        # with the semigroup property: Φ(2h) = Φ(h)², m(2h) = Φ(h) m(h) + m(h),
        # V(2h) = V(h) + Φ(h) V(h) Φ(h)ᵀ.
        k = jnp.ceil(jnp.log2(jnp.maximum(norm * jnp.abs(t), 1.0))).astype(jnp.int32)
        h = t / 2.0**k
        e = jax.scipy.linalg.expm(mean_gen * h)
        phi, m = e[:d, :d], e[:d, d]
        v = phi @ jax.scipy.linalg.expm(cov_gen * h)[:d, d:]

        def double(_, c):
            phi, m, v = c
            return phi @ phi, phi @ m + m, v + phi @ v @ phi.T

        phi, m, v = jax.lax.fori_loop(0, k, double, (phi, m, v))
        return Transition(phi, m, 0.5 * (v + v.T))

    return at(t) if t.ndim == 0 else jax.vmap(at)(t)


class _ScalarTimesIdentity:
    """t ↦ c(t)·I_dim with c = f(t) (kind 'drift') or g(t) (kind 'diffusion') of a scalar SDE.

    Hashable and compared by value, so `LinearSDE.from_scalar_sde(VPSDE(), 2)` built twice gives
    equal pytrees and does not make `jax.jit` retrace."""

    def __init__(self, sde, dim: int, kind: str):
        self.sde, self.dim, self.kind = sde, dim, kind

    def __call__(self, t):
        if self.kind == "drift":
            c = self.sde.drift_coeff(t)
        else:
            c = jnp.sqrt(self.sde.diffusion_squared(t))
        return c * jnp.eye(self.dim, dtype=jnp.result_type(c))

    def _key(self):
        return (type(self.sde), self.sde, self.dim, self.kind)

    def __eq__(self, other):
        return isinstance(other, _ScalarTimesIdentity) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


class _Constant:
    """t ↦ a fixed array; hashable and compared by value (for static pytree fields)."""

    def __init__(self, value):
        self.value = np.array(value, dtype=np.float64)
        self.value.flags.writeable = False

    def __call__(self, t):
        return jnp.asarray(self.value, dtype=jnp.result_type(t, float))

    def __eq__(self, other):
        return (
            isinstance(other, _Constant)
            and self.value.shape == other.value.shape
            and bool(np.all(self.value == other.value))
        )

    def __hash__(self):
        return hash((self.value.shape, self.value.tobytes()))


@pytree_dataclass
class LinearSDE:
    """dX = (A(t) X + b(t)) dt + G(t) dW, Cov(dW) = Q dt, on t ∈ [0, T].

    A, b, G are callables of a scalar t (static fields: pass hashable functions, e.g. module-level
    functions, or use `from_constant` / `from_scalar_sde`); b = None means b = 0. Q is an (M, M)
    PSD array leaf (None: identity). ODE tolerances default to 1e-8 with float64 enabled, else 1e-6.
    """

    A: Coefficient = static_field()
    b: Coefficient | None = static_field()
    G: Coefficient = static_field()
    Q: Float[Array, "M M"] | None = None
    T: float = static_field(default=1.0)
    rtol: float | None = static_field(default=None)
    atol: float | None = static_field(default=None)
    max_steps: int = static_field(default=16384)

    def __post_init__(self):
        check_positive("T", self.T, "LinearSDE")
        if isinstance(self.Q, list | tuple | np.ndarray | float | np.floating):
            object.__setattr__(self, "Q", jnp.asarray(self.Q, dtype=jnp.result_type(float)))
        q = self.Q if hasattr(self.Q, "shape") else None  # skip pytree placeholders
        self._shapes(None if q is None else q.shape)
        if q is not None:
            _check_psd(q, "LinearSDE")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_scalar_sde(cls, sde, dim: int) -> LinearSDE:
        """The scalar SDE dx = f(t) x dt + g(t) dW (VPSDE, VESDE, SubVPSDE, CosineVPSDE) in D = dim
        dimensions: A(t) = f(t) I, b = 0, G(t) = g(t) I, Q = I, with f = `sde.drift_coeff` and
        g² = `sde.diffusion_squared`."""
        if not all(hasattr(sde, a) for a in ("drift_coeff", "diffusion_squared", "T")):
            raise ValueError(
                "LinearSDE.from_scalar_sde: sde must be a diffjax SDE (with drift_coeff, "
                f"diffusion_squared and T), got {type(sde).__name__}."
            )
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"LinearSDE.from_scalar_sde: dim must be a positive int, got {dim!r}.")
        dim = int(dim)
        return cls(
            A=_ScalarTimesIdentity(sde, dim, "drift"),
            b=None,
            G=_ScalarTimesIdentity(sde, dim, "diffusion"),
            Q=None,
            T=float(sde.T),
        )

    @classmethod
    def from_constant(cls, A, b, G, Q=None, T: float = 1.0, **kwargs) -> LinearSDE:
        """Constant coefficients A (D, D), b (D,) or None, G (D, M), Q (M, M) or None."""
        return cls(
            A=_Constant(A),
            b=None if b is None else _Constant(b),
            G=_Constant(G),
            Q=None if Q is None else np.asarray(Q, dtype=np.float64),
            T=T,
            **kwargs,
        )

    # -- shapes and coefficients --------------------------------------------------------------
    def _shapes(self, q_shape=None) -> tuple[int, int]:
        t = jax.ShapeDtypeStruct((), jnp.result_type(float))
        a_shape = jax.eval_shape(self.A, t).shape
        b_shape = None if self.b is None else jax.eval_shape(self.b, t).shape
        g_shape = jax.eval_shape(self.G, t).shape
        return _check_coefficient_shapes(a_shape, b_shape, g_shape, q_shape, "LinearSDE")

    @property
    def dim(self) -> int:
        """State dimension D."""
        return self._shapes()[0]

    def check_time(self, t: ArrayLike) -> Array:
        t = check_time(t, 0.0, self.T, "LinearSDE")
        if t.ndim > 1:
            raise ValueError(f"LinearSDE: t must be a scalar or of shape (batch,), got {t.shape}.")
        return jnp.asarray(t, jnp.result_type(t, float))

    def _check_x(self, x: Array, t: Array) -> Array:
        x = jnp.asarray(x)
        d = self.dim
        if x.ndim not in (1, 2) or x.shape[-1] != d:
            raise ValueError(f"LinearSDE: x must have shape (batch, {d}) or ({d},), got {x.shape}.")
        if t.ndim == 1 and (x.ndim != 2 or x.shape[0] != t.shape[0]):
            raise ValueError(
                f"LinearSDE: t of shape {t.shape} needs x of shape ({t.shape[0]}, {d}), "
                f"got {x.shape}."
            )
        return x

    @staticmethod
    def _at(fn: Coefficient, t: Array) -> Array:
        return fn(t) if t.ndim == 0 else jax.vmap(fn)(t)

    def _b(self, t: Array) -> Array:
        if self.b is None:
            return jnp.zeros(t.shape + (self.dim,), jnp.result_type(t, float))
        return self._at(self.b, t)

    def _noise_sqrt(self) -> Array | None:
        return None if self.Q is None else psd_sqrt(jnp.asarray(self.Q))

    def drift(self, x: Float[Array, "*batch D"], t: ArrayLike) -> Float[Array, "*batch D"]:
        """A(t) x + b(t)."""
        t = self.check_time(t)
        x = self._check_x(x, t)
        return jnp.einsum("...ij,...j->...i", self._at(self.A, t), x) + self._b(t)

    def diffusion_matrix(self, t: ArrayLike) -> Float[Array, "*t D M"]:
        """L(t) = G(t) Q^{1/2}, so that G dW = L dB with B a standard Brownian motion in R^M (the
        matrix for Euler–Maruyama, `diffjax.solvers.SDE`); L Lᵀ = G Q Gᵀ."""
        g = self._at(self.G, self.check_time(t))
        q_half = self._noise_sqrt()
        return g if q_half is None else g @ q_half

    def diffusion_covariance(self, t: ArrayLike) -> Float[Array, "*t D D"]:
        """G(t) Q G(t)ᵀ: the covariance rate of the noise."""
        g = self._at(self.G, self.check_time(t))
        gq = g if self.Q is None else g @ jnp.asarray(self.Q)
        return gq @ jnp.swapaxes(g, -1, -2)

    # -- moments ------------------------------------------------------------------------------
    def _tolerances(self, dtype) -> tuple[float, float]:
        default = 1e-8 if dtype == jnp.float64 else 1e-6
        return self.rtol or default, self.atol or default

    def _transition_scalar(self, t: Array) -> Transition:
        d = self.dim
        dtype = jnp.result_type(t, float)
        y0 = (jnp.eye(d, dtype=dtype), jnp.zeros(d, dtype), jnp.zeros((d, d), dtype))
        rtol, atol = self._tolerances(dtype)
        solver = Adaptive(rtol=rtol, atol=atol, max_steps=self.max_steps, initial_steps=None)
        term = ODE(functools.partial(_moment_vector_field, self, t))
        phi, m, v = integrate(solver, term, y0, jnp.asarray([0.0, 1.0], dtype)).y
        return Transition(phi, m, 0.5 * (v + v.T))

    def transition(self, t: ArrayLike) -> Transition:
        """(Φ(t), m(t), V(t)) with X_t | X_0 = x0 ~ N(Φ x0 + m, V), from the moment ODEs solved with
        the shared integrator (adaptive Tsit5). t scalar, or (k,) for a leading axis k on every output."""
        return _solve_transition(self, self.check_time(t))

    def moments(
        self, t: ArrayLike, x0: Float[ArrayLike, "*batch D"]
    ) -> tuple[Float[Array, "*batch D"], Float[Array, "*t D D"]]:
        """Mean e(t) = Φ x0 + m (x0's shape) and covariance V(t) ((D, D), or (batch, D, D) for t of
        shape (batch,)) of X_t | X_0 = x0; one ODE solve serves the whole batch of x0."""
        t = self.check_time(t)
        x0 = self._check_x(x0, t)
        tr = self.transition(t)
        return tr.mean(x0), tr.V

    def sample_marginal(
        self, key: Array, x0: Float[ArrayLike, "*batch D"], t: ArrayLike
    ) -> tuple[Float[Array, "*batch D"], Float[Array, "*batch D"]]:
        """Draw X_t | X_0 = x0; returns (x_t, ε) with x_t = e(t) + V(t)^{1/2} ε, ε ~ N(0, I)."""
        mean, cov = self.moments(t, x0)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.einsum("...ij,...j->...i", psd_sqrt(cov), eps), eps

    def euler_maruyama_moments(
        self, ts: Float[ArrayLike, " n_plus_1"], x0: Float[ArrayLike, "*batch D"]
    ) -> tuple[Float[Array, "*batch D"], Float[Array, "D D"]]:
        """Exact mean and covariance of the Euler–Maruyama chain X_{k+1} = X_k + (A_k X_k + b_k) Δ_k
        + L_k √|Δ_k| z_k on the grid ts (coefficients at the left point t_k, X_0 = x0):

            e_{k+1} = (I + A_k Δ_k) e_k + b_k Δ_k,
            V_{k+1} = (I + A_k Δ_k) V_k (I + A_k Δ_k)ᵀ + G_k Q G_kᵀ |Δ_k|.

        `moments(ts[-1], x0)` minus these is the discretisation bias of `euler_maruyama` (O(Δ))."""
        ts = self.check_time(ts)
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(f"LinearSDE: ts must be a 1-D grid of >= 2 times, got {ts.shape}.")
        x0 = self._check_x(x0, jnp.zeros(()))
        d = self.dim
        y0 = (jnp.eye(d, dtype=ts.dtype), jnp.zeros(d, ts.dtype), jnp.zeros((d, d), ts.dtype))
        phi, m, v = integrate(_EulerMaruyamaMoments(), self, y0, ts).y
        return Transition(phi, m, v).mean(x0), 0.5 * (v + v.T)


@pytree_dataclass
class _EulerMaruyamaMoments(Solver):
    """The exact moment recursion of an Euler–Maruyama step on a linear SDE (the term):
    (Φ, m, V) ← (KΦ, Km + bΔ, KVKᵀ + GQGᵀ|Δ|) with K = I + AΔ."""

    def step(self, sde, y, carry, t, t_next, key):
        phi, m, v = y
        dt = t_next - t
        k = jnp.eye(m.shape[0], dtype=m.dtype) + sde.A(t).astype(m.dtype) * dt
        s = sde.diffusion_covariance(t).astype(m.dtype)
        return (k @ phi, k @ m + sde._b(t) * dt, k @ v @ k.T + s * jnp.abs(dt)), carry


def _moment_vector_field(sde, t, y, s):
    """(Φ, m, V)' = (AΦ, Am + b, AV + VAᵀ + GQGᵀ) at τ = s·t, times t: the time is rescaled to
    s ∈ [0, 1] so that every solve runs on a fixed interval and t = 0 needs no special case."""
    phi, m, v = y
    tau = s * t
    a = sde.A(tau).astype(v.dtype)
    gqg = sde.diffusion_covariance(tau).astype(v.dtype)
    b = sde._b(tau).astype(v.dtype)
    return (t * (a @ phi), t * (a @ m + b), t * (a @ v + v @ a.T + gqg))


@jax.jit
def _solve_transition(sde: LinearSDE, t: Array) -> Transition:
    """Compiled once per (sde, shape of t); t scalar or (k,)."""
    return sde._transition_scalar(t) if t.ndim == 0 else jax.vmap(sde._transition_scalar)(t)
