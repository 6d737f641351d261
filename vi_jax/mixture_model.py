"""Gaussian mixture with a categorical latent: exact marginal and posterior, and VI with a
categorical q(z) (by exact enumeration or by the score-function estimator).

    p(z = k) = pi_k = softmax(logits)_k,   p(x | z = k) = N(x; mu_k, diag sigma_k^2)
    log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, sigma_k)],   p(z | x) = softmax_k(log p(x, k))

theta = {"logits" [K], "means" [K, D], "log_scales" [K, D]} (unconstrained). The variational
family is q(z) = Cat(softmax(eta)), eta [K]; it contains every posterior, so the approximation
gap is zero and log p(x) - L(x; q) = KL(q || p(z|x)) measures only how far q is from its optimum.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vi_jax.array_types import Array, Params
from vi_jax.distributions import sample_and_log_prob
from vi_jax.elbo import ElboTerms
from vi_jax.estimators import score_function_surrogate
from vi_jax.local import row_optimizer, take_rows, tile_rows
from vi_jax.train import Algorithm, TrainInfo, TrainState, gradient_step

ESTIMATORS = ("enumeration", "score_function")


class GaussianMixture(NamedTuple):
    """p(x, z; theta) for x in R^data_dim and z in {0, ..., num_components - 1}."""

    num_components: int
    data_dim: int

    def init(self, key: Array, mean_scale: float = 1.0) -> Params:
        """Means ~ N(0, mean_scale^2 I), equal weights, unit scales."""
        shape = (self.num_components, self.data_dim)
        return {"logits": jnp.zeros(self.num_components),
                "means": mean_scale * jax.random.normal(key, shape),
                "log_scales": jnp.zeros(shape)}

    def prior(self, theta: Params) -> distrax.Categorical:
        return distrax.Categorical(logits=theta["logits"])

    def likelihood(self, theta: Params, z: Array) -> distrax.Distribution:
        """p(x | z) = N(mu_z, diag sigma_z^2) for one integer z."""
        return distrax.MultivariateNormalDiag(theta["means"][z], jnp.exp(theta["log_scales"][z]))

    def log_likelihoods(self, theta: Params, x: Array) -> Array:
        """[K]: log p(x | z = k) for every k."""
        return jax.vmap(lambda k: self.likelihood(theta, k).log_prob(x))(jnp.arange(self.num_components))

    def log_joints(self, theta: Params, x: Array) -> Array:
        """[K]: log p(x, z = k) = log pi_k + log N(x; mu_k, sigma_k)."""
        return jax.nn.log_softmax(theta["logits"]) + self.log_likelihoods(theta, x)

    def log_marginal(self, theta: Params, x: Array) -> Array:
        """log p(x) = logsumexp_k log p(x, z = k), exact."""
        return jax.nn.logsumexp(self.log_joints(theta, x))

    def posterior(self, theta: Params, x: Array) -> distrax.Categorical:
        """p(z | x) = softmax_k log p(x, z = k) (Bayes' rule), exact."""
        return distrax.Categorical(logits=self.log_joints(theta, x))

    def sample(self, key: Array, theta: Params, num: int) -> tuple[Array, Array]:
        """(x [num, D], z [num]): z ~ p(z), x ~ p(x | z)."""
        key_z, key_x = jax.random.split(key)
        z = self.prior(theta).sample(seed=key_z, sample_shape=num)
        x = jax.vmap(lambda k, z_i: self.likelihood(theta, z_i).sample(seed=k))(jax.random.split(key_x, num), z)
        return x, z

    def check_data(self, x) -> None:
        """ValueError unless x has shape [N, data_dim] (a static check: works under jit)."""
        shape = jnp.shape(x)
        if len(shape) != 2 or shape[1] != self.data_dim:
            raise ValueError(f"mixture data must have shape [N, {self.data_dim}], got {shape}")


def categorical_q(eta: Array) -> distrax.Categorical:
    """q(z) = Cat(softmax(eta))."""
    return distrax.Categorical(logits=eta)


def posterior_kl(model: GaussianMixture, theta: Params, eta: Array, x: Array) -> Array:
    """KL(q || p(z|x)) = sum_k q_k (log q_k - log p(z = k | x)) for one datapoint, exact.

    Equal to log p(x) - L(x; q) (the tightness identity), without its cancellation."""
    return categorical_q(eta).kl_divergence(model.posterior(theta, x))


def make_mixture_elbo(model: GaussianMixture, *, estimator: str = "enumeration",
                      num_samples: int = 2) -> Callable[[Array, Params, Array, Array], ElboTerms]:
    """Per-datapoint L(x; q) = E_q[log p(x|z)] - KL(q || p(z)), fn(key, theta, eta, x) -> ElboTerms.

    estimator="enumeration": the exact sum over the K values of z,
        L = sum_k q_k [log p(x, k) - log q_k]  (the key is unused);
    estimator="score_function": M = num_samples >= 2 draws z_m ~ q, f_m = log p(x, z_m) - log q(z_m);
        the value is (1/M) sum_m f_m and its gradient the leave-one-out score-function estimate
        (vi_jax.estimators.score_function_surrogate), unbiased for the gradient of L in eta and theta.
        reconstruction and kl are the matching M-sample averages (differentiate only `elbo`).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown mixture ELBO estimator {estimator!r}; known: {ESTIMATORS}")
    if estimator == "score_function" and num_samples < 2:
        raise ValueError(f"the score-function estimator needs num_samples >= 2, got {num_samples}")

    def enumeration(key: Array, theta: Params, eta: Array, x: Array) -> ElboTerms:
        q, log_q = jax.nn.softmax(eta), jax.nn.log_softmax(eta)
        reconstruction = jnp.sum(q * model.log_likelihoods(theta, x))
        kl = jnp.sum(q * (log_q - jax.nn.log_softmax(theta["logits"])))
        return ElboTerms(reconstruction - kl, reconstruction, kl)

    def score_function(key: Array, theta: Params, eta: Array, x: Array) -> ElboTerms:
        q = categorical_q(eta)
        z, log_q = jax.vmap(lambda k: sample_and_log_prob(q, k))(jax.random.split(key, num_samples))
        log_lik = model.log_likelihoods(theta, x)[z]
        log_prior = jax.nn.log_softmax(theta["logits"])[z]
        f = log_lik + log_prior - log_q
        reconstruction, kl = jnp.mean(log_lik), jnp.mean(log_q - log_prior)
        return ElboTerms(score_function_surrogate(f, log_q), reconstruction, kl)

    return enumeration if estimator == "enumeration" else score_function


def make_posterior_fit(model: GaussianMixture, optimizer: optax.GradientTransformation, num_steps: int,
                       *, estimator: str = "enumeration", num_samples: int = 2) -> Callable:
    """fit(key, theta, eta_table, data) -> eta_table after num_steps ascent steps on each row's
    own ELBO with theta fixed (all rows vmapped, per-row optimizer state; step t of row i uses
    key fold_in(fold_in(key, t), i)). The optimum of every row is its exact posterior. Jit it."""
    elbo_fn = make_mixture_elbo(model, estimator=estimator, num_samples=num_samples)
    rows_opt = row_optimizer(optimizer)

    def neg_grad(key, theta, eta, x):
        return jax.grad(lambda e: -elbo_fn(key, theta, e, x).elbo)(eta)

    def fit(key: Array, theta: Params, eta_table: Array, data: Array) -> Array:
        model.check_data(data)
        if eta_table.shape != (data.shape[0], model.num_components):
            raise ValueError(f"eta_table must have shape [N, K] = {(data.shape[0], model.num_components)}, "
                             f"got {eta_table.shape}")
        rows = jnp.arange(data.shape[0])

        def one_step(carry, t):
            table, states = carry
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, t), rows)
            grads = jax.vmap(neg_grad, (0, None, 0, 0))(keys, theta, table, data)
            return rows_opt.update(grads, states, table), None

        (table, _), _ = jax.lax.scan(one_step, (eta_table, rows_opt.init(eta_table)), jnp.arange(num_steps))
        return table

    return fit


def _info(terms: ElboTerms) -> tuple[Array, TrainInfo]:
    terms = jax.tree.map(jnp.mean, terms)
    return -terms.elbo, TrainInfo(-terms.elbo, terms.elbo, terms.reconstruction, terms.kl, jnp.array(1.0))


def amortized_mixture_vi(model: GaussianMixture, encoder: nn.Module, optimizer: optax.GradientTransformation,
                         *, estimator: str = "enumeration", num_samples: int = 2) -> Algorithm:
    """Jointly maximise (1/B) sum_i L(x_i; q_phi(z|x_i), theta) over the encoder phi (x -> eta)
    and theta: EM-like, the encoder does the E-step for every x at once. params {"encoder", "model"}."""
    elbo_fn = make_mixture_elbo(model, estimator=estimator, num_samples=num_samples)

    def init(key: Array, x_example: Array) -> TrainState:
        model.check_data(x_example[None])
        key_enc, key_model = jax.random.split(key)
        params = {"encoder": encoder.init(key_enc, x_example), "model": model.init(key_model)}
        return TrainState(params, optimizer.init(params), jnp.array(0, jnp.int32))

    def objective(params, key, batch, beta):
        eta = encoder.apply(params["encoder"], batch)
        keys = jax.random.split(key, batch.shape[0])
        return _info(jax.vmap(elbo_fn, (0, None, 0, 0))(keys, params["model"], eta, batch))

    return Algorithm(init, gradient_step(objective, optimizer, 0))


def local_mixture_vi(model: GaussianMixture, num_rows: int, optimizer: optax.GradientTransformation,
                     local_optimizer: optax.GradientTransformation, *, estimator: str = "enumeration",
                     num_samples: int = 2) -> Algorithm:
    """Jointly maximise the mean ELBO over theta and a table of per-datapoint eta_i (q_i starts
    uniform). Batches are (row indices, x); theta follows the batch-mean gradient, each eta_i its
    own L_i through a per-row optimizer (rows outside the batch do not move). params {"local", "model"}."""
    elbo_fn = make_mixture_elbo(model, estimator=estimator, num_samples=num_samples)
    rows_opt = row_optimizer(local_optimizer)

    def init(key: Array, x_example: Array) -> TrainState:
        model.check_data(x_example[None])
        table = tile_rows(jnp.zeros(model.num_components), num_rows)
        _, key_model = jax.random.split(key)  # the model key of amortized_mixture_vi's init
        params = {"local": table, "model": model.init(key_model)}
        return TrainState(params, (optimizer.init(params["model"]), rows_opt.init(table)), jnp.array(0, jnp.int32))

    def objective(theta, eta_rows, key, x):
        terms = jax.vmap(elbo_fn, (0, None, 0, 0))(jax.random.split(key, x.shape[0]), theta, eta_rows, x)
        # sum over the batch: d/d eta_i is the per-datapoint gradient of L_i
        return -jnp.sum(terms.elbo), _info(terms)[1]

    def step(key: Array, state: TrainState, batch) -> tuple[TrainState, TrainInfo]:
        rows, x = batch
        theta_opt, rows_state = state.opt_state
        (g_theta, g_rows), info = jax.grad(objective, argnums=(0, 1), has_aux=True)(
            state.params["model"], take_rows(state.params["local"], rows), key, x)
        g_theta = jax.tree.map(lambda g: g / x.shape[0], g_theta)
        updates, theta_opt = optimizer.update(g_theta, theta_opt, state.params["model"])
        theta = optax.apply_updates(state.params["model"], updates)
        table, rows_state = rows_opt.step_rows(state.params["local"], rows_state, rows, g_rows)
        return TrainState({"local": table, "model": theta}, (theta_opt, rows_state), state.step + 1), info

    return Algorithm(init, step)
