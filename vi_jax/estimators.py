"""Gradient estimators of Monte-Carlo expectations E_q f, one value each, selected by name from ESTIMATORS.

The ELBO's terms are expectations under q(z; lambda): E_q log p(x|z), and for the entropy form
E_q [log p(z) - log q(z)]. An estimator says how M draws turn f into a scalar whose value is
the Monte-Carlo estimate of E_q f and whose gradient in lambda is the estimator's:

    draws = estimator.draw(family, q, q_params, keys)   # z_m, log q(z_m), stratification weights
    value = estimator.estimate(f(draws.z), draws)

A new estimator is a draw, an estimate and one entry in ESTIMATORS; vi_jax.elbo.make_elbo, and
through it the training algorithms and local fits, select it by name.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import distrax
import jax
import jax.numpy as jnp

from vi_jax.distributions import sample_and_log_prob
from vi_jax.families import VariationalFamily

Array = jax.Array
Params = Any


class Draws(NamedTuple):
    """Where an estimate evaluates f.

    z: [M, d] draws, or for a stratified estimate [M K, d] with row m K + k draw m of component k.
    log_q: log q(z) at every row, carrying the gradient in lambda the estimator wants.
    weights: the mixture weights pi [K] of a stratified estimate, else None.
    """

    z: Array
    log_q: Array
    weights: Optional[Array] = None


class GradientEstimator(NamedTuple):
    """One way to estimate grad_lambda E_q f.

    draw(family, q, q_params, keys) -> Draws: one draw per key (per key and component when
      stratified); q = family.distribution(q_params), built once by the caller.
    estimate(f, draws) -> scalar: value the estimate of E_q f, gradient the estimator's.
    kl_forms: the ELBO forms (vi_jax.elbo.KL_FORMS) whose gradient it estimates.
    min_samples: the fewest draws it works with.
    why: the reason for those two limits, quoted in the errors that enforce them.
    """

    name: str
    draw: Callable[[VariationalFamily, distrax.Distribution, Params, Array], Draws]
    estimate: Callable[[Array, Draws], Array]
    kl_forms: tuple[str, ...] = ("analytic", "mc")
    min_samples: int = 1
    why: str = ""


def _sample(q: distrax.Distribution, keys: Array) -> tuple[Array, Array]:
    """(z [M, d], log q(z) [M]): one draw per key, reparameterized (every family's q is)."""
    return jax.vmap(lambda k: sample_and_log_prob(q, k))(keys)


def _component_draws(family: VariationalFamily, q_params: Params, keys: Array) -> tuple[Array, Array]:
    """(z [M K, d], pi [K]): one reparameterized draw from every component q_k per key, for a
    mixture family q = sum_k pi_k q_k; row m K + k is draw m of component k."""
    log_pi, components = family.components(q_params)
    z = jax.vmap(lambda k: sample_and_log_prob(components, k)[0])(keys).reshape(-1, family.latent_dim)
    return z, jnp.exp(log_pi)


def pathwise_draws(family: VariationalFamily, q: distrax.Distribution, q_params: Params, keys: Array) -> Draws:
    """z_m = reparameterized draws (z = mu + sigma eps), gradients flow through them.

    A mixture family is stratified over its K components, because a draw of the mixture gives
    its weights no gradient:
        E_q f = sum_k pi_k E_{q_k} f  ~  sum_k pi_k (1/M) sum_m f(z_km),  z_km ~ q_k,
    M draws from each component (K M likelihood evaluations), with log q the full mixture
    density; the weights pi_k carry the gradient to the logits."""
    if family.components is None:
        return Draws(*_sample(q, keys))
    z, pi = _component_draws(family, q_params, keys)
    return Draws(z, jax.vmap(q.log_prob)(z), pi)


def sticking_the_landing_draws(family: VariationalFamily, q: distrax.Distribution, q_params: Params,
                               keys: Array) -> Draws:
    """pathwise_draws' points, with log q(z_m) evaluated at stop_gradient(lambda) (Roeder et al. 2017).

    That drops the score term E_q[grad_lambda log q(z)] = 0 from the entropy form's gradient and
    leaves the path derivative of log p(x, z) - log q(z): zero, with zero variance, where q is the
    exact posterior. Stratified, it stays unbiased: sum_k pi_k E_{q_k}[grad log q] = E_q[grad log q] = 0."""
    if family.components is None:
        z, pi = _sample(q, keys)[0], None
    else:
        z, pi = _component_draws(family, q_params, keys)
    q_fixed = family.distribution(jax.lax.stop_gradient(q_params))
    return Draws(z, jax.vmap(q_fixed.log_prob)(z), pi)


def score_function_draws(family: VariationalFamily, q: distrax.Distribution, q_params: Params,
                         keys: Array) -> Draws:
    """Draws of q itself (a mixture too) that carry no gradient, so q need not be
    reparameterizable; log q(z_m) carries it."""
    z = jax.lax.stop_gradient(_sample(q, keys)[0])
    return Draws(z, jax.vmap(q.log_prob)(z))


def weighted_mean(f: Array, draws: Draws) -> Array:
    """(1/M) sum_m f(z_m), or stratified (1/M) sum_m sum_k pi_k f(z_mk): its gradient is the
    pathwise one wherever the draws carry gradients."""
    if draws.weights is None:
        return jnp.mean(f)
    return jnp.mean(f.reshape(-1, draws.weights.shape[0]) @ draws.weights)


def score_function_surrogate(f: Array, log_q: Array) -> Array:
    """A scalar whose value is mean_m f_m and whose gradient is the score-function estimate

        (1/M) sum_m [ (f_m - b_m) grad log q(z_m) + grad f_m ],   b_m = leave-one-out mean of f,

    for f [M] = f(z_m) and log_q [M] = log q(z_m) at draws z_m that carry no gradient
    (stop_gradient the samples before computing f and log_q). M must be >= 2.

    REINFORCE (Williams 1992): grad_lambda E_{q_lambda}[f(z; lambda)] = E_q[f(z) grad log q_lambda(z)]
    + E_q[grad f(z; lambda)], for latents that need no reparameterization (discrete z too). The
    baseline b_m is independent of z_m, so subtracting it keeps the estimator unbiased while
    removing most of its variance (Kool et al. 2019).
    """
    num_samples = f.shape[0]
    if num_samples < 2:
        raise ValueError(f"the leave-one-out baseline needs >= 2 samples, got {num_samples}")
    f_const = jax.lax.stop_gradient(f)
    baseline = (jnp.sum(f_const) - f_const) / (num_samples - 1)
    score = log_q - jax.lax.stop_gradient(log_q)  # value 0, gradient grad log q
    return jnp.mean(f + (f_const - baseline) * score)


REPARAM = GradientEstimator("reparam", pathwise_draws, weighted_mean)
STICKING_THE_LANDING = GradientEstimator(
    "stl", sticking_the_landing_draws, weighted_mean, kl_forms=("mc",),
    why="drops the score term of log q from the entropy form")
SCORE_FUNCTION = GradientEstimator(
    "score_function", score_function_draws, lambda f, draws: score_function_surrogate(f, draws.log_q),
    min_samples=2, why="the leave-one-out baseline")

ESTIMATORS: dict[str, GradientEstimator] = {e.name: e for e in (REPARAM, STICKING_THE_LANDING, SCORE_FUNCTION)}


def get_estimator(name: str) -> GradientEstimator:
    """The registered estimator called `name`; ValueError listing the registry otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown gradient estimator {name!r}; known: {tuple(ESTIMATORS)}")
    return ESTIMATORS[name]
