"""Mixture of diagonal Gaussians: no closed-form KL, a stratified ELBO over its components."""
from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

from vi_jax.array_types import Array, Params
from vi_jax.families.interface import VariationalFamily

# Component means start at mean + MIXTURE_OFFSET * sigma * delta_k (see mixture_gaussian).
MIXTURE_OFFSET = 0.1


def mixture_gaussian(latent_dim: int, num_components: int = 4) -> VariationalFamily:
    """Mixture of K diagonal Gaussians q(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), pi = softmax(logits).

    params {"logits" [K], "mean" [K, d], "log_scale" [K, d]}. No closed-form KL to the prior
    (kl_to_prior is None): the ELBO is the Monte-Carlo entropy form, estimated by stratification
    over the components (`components`; vi_jax.elbo.make_elbo), because a draw of the mixture
    (distrax.MixtureSameFamily) passes no gradient to the weights.

    Symmetry: with identical components and equal weights the ELBO is invariant under
    permuting the components, so its exact gradient is the same for all of them and gradient
    ascent would keep them identical forever (only Monte-Carlo noise would split them). So
    init() and from_gaussian(g) put component k at mean mu + MIXTURE_OFFSET * sigma * delta_k,
    with fixed delta_k ~ N(0, I) drawn from jax.random.PRNGKey(0) and centred over k (the
    mixture's mean stays mu; K = 1 is the diagonal Gaussian), with sigma_k = sigma and equal
    weights: distinct components, yet q is within about (d / 2) MIXTURE_OFFSET^2 nats of g.
    init() uses g = N(0, I), the prior.
    """
    if latent_dim < 1 or num_components < 1:
        raise ValueError(f"latent_dim and num_components must be >= 1, got {latent_dim}, {num_components}")
    k, d = num_components, latent_dim

    def unflatten(flat: Array) -> Params:
        logits, mean, log_scale = jnp.split(flat, [k, k + k * d])
        return {"logits": logits, "mean": mean.reshape(k, d), "log_scale": log_scale.reshape(k, d)}

    def components(params: Params) -> tuple[Array, distrax.Distribution]:
        return (jax.nn.log_softmax(params["logits"]),
                distrax.MultivariateNormalDiag(params["mean"], jnp.exp(params["log_scale"])))

    def distribution(params: Params) -> distrax.Distribution:
        return distrax.MixtureSameFamily(distrax.Categorical(logits=params["logits"]), components(params)[1])

    def from_gaussian(gaussian_params: Params) -> Params:
        delta = jax.random.normal(jax.random.PRNGKey(0), (k, d))
        delta = delta - jnp.mean(delta, axis=0, keepdims=True)
        mean, log_scale = gaussian_params["mean"], gaussian_params["log_scale"]
        return {"logits": jnp.zeros(k),
                "mean": mean[None, :] + MIXTURE_OFFSET * jnp.exp(log_scale)[None, :] * delta,
                "log_scale": jnp.broadcast_to(log_scale, (k, d))}

    return VariationalFamily(
        name="mixture",
        label="mixture",
        latent_dim=latent_dim,
        num_params=k * (1 + 2 * d),
        unflatten=unflatten,
        init=lambda: from_gaussian({"mean": jnp.zeros(d), "log_scale": jnp.zeros(d)}),
        distribution=distribution,
        kl_to_prior=None,
        from_gaussian=from_gaussian,
        components=components,
    )
