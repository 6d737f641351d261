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
import numpy as np

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
    components(params): for a mixture q = sum_k pi_k q_k only, (log pi [K], the K components
      q_k as one distribution with batch shape [K]); None otherwise. Sampling a mixture gives
      no pathwise gradient to pi, so the ELBO then uses the stratified estimator
      E_q f = sum_k pi_k E_{q_k} f with reparameterized draws from every q_k (vi_jax.elbo).
    """

    name: str
    latent_dim: int
    num_params: int
    unflatten: Callable[[Array], Params]
    init: Callable[[], Params]
    distribution: Callable[[Params], distrax.Distribution]
    kl_to_prior: Optional[Callable[[Params], Array]]
    from_gaussian: Callable[[Params], Params]
    components: Optional[Callable[[Params], tuple[Array, distrax.Distribution]]] = None

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
        latent_dim=latent_dim,
        num_params=2 * latent_dim + num_off_diag,
        unflatten=unflatten,
        init=lambda: from_gaussian({"mean": jnp.zeros(latent_dim), "log_scale": jnp.zeros(latent_dim)}),
        distribution=distribution,
        kl_to_prior=kl_to_prior,
        from_gaussian=from_gaussian,
    )


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
        latent_dim=latent_dim,
        num_params=k * (1 + 2 * d),
        unflatten=unflatten,
        init=lambda: from_gaussian({"mean": jnp.zeros(d), "log_scale": jnp.zeros(d)}),
        distribution=distribution,
        kl_to_prior=None,
        from_gaussian=from_gaussian,
        components=components,
    )


FAMILY_NAMES = ("gaussian", "full_gaussian", "flow", "iaf", "mixture")


def get_family(name: str, latent_dim: int) -> VariationalFamily:
    """A family by name, with its default settings ("flow": vi_jax.flows.coupling_flow,
    "iaf": vi_jax.autoregressive.inverse_autoregressive_flow, "mixture": 4 components)."""
    from vi_jax.autoregressive import inverse_autoregressive_flow  # these build on this module
    from vi_jax.flows import coupling_flow

    families = {"gaussian": diagonal_gaussian, "full_gaussian": full_covariance_gaussian, "flow": coupling_flow,
                "iaf": inverse_autoregressive_flow, "mixture": mixture_gaussian}
    if name not in families:
        raise ValueError(f"unknown variational family {name!r}; known: {list(FAMILY_NAMES)}")
    return families[name](latent_dim)
