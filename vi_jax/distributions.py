"""Distributions: the standard-normal prior, observation models p(x|z), a sampling helper.

Densities and sampling come from distrax; this module only adds what it lacks.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import distrax
import jax
import jax.numpy as jnp

Array = jax.Array


def standard_normal(latent_dim: int) -> distrax.Distribution:
    """p(z) = N(0, I_d)."""
    return distrax.MultivariateNormalDiag(jnp.zeros(latent_dim), jnp.ones(latent_dim))


def sample_and_log_prob(dist: distrax.Distribution, key: Array) -> tuple[Array, Array]:
    """One draw z ~ dist (reparameterized where dist is) and log dist(z).

    distrax broadcasts a leading sample axis internally; that is rank promotion, which the
    test suite turns into an error to catch our own silent broadcasting, so it is allowed here.
    Vmap this over keys for several draws.
    """
    with jax.numpy_rank_promotion("allow"):
        return dist.sample_and_log_prob(seed=key)


@jax.custom_jvp
def softplus(x: Array) -> Array:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), and its derivative sigmoid(x) from the same e^-|x|.

    jax.nn.softplus (logaddexp(x, 0)) selects around NaN inputs, which NaN propagates through
    here anyway, and its derivative takes a second exp; this one is faster both ways
    (measured: BENCHMARKS.md, "Measurements behind the code")."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    sigmoid = jnp.where(x >= 0, 1.0, e) / (1.0 + e)
    return jnp.maximum(x, 0) + jnp.log1p(e), sigmoid * dx


class Likelihood(NamedTuple):
    """An observation model p(x|z): maps a decoder output vector to a distribution over x.

    num_outputs(data_dim): decoder output size; distribution(out): the distrax distribution of
    x (event shape [data_dim]); mean(out): E[x|z], used for reconstructions and sample pictures.
    """

    name: str
    num_outputs: Callable[[int], int]
    distribution: Callable[[Array], distrax.Distribution]
    mean: Callable[[Array], Array]


class _BernoulliLogits(distrax.Bernoulli):
    """distrax's Bernoulli with a cheaper log-density: log p(x) = x l - softplus(l).

    distrax evaluates (1 - x) log sigmoid(-l) + x log sigmoid(l): two softplus and two
    multiply_no_nan per pixel. Both are equal for every x in [0, 1] (softplus(l) - softplus(-l)
    = l), and this one costs one softplus per pixel instead of two
    (measured: BENCHMARKS.md, "Measurements behind the code")."""

    def log_prob(self, value: Array) -> Array:
        return value * self.logits - softplus(self.logits)


def _bernoulli(logits: Array) -> distrax.Distribution:
    """p(x|z) = prod_j Bernoulli(x_j; sigmoid(logit_j)); log p is minus binary cross-entropy."""
    return distrax.Independent(_BernoulliLogits(logits=logits), 1)


BERNOULLI = Likelihood(
    name="bernoulli",
    num_outputs=lambda data_dim: data_dim,
    distribution=_bernoulli,
    mean=jax.nn.sigmoid,
)

# Lower bound on the Gaussian decoder's standard deviation. Pixels that are constant in the data
# (digit borders) would otherwise drive sigma -> 0 and log p(x|z) -> +inf.
GAUSSIAN_MIN_SCALE = 1e-2


def _gaussian_split(out: Array) -> tuple[Array, Array]:
    mean, raw_scale = jnp.split(out, 2)
    return mean, GAUSSIAN_MIN_SCALE + softplus(raw_scale)


def _gaussian(out: Array) -> distrax.Distribution:
    """p(x|z) = N(x; m(z), diag s(z)^2), s = GAUSSIAN_MIN_SCALE + softplus(raw)."""
    return distrax.MultivariateNormalDiag(*_gaussian_split(out))


GAUSSIAN = Likelihood(
    name="gaussian",
    num_outputs=lambda data_dim: 2 * data_dim,
    distribution=_gaussian,
    mean=lambda out: _gaussian_split(out)[0],
)

LIKELIHOODS = {lik.name: lik for lik in (BERNOULLI, GAUSSIAN)}


def get_likelihood(name: str) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; known: {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]
