"""Variational families q(z; lambda) for one datapoint.

A family is a NamedTuple of pure functions over a parameter pytree, so the same family serves
amortized inference (an encoder outputs the flat vector that `unflatten` reads) and
per-datapoint inference (a table of parameter pytrees with a leading N axis).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import distrax
import jax
import jax.numpy as jnp

from vi_jax.distributions import standard_normal

Array = jax.Array
Params = Any


class VariationalFamily(NamedTuple):
    """q(z; params) over R^latent_dim.

    num_params: length of the flat vector an encoder outputs for one datapoint.
    unflatten(flat): that vector -> params.
    init(): params of the member closest to the prior p(z) = N(0, I) (start of local fits).
    distribution(params): q as a distrax distribution (reparameterized sampling, log-density).
    kl_to_prior(params): KL(q || N(0, I)) in closed form, or None where there is none
      (then the ELBO must use the Monte-Carlo form).
    from_gaussian(params): the member equal to a diagonal Gaussian {"mean", "log_scale"}
      (how local fits start from an amortized Gaussian encoder's output).
    """

    name: str
    latent_dim: int
    num_params: int
    unflatten: Callable[[Array], Params]
    init: Callable[[], Params]
    distribution: Callable[[Params], distrax.Distribution]
    kl_to_prior: Optional[Callable[[Params], Array]]
    from_gaussian: Callable[[Params], Params]

    @property
    def kl_form(self) -> str:
        """The ELBO form this family supports best: "analytic" if it has a closed-form KL."""
        return "analytic" if self.kl_to_prior is not None else "mc"


def diagonal_gaussian(latent_dim: int) -> VariationalFamily:
    """Fully factorised Gaussian q(z) = N(mu, diag(sigma^2)), params {"mean", "log_scale"}.

    Parameterised by log sigma: unconstrained, the entropy sum_j log sigma_j + const is linear
    in it, an optimiser step changes sigma by a relative (scale-free) amount, and the optimal
    q*'s log sigma of linear-Gaussian models is available in closed form to compare with.
    """
    prior = standard_normal(latent_dim)

    def unflatten(flat: Array) -> Params:
        mean, log_scale = jnp.split(flat, 2)
        return {"mean": mean, "log_scale": log_scale}

    def distribution(params: Params) -> distrax.Distribution:
        return distrax.MultivariateNormalDiag(params["mean"], jnp.exp(params["log_scale"]))

    def kl_to_prior(params: Params) -> Array:
        """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)."""
        return distribution(params).kl_divergence(prior)

    return VariationalFamily(
        name="gaussian",
        latent_dim=latent_dim,
        num_params=2 * latent_dim,
        unflatten=unflatten,
        init=lambda: {"mean": jnp.zeros(latent_dim), "log_scale": jnp.zeros(latent_dim)},
        distribution=distribution,
        kl_to_prior=kl_to_prior,
        from_gaussian=lambda params: params,
    )


FAMILY_NAMES = ("gaussian", "flow")


def get_family(name: str, latent_dim: int) -> VariationalFamily:
    """A family by name, with its default settings ("flow": vi_jax.flows.coupling_flow)."""
    from vi_jax.flows import coupling_flow  # flows builds on this module

    families = {"gaussian": diagonal_gaussian, "flow": coupling_flow}
    if name not in families:
        raise ValueError(f"unknown variational family {name!r}; known: {list(FAMILY_NAMES)}")
    return families[name](latent_dim)
