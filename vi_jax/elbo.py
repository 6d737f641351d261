"""Per-datapoint ELBO and importance-weighted (IWAE) estimators.

Each factory closes over the static configuration (model, family, number of samples) and
returns a pure function of (key, theta, q_params, x) for ONE datapoint; `map_datapoints`
applies it to a dataset (vmapped in batches). Callers jit.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.distributions import sample_and_log_prob
from vi_jax.estimators import get_estimator
from vi_jax.families import VariationalFamily
from vi_jax.models import LatentVariableModel

Array = jax.Array
Params = Any

KL_FORMS = ("analytic", "mc")


class ElboTerms(NamedTuple):
    """elbo = reconstruction - kl, all in nats for one datapoint (M-sample averages)."""

    elbo: Array
    reconstruction: Array  # (1/M) sum_m log p(x | z_m)
    kl: Array  # KL(q || p(z)): closed form, or (1/M) sum_m [log q(z_m) - log p(z_m)]
    # H(q): closed form beside the closed-form KL, else -(1/M) sum_m log q(z_m); None where an
    # estimator has none (the entropy warm-up of vi_jax.train needs it)
    entropy: Optional[Array] = None


class IwaeTerms(NamedTuple):
    """bound = log (1/K) sum_k w_k with w_k = p(x, z_k) / q(z_k), z_k ~ q.

    stderr: delta-method Monte-Carlo standard error of `bound` as an estimate of its
    expectation, sqrt(Var(w) / K) / mean(w), with the sample variance of the K weights.
    It needs Var(w) < inf: when q has lighter tails than the posterior (e.g. narrower
    Gaussians) the weights can have infinite variance and the estimate comes out too small.
    """

    bound: Array
    stderr: Array


def check_datapoint(model: LatentVariableModel, x: Array, estimator: str) -> None:
    """ValueError unless x is one datapoint [data_dim] (checked while tracing: free under jit).
    A batch [N, data_dim] would broadcast against one draw's likelihood and mix the datapoints."""
    if jnp.shape(x) != (model.data_dim,):
        raise ValueError(f"{estimator} takes one datapoint of shape ({model.data_dim},), got {jnp.shape(x)}: "
                         "for a batch, jax.vmap it or use vi_jax.elbo.map_datapoints")


