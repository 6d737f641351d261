"""Gaussian families: the diagonal (fully factorised) and the full-covariance Gaussian, both
with a closed-form KL to the prior."""
from __future__ import annotations

import distrax
import jax.numpy as jnp
import numpy as np

from vi_jax.array_types import Array, Params
from vi_jax.distributions import standard_normal
from vi_jax.families.interface import VariationalFamily


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
        label="ffg",  # fully factorised Gaussian, as in Cremer et al. 2018
        latent_dim=latent_dim,
        num_params=2 * latent_dim,
        unflatten=unflatten,
        init=lambda: {"mean": jnp.zeros(latent_dim), "log_scale": jnp.zeros(latent_dim)},
        distribution=distribution,
        kl_to_prior=kl_to_prior,
        from_gaussian=lambda params: params,
    )


def full_covariance_gaussian(latent_dim: int) -> VariationalFamily:
    """Full-covariance Gaussian q(z) = N(mu, L L^T), L lower triangular with a positive diagonal.

    params {"mean" [d], "log_diag" [d], "off_diag" [d(d-1)/2]}: L_jj = exp(log_diag_j) and the
    strictly-lower entries in row-major order (np.tril_indices(d, -1): L_10, L_20, L_21, ...).
    Why this Cholesky parameterisation: every real vector is a valid member (unconstrained for
    an optimiser or an encoder) and every covariance has exactly one such L (no redundant
    directions); log det Sigma = 2 sum_j log_diag_j is linear in the parameters, as the diagonal
    family's entropy is in its log sigma; and off_diag = 0 is that diagonal family exactly
    (log_diag = log_scale), so from_gaussian and init are exact.

    KL(N(mu, Sigma) || N(0, I)) = 1/2 (tr Sigma + mu^T mu - d - log det Sigma),
    with tr Sigma = sum_ij L_ij^2 (squared Frobenius norm of L).
    """
    rows, cols = np.tril_indices(latent_dim, -1)
    num_off_diag = rows.size

    def scale_tri(params: Params) -> Array:
        diag = jnp.diag(jnp.exp(params["log_diag"]))
        return diag.at[rows, cols].set(params["off_diag"])

    def unflatten(flat: Array) -> Params:
        mean, log_diag, off_diag = jnp.split(flat, [latent_dim, 2 * latent_dim])
        return {"mean": mean, "log_diag": log_diag, "off_diag": off_diag}

    def distribution(params: Params) -> distrax.Distribution:
        return distrax.MultivariateNormalTri(params["mean"], scale_tri(params))

    def kl_to_prior(params: Params) -> Array:
        trace = jnp.sum(jnp.exp(2.0 * params["log_diag"])) + jnp.sum(jnp.square(params["off_diag"]))
        log_det = 2.0 * jnp.sum(params["log_diag"])
        return 0.5 * (trace + jnp.sum(jnp.square(params["mean"])) - latent_dim - log_det)

    def from_gaussian(gaussian_params: Params) -> Params:
        return {"mean": gaussian_params["mean"], "log_diag": gaussian_params["log_scale"],
                "off_diag": jnp.zeros(num_off_diag, gaussian_params["mean"].dtype)}

    return VariationalFamily(
        name="full_gaussian",
        label="full_cov",
        latent_dim=latent_dim,
        num_params=2 * latent_dim + num_off_diag,
        unflatten=unflatten,
        init=lambda: from_gaussian({"mean": jnp.zeros(latent_dim), "log_scale": jnp.zeros(latent_dim)}),
        distribution=distribution,
        kl_to_prior=kl_to_prior,
        from_gaussian=from_gaussian,
    )
