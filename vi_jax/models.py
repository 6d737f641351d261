"""Latent-variable models p(x, z; theta) = p(x | z; theta) p(z) with p(z) = N(0, I).

Every model (a neural decoder, or a closed-form oracle) exposes the same pure functions, so
every estimator and optimiser in the library runs on any of them.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import distrax
import flax.linen as nn
import jax.numpy as jnp

from vi_jax.array_types import Array, Params
from vi_jax.distributions import Likelihood, standard_normal


class LatentVariableModel(NamedTuple):
    """p(x, z; theta) for x in R^data_dim, z in R^latent_dim.

    init(key) -> theta (fresh arrays: training loops donate their state, so an init that returns
    stored arrays would see them deleted); likelihood(theta, z) -> p(x | z; theta) as a distrax distribution;
    mean(theta, z) -> E[x | z; theta] (for reconstructions and sample pictures).
    """

    latent_dim: int
    data_dim: int
    init: Callable[[Array], Params]
    likelihood: Callable[[Params, Array], distrax.Distribution]
    mean: Callable[[Params, Array], Array]

    def prior(self) -> distrax.Distribution:
        return standard_normal(self.latent_dim)

    def log_joint(self, theta: Params, x: Array, z: Array) -> Array:
        """log p(x, z; theta) = log p(x | z; theta) + log p(z), for one x and one z."""
        return self.likelihood(theta, z).log_prob(x) + self.prior().log_prob(z)


def decoder_model(decoder: nn.Module, likelihood: Likelihood, latent_dim: int,
                  data_dim: int) -> LatentVariableModel:
    """The VAE's generative model: p(x|z; theta) = likelihood(decoder_theta(z))."""

    def init(key: Array) -> Params:
        return decoder.init(key, jnp.zeros(latent_dim))

    return LatentVariableModel(
        latent_dim=latent_dim,
        data_dim=data_dim,
        init=init,
        likelihood=lambda theta, z: likelihood.distribution(decoder.apply(theta, z)),
        mean=lambda theta, z: likelihood.mean(decoder.apply(theta, z)),
    )