def check_count(name: str, value) -> None:
    """ValueError unless value is an integer >= 1 (a float such as 2.5 draws would truncate)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def map_draws(f: Callable[[Array], Array], z: Array) -> Array:
    """[f(z_1), ..., f(z_M)] over the leading draw axis of z.

    One draw is evaluated without vmap: inside the vmap over a batch, a size-1 draw axis makes
    XLA's CPU layout assignment transpose the decoder's gradients through (B, 1, D) copies
    (measured: BENCHMARKS.md, "Measurements behind the code").
    """
    if z.shape[0] == 1:
        return f(z[0])[None]
    return jax.vmap(f)(z)


def make_elbo(model: LatentVariableModel, family: VariationalFamily, *, num_samples: int = 1,
              kl: str = "analytic", estimator: str = "reparam"
              ) -> Callable[[Array, Params, Params, Array], ElboTerms]:
    """L(x; q) = E_q[log p(x|z)] - KL(q || p(z)), estimated with `num_samples` draws.

    kl="analytic": closed-form KL (the KL form); kl="mc": (1/M) sum_m [log q(z_m) - log p(z_m)],
    which makes the estimate the entropy form E_q[log p(x|z) + log p(z) - log q(z)] and works
    for any family.

    estimator: a name in vi_jax.estimators.ESTIMATORS, which says how the returned value's
    gradient w.r.t. q's parameters lambda estimates grad_lambda L. Each expectation E_q f above
    (f = log p(x|z), and log p(z) - log q(z) for kl="mc") is the estimator's estimate of f at its
    draws; every registered estimator is unbiased and leaves the value, the ELBO estimate, unchanged.
    """
    check_count("num_samples", num_samples)
    if kl not in KL_FORMS:
        raise ValueError(f"unknown kl form {kl!r}; known: {KL_FORMS}")
    if kl == "analytic" and family.kl_to_prior is None:
        raise ValueError(f"family {family.name!r} has no closed-form KL; use kl='mc'")
    grad_estimator = get_estimator(estimator)
    if kl not in grad_estimator.kl_forms:
        raise ValueError(f"estimator {estimator!r} {grad_estimator.why}; use kl in {grad_estimator.kl_forms}")
    if num_samples < grad_estimator.min_samples:
        raise ValueError(f"estimator {estimator!r} needs num_samples >= {grad_estimator.min_samples} "
                         f"({grad_estimator.why}), got {num_samples}")
    prior = model.prior()

    def elbo(key: Array, theta: Params, q_params: Params, x: Array) -> ElboTerms:
        check_datapoint(model, x, "the ELBO of make_elbo")
        q = family.distribution(q_params)
        draws = grad_estimator.draw(family, q, q_params, jax.random.split(key, num_samples))

        def estimate(f: Array) -> Array:
            return grad_estimator.estimate(f, draws)

        log_lik = map_draws(lambda z_m: model.likelihood(theta, z_m).log_prob(x), draws.z)
        reconstruction = estimate(log_lik)
        if kl == "analytic":
            kl_value = family.kl_to_prior(q_params)
            entropy = q.entropy()
        else:
            kl_value = -estimate(jax.vmap(prior.log_prob)(draws.z) - draws.log_q)
            entropy = -estimate(draws.log_q)
        return ElboTerms(reconstruction - kl_value, reconstruction, kl_value, entropy)

    return elbo


# Draws vmapped per step when many-draw ELBOs are evaluated over rows (map_datapoints). As for
# the IWAE's chunk below, the decoder's outputs for rows x draws are written and read back by the
# log-density, so a step should fit in cache
# (measured: BENCHMARKS.md, "Measurements behind the code").
ELBO_DRAWS_PER_STEP = 500


def elbo_rows_per_step(num_samples: int, max_rows: int) -> int:
    """Rows per map_datapoints step for an ELBO of num_samples draws: at most max_rows, at most
    ELBO_DRAWS_PER_STEP draws in all, at least one row."""
    return max(1, min(max_rows, ELBO_DRAWS_PER_STEP // num_samples))


# Draws per scan step of make_iwae. The decoder's outputs for rows x chunk draws are written and
# read back by the log-density, so at the evaluation's 100 rows they should fit in cache
# (measured: BENCHMARKS.md, "Measurements behind the code").
IWAE_CHUNK_SIZE = 10


def make_iwae(model: LatentVariableModel, family: VariationalFamily, *, num_samples: int,
              chunk_size: int = IWAE_CHUNK_SIZE) -> Callable[[Array, Params, Params, Array], IwaeTerms]:
    """L_K(x; q) = E[log (1/K) sum_k p(x, z_k) / q(z_k)], z_k ~ q independently.

    The K log-weights are drawn `chunk_size` at a time inside a `lax.scan` that carries running
    logsumexps of log w and 2 log w, so memory is O(chunk_size), not O(K). Draw k uses key
    fold_in(key, k), so the result does not depend on chunk_size (up to float rounding).
    L_1 is the ELBO; L_K increases with K towards log p(x).
    """
    check_count("num_samples", num_samples)
    check_count("chunk_size", chunk_size)
    chunk_size = min(chunk_size, num_samples)
    num_chunks = math.ceil(num_samples / chunk_size)
    log_k = math.log(num_samples)

    def iwae(key: Array, theta: Params, q_params: Params, x: Array) -> IwaeTerms:
        check_datapoint(model, x, "the IWAE bound of make_iwae")
        q = family.distribution(q_params)

        def log_weight(k: Array) -> Array:
            z, log_q = sample_and_log_prob(q, k)
            return model.log_joint(theta, x, z) - log_q

        def add_chunk(carry, chunk):
            lse_w, lse_w2 = carry
            sample_ids = chunk * chunk_size + jnp.arange(chunk_size)
            log_w = jax.vmap(lambda k: log_weight(jax.random.fold_in(key, k)))(sample_ids)
            in_range = sample_ids < num_samples
            log_w = jnp.where(in_range, log_w, -jnp.inf)
            return (jnp.logaddexp(lse_w, jax.nn.logsumexp(log_w)),
                    jnp.logaddexp(lse_w2, jax.nn.logsumexp(2.0 * log_w))), None

        init = (jnp.array(-jnp.inf), jnp.array(-jnp.inf))
        (lse_w, lse_w2), _ = jax.lax.scan(add_chunk, init, jnp.arange(num_chunks))
        return IwaeTerms(lse_w - log_k, log_mean_weight_stderr(lse_w, lse_w2, num_samples))

    return iwae


def log_mean_weight_stderr(lse_w: Array, lse_w2: Array, num_weights: int) -> Array:
    """Delta-method standard error of log (1/K) sum_k w_k: sqrt(s^2 / K) / mean(w), s^2 the
    sample variance of the K weights, from lse_w = logsumexp(log w) and lse_w2 =
    logsumexp(2 log w); inf for K = 1. Uses mean(w^2) / mean(w)^2 - 1 = exp(lse_w2 + log K -
    2 lse_w) - 1, so s^2 / mean(w)^2 = that * K / (K - 1)."""
    if num_weights == 1:
        return jnp.array(jnp.inf)
    relative_var = jnp.maximum(jnp.expm1(lse_w2 + math.log(num_weights) - 2.0 * lse_w), 0.0)
    return jnp.sqrt(relative_var / (num_weights - 1))


def map_datapoints(fn: Callable, key: Array, theta: Params, q_params: Params, data: Array,
                   batch_size: Optional[int] = None):
    """Apply a per-datapoint estimator fn(key, theta, q_params_i, x_i) to every row of `data`.

    q_params has a leading N axis (a local table, or an encoder's outputs). Datapoint i gets
    key fold_in(key, i), so its draws do not depend on N or on the batching. `batch_size` rows
    are vmapped at a time (bounding memory); None vmaps all rows at once.
    """
    indices = jnp.arange(data.shape[0])

    def one(args):
        i, q_i, x_i = args
        return fn(jax.random.fold_in(key, i), theta, q_i, x_i)

    if batch_size is None:
        return jax.vmap(one)((indices, q_params, data))
    return jax.lax.map(one, (indices, q_params, data), batch_size=batch_size)


def make_iwae_objective(model: LatentVariableModel, family: VariationalFamily, *,
                        num_samples: int) -> Callable[[Array, Params, Params, Array], tuple[Array, ElboTerms]]:
    """The K-sample IWAE bound as a training objective (Burda et al. 2015), for one datapoint:

        L_K = log (1/K) sum_k w_k,  w_k = p(x, z_k) / q(z_k),  z_k ~ q reparameterized,

    all K draws at once (differentiable; K is small in training, unlike make_iwae's evaluation
    K). Returns (L_K, ElboTerms of the same draws): the ELBO's entropy-form estimate
    (1/K) sum_k log w_k with its parts, for monitoring. K = 1 is the ELBO with kl="mc".
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if family.components is not None:
        raise ValueError(f"the IWAE objective draws from q itself, which gives the mixture weights of family "
                         f"{family.name!r} no gradient; train it with the (stratified) ELBO")
    prior = model.prior()

    def objective(key: Array, theta: Params, q_params: Params, x: Array) -> tuple[Array, ElboTerms]:
        q = family.distribution(q_params)
        z, log_q = jax.vmap(lambda k: sample_and_log_prob(q, k))(jax.random.split(key, num_samples))
        log_lik = map_draws(lambda z_k: model.likelihood(theta, z_k).log_prob(x), z)
        log_ratio = log_q - jax.vmap(prior.log_prob)(z)
        bound = jax.nn.logsumexp(log_lik - log_ratio) - math.log(num_samples)
        reconstruction, kl_value = jnp.mean(log_lik), jnp.mean(log_ratio)
        return bound, ElboTerms(reconstruction - kl_value, reconstruction, kl_value)

    return objective
