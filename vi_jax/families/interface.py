"""The contract of a variational family q(z; lambda) for one datapoint.

A family is a NamedTuple of pure functions over a parameter pytree, so the same family serves
amortized inference (an encoder outputs the flat vector that `unflatten` reads) and
per-datapoint inference (a table of parameter pytrees with a leading N axis, under jax.vmap).
Every registered family meets the contract that tests/test_families.py checks for all of them.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import distrax

from vi_jax.array_types import Array, Params


class VariationalFamily(NamedTuple):
    """q(z; params) over R^latent_dim.

    name: its name in the registry, vi_jax.families.get_family(name, latent_dim, **options).
    label: a short name for result keys, file names and figures ("ffg" for the diagonal
      Gaussian: elbo_local_ffg, q*_ffg).
    num_params: length of the flat vector an encoder outputs for one datapoint; the size of
      init()'s pytree.
    unflatten(flat): that vector -> params (any vector is a valid member).
    init(): params of the member closest to the prior p(z) = N(0, I) (start of local fits).
    distribution(params): q as a distrax distribution with event shape [latent_dim]:
      reparameterized sampling (gradients reach params through the draw) and log-density.
    kl_to_prior(params): KL(q || N(0, I)) in closed form, or None where there is none
      (then the ELBO must use the Monte-Carlo form).
    from_gaussian(params): the member equal to a diagonal Gaussian {"mean", "log_scale"}
      (how local fits start from an amortized Gaussian encoder's output), or the nearest one
      where the family does not contain it exactly (the mixture's documented offset).
    components(params): for a mixture q = sum_k pi_k q_k only, (log pi [K], the K components
      q_k as one distribution with batch shape [K]); None otherwise. Sampling a mixture gives
      no pathwise gradient to pi, so the ELBO then uses the stratified estimator
      E_q f = sum_k pi_k E_{q_k} f with reparameterized draws from every q_k (vi_jax.elbo).
    """

    name: str
    label: str
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
