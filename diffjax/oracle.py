"""Exact oracle: Gaussian-mixture data and everything a model could learn about it, in closed form.

Data p(x0) = Σ_k w_k N(x0; μ_k, Σ_k) (any dimension D, full covariances, optional class label per
component). Under any Gaussian process x_t = α x0 + σ ε the marginal is again a mixture,

    p_t(x) = Σ_k w_k N(x; α μ_k, C_k),   C_k = α² Σ_k + σ² I,

and the posterior means are exact (per component k, with responsibilities r_k(x) ∝ w_k N_k(x)):

    E[x0 | x, k] = μ_k + α Σ_k C_k⁻¹ (x − α μ_k),    E[ε | x, k] = σ C_k⁻¹ (x − α μ_k),
    ∇ log p_t(x) = −Σ_k r_k C_k⁻¹ (x − α μ_k).

From (E[x0|x], E[ε|x]) every parameterization follows (`diffjax.parameterization`), in particular the
marginal velocity E[α̇ x0 + σ̇ ε | x_t = x] of Theorem 5 in `shared/seeds/001`.

Shapes: x is (N, D); t is a scalar or (N,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from diffjax._pytree import pytree_dataclass, static_field
from diffjax._validate import check_batch_time, is_concrete
from diffjax.guidance import guide
from diffjax.parameterization import Prediction, check_prediction, from_x0_eps
from diffjax.processes.base import GaussianProcess


@pytree_dataclass
class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k); build with `GaussianMixture.create` (which validates)."""

    weights: Float[Array, " K"]
    means: Float[Array, "K D"]
    covs: Float[Array, "K D D"]
    labels: Int[Array, " K"]
    n_classes: int = static_field(default=1)
    isotropic: bool = static_field(default=False)  # every Σ_k = s_k² I (a cheaper closed form)

    @classmethod
    def create(cls, means, covs=1.0, weights=None, labels=None) -> GaussianMixture:
        """means (K, D); covs a scalar, (K,), (K, D) diagonal or (K, D, D); weights (K,) summing to 1
        (default uniform); labels (K,) ints in [0, n_classes) (default: one class per component)."""
        means = jnp.asarray(means, dtype=jnp.result_type(float))
        if means.ndim != 2:
            raise ValueError(f"GaussianMixture: means must be (K, D), got shape {means.shape}.")
        k, d = means.shape
        covs = jnp.asarray(covs, dtype=means.dtype)
        isotropic = covs.ndim == 0 or covs.shape == (k,)
        if covs.ndim == 0:
            covs = jnp.broadcast_to(covs * jnp.eye(d), (k, d, d))
        elif covs.shape == (k,):
            covs = covs[:, None, None] * jnp.eye(d)
        elif covs.shape == (k, d):
            covs = jax.vmap(jnp.diag)(covs)
        elif covs.shape != (k, d, d):
            raise ValueError(
                f"GaussianMixture: covs must be a scalar, (K,), (K, D) or (K, D, D) with K={k}, D={d};"
                f" got shape {covs.shape}."
            )
        weights = jnp.full((k,), 1.0 / k) if weights is None else weights
        weights = jnp.asarray(weights, means.dtype)
        if weights.shape != (k,):
            raise ValueError(f"GaussianMixture: weights must be ({k},), got {weights.shape}.")
        labels = jnp.arange(k) if labels is None else jnp.asarray(labels, jnp.int32)
        if labels.shape != (k,):
            raise ValueError(f"GaussianMixture: labels must be ({k},), got {labels.shape}.")
        if is_concrete((weights, covs)):
            w = np.asarray(weights)
            if np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-5):
                raise ValueError(f"GaussianMixture: weights must be >= 0 and sum to 1, got {w}.")
            if np.any(np.linalg.eigvalsh(np.asarray(covs)) <= 0):
                raise ValueError("GaussianMixture: every covariance must be positive definite.")
        n_classes = int(np.asarray(labels).max()) + 1
        return cls(weights, means, covs, labels, n_classes, isotropic)

    # -- the data distribution -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key, n: int) -> tuple[Float[Array, "n D"], Int[Array, " n"]]:
        """n samples and their class labels."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)[comp]
        z = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, z), self.labels[comp]

    def condition(self, label) -> GaussianMixture:
        """The mixture of the components with class `label` (renormalised; shapes unchanged)."""
        w = jnp.where(self.labels == label, self.weights, 0.0)
        return GaussianMixture(w / w.sum(), self.means, self.covs, self.labels, self.n_classes,
                               self.isotropic)  # fmt: skip

    def mean(self) -> Float[Array, " D"]:
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "D D"]:
        m = self.mean()
        dev = self.means - m
        return jnp.einsum("k,kij->ij", self.weights, self.covs + dev[:, :, None] * dev[:, None, :])

    # -- the noised marginal p_t ------------------------------------------------------------
    def _coeffs(self, process: GaussianProcess | None, x, t):
        if process is None:
            one = jnp.ones(x.shape[:1], x.dtype)
            return one, 0.0 * one
        t = jnp.broadcast_to(check_batch_time(x, t, "GaussianMixture"), x.shape[:1])
        return process.alpha(t), process.sigma(t)

    def _posterior_one(self, x, alpha, sigma, evals, evecs):
        """For one x (D,): log p_t(x), responsibilities (K,), E[x0|x], E[ε|x], score.

        With Σ_k = U_k diag(λ_k) U_kᵀ (computed once per call), C_k = U_k diag(α²λ_k + σ²) U_kᵀ, so
        C_k⁻¹ and log|C_k| cost O(K D²) per point instead of a Cholesky factorisation."""
        d = self.dim
        diff = x - alpha * self.means  # (K, D)
        c_evals = alpha**2 * evals + sigma**2  # (K, D)
        proj = jnp.einsum("kji,kj->ki", evecs, diff)  # U_kᵀ diff
        sol = jnp.einsum("kij,kj->ki", evecs, proj / c_evals)  # C_k⁻¹ diff
        logdet = jnp.sum(jnp.log(c_evals), axis=-1)
        log_comp = -0.5 * (jnp.sum(proj**2 / c_evals, -1) + logdet + d * jnp.log(2 * jnp.pi))
        log_joint = jnp.log(self.weights) + log_comp
        log_p = jax.scipy.special.logsumexp(log_joint)
        resp = jnp.exp(log_joint - log_p)
        sigma_sol = jnp.einsum("kij,kj->ki", evecs, evals * proj / c_evals)  # Σ_k C_k⁻¹ diff
        x0 = resp @ (self.means + alpha * sigma_sol)
        eps = sigma * (resp @ sol)
        score = -(resp @ sol)
        return log_p, resp, x0, eps, score

    def _posterior_isotropic(self, x, alpha, sigma, evals):
        """`_posterior_one` for Σ_k = v_k I, without the rotations: O(K D) per point."""
        d = self.dim
        diff = x - alpha * self.means  # (K, D)
        c = alpha**2 * evals[:, 0] + sigma**2  # (K,)
        sol = diff / c[:, None]  # C_k⁻¹ diff
        log_comp = -0.5 * (jnp.sum(diff * sol, -1) + d * jnp.log(c) + d * jnp.log(2 * jnp.pi))
        log_joint = jnp.log(self.weights) + log_comp
        log_p = jax.scipy.special.logsumexp(log_joint)
        resp = jnp.exp(log_joint - log_p)
        x0 = resp @ (self.means + alpha * evals * sol)
        return log_p, resp, x0, sigma * (resp @ sol), -(resp @ sol)

    def _posterior(self, x, process, t):
        alpha, sigma = self._coeffs(process, x, t)
        if self.isotropic:  # Σ_k = v_k I: U_k = I, every eigenvalue v_k
            d = self.dim
            evals = jnp.broadcast_to(self.covs[:, 0, 0][:, None], (self.means.shape[0], d))
            return jax.vmap(self._posterior_isotropic, in_axes=(0, 0, 0, None))(x, alpha, sigma, evals)
        evals, evecs = jnp.linalg.eigh(self.covs)
        return jax.vmap(self._posterior_one, in_axes=(0, 0, 0, None, None))(
            x, alpha, sigma, evals, evecs
        )

    def log_prob(self, x: Float[Array, "N D"], process=None, t=None) -> Float[Array, " N"]:
        """log p_t(x) (log p_data(x) when process is None)."""
        return self._posterior(x, process, t)[0]

    def score(self, x, process=None, t=None) -> Float[Array, "N D"]:
        """∇_x log p_t(x) (of the data distribution when process is None)."""
        return self._posterior(x, process, t)[4]

    def posterior_x0_eps(self, x, process, t) -> tuple[Array, Array]:
        """(E[x0 | x_t = x], E[ε | x_t = x]) — exact at every t, including α = 0 or σ = 0."""
        _, _, x0, eps, _ = self._posterior(x, process, t)
        return x0, eps

    def predict(self, x, process, t, prediction: Prediction) -> Array:
        """The Bayes-optimal prediction of type `prediction` ('eps', 'x0', 'score', 'v', 'velocity')."""
        x0, eps = self.posterior_x0_eps(x, process, t)
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return from_x0_eps(x0, eps, prediction, x, process.coefficients(t))

    def velocity(self, x, process, t) -> Array:
        """Marginal velocity E[α̇ x0 + σ̇ ε | x_t = x] (the probability-flow / flow-matching field)."""
        return self.predict(x, process, t, "velocity")

    def component_posterior(self, x, process=None, t=None) -> Float[Array, "N K"]:
        """p(k | x_t = x)."""
        return self._posterior(x, process, t)[1]

    def class_posterior(self, x, process=None, t=None) -> Float[Array, "N C"]:
        """p(y | x_t = x), summing component posteriors per class label."""
        resp = self.component_posterior(x, process, t)
        return resp @ jax.nn.one_hot(self.labels, self.n_classes, dtype=resp.dtype)

    def model(self, process, prediction: Prediction = "eps") -> ExactModel:
        """The exact model (x, t) -> prediction, ready for samplers, losses and likelihoods: a pytree
        holding the mixture and the process, so samplers compile once for it."""
        check_prediction(prediction)
        return ExactModel(self, process, prediction)

    # -- the exact flow map of the probability-flow ODE (few-step methods) -----------------
    def flow_map(self, process, num_steps: int = 128):
        """Φ_{t→s}(x): the exact probability-flow map, a callable (x, t, s) (t, s scalars or (N,)),
        by RK4 on the exact velocity (`diffjax.flow_map.solve_flow_map`, error O(num_steps⁻⁴);
        float64 when x is). A pytree, differentiable (`jax.jvp`, `jax.grad`) in x, t and s."""
        from diffjax.flow_map import ExactFlowMap

        return ExactFlowMap(self, process, num_steps)

    def average_velocity(self, process, num_steps: int = 128):
        """u(x, t, s) = (Φ_{t→s}(x) − x)/(s − t) (= v(x, t) at s = t): the exact MeanFlow target."""
        from diffjax.flow_map import ExactAverageVelocity

        return ExactAverageVelocity(self.flow_map(process, num_steps))

    def consistency_function(self, process, num_steps: int = 128):
        """f(x, t) = Φ_{t→t_data}(x): the exact consistency function (f(x, t_data) = x)."""
        from diffjax.flow_map import ExactConsistencyFunction

        return ExactConsistencyFunction(self.flow_map(process, num_steps))

    def conditional_model(self, process, prediction: Prediction = "eps") -> ExactConditionalModel:
        """The exact class-conditional model (x, t, y) -> prediction of p_t(x | y), with the null
        label y = n_classes (∅) giving p_t(x): the Bayes-optimal network of classifier-free guidance
        training (`cfg_model(model, y, w, null_label=mixture.n_classes)`). A pytree, like `model`."""
        check_prediction(prediction)
        return ExactConditionalModel(self, process, prediction)

    def guided(self, labels, guidance_scale) -> GuidedVelocity:
        """The classifier-free-guided field v_w(x, t | y) = w·v(x, t | y) + (1 − w)·v(x, t) (labels y (N,),
        per example; w the guidance scale), with its exact flow map and average velocity:
        `mixture.guided(y, w).average_velocity(process)` is the fixed point of MeanFlow trained with
        guidance."""
        return GuidedVelocity(self, jnp.asarray(labels), jnp.asarray(guidance_scale))


@pytree_dataclass(eq=False)
class GuidedVelocity:
    """w·v(x, t | y) + (1 − w)·v(x, t) of a labelled mixture (see `GaussianMixture.guided`)."""

    mixture: GaussianMixture
    labels: Array
    guidance_scale: Array

    def velocity(self, x, process, t) -> Array:
        conditional = self.mixture.conditional_model(process, "velocity")(x, t, self.labels)
        return guide(conditional, self.mixture.velocity(x, process, t), self.guidance_scale)

    def flow_map(self, process, num_steps: int = 128):
        """Φ_{t→s}(x) of the guided ODE (RK4, as `GaussianMixture.flow_map`); x (N, D), N = len(labels)."""
        from diffjax.flow_map import ExactFlowMap

        return ExactFlowMap(self, process, num_steps)

    def average_velocity(self, process, num_steps: int = 128):
        """u(x, t, s) of the guided ODE: the exact target of MeanFlow trained with guidance."""
        from diffjax.flow_map import ExactAverageVelocity

        return ExactAverageVelocity(self.flow_map(process, num_steps))


@pytree_dataclass(eq=False)
class ExactConditionalModel:
    """p_t(x | y)'s exact prediction; y = n_classes is ∅ (see `GaussianMixture.conditional_model`)."""

    mixture: GaussianMixture
    process: GaussianProcess
    prediction: str = static_field(default="eps")

    def __call__(self, x, t, y):
        mix, null = self.mixture, self.mixture.n_classes
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        y = jnp.broadcast_to(jnp.asarray(y), x.shape[:1])

        def one(xi, ti, yi):
            args = (xi[None], self.process, ti[None], self.prediction)
            cond = mix.condition(jnp.minimum(yi, null - 1)).predict(*args)
            return jnp.where(yi == null, mix.predict(*args), cond)[0]

        return jax.vmap(one)(x, t, y)


@pytree_dataclass(eq=False)
class ExactModel:
    """The Bayes-optimal network of a `GaussianMixture` under a process (see `GaussianMixture.model`)."""

    mixture: GaussianMixture
    process: GaussianProcess
    prediction: str = static_field(default="eps")

    def __call__(self, x, t):
        return self.mixture.predict(x, self.process, t, self.prediction)


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture."""
    mean = jnp.asarray(mean, dtype=jnp.result_type(float))
    return GaussianMixture.create(mean[None], jnp.asarray(cov)[None] if jnp.ndim(cov) else cov)


def ring_mixture(n: int = 8, radius: float = 4.0, std: float = 0.5, dim: int = 2) -> GaussianMixture:
    """n equally weighted, labelled components on a circle in the first two coordinates."""
    ang = 2 * np.pi * np.arange(n) / n
    means = np.zeros((n, dim))
    means[:, 0], means[:, 1] = radius * np.cos(ang), radius * np.sin(ang)
    return GaussianMixture.create(means, std**2)
