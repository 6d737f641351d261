"""Variational families q(z; lambda), and the registry that names them.

    interface.py  VariationalFamily: the NamedTuple of pure functions every family is
    gaussian.py   the diagonal ("gaussian", label "ffg") and full-covariance Gaussian
    mixture.py    mixture of diagonal Gaussians
    flows.py      what flow families share: the Gaussian base, flow_family, conditioner helpers
    coupling.py   affine coupling flow ("flow")
    iaf.py        inverse autoregressive flow with MADE conditioners ("iaf")

Adding a family is one new module with a builder `build(latent_dim, **options) -> VariationalFamily`
and one entry in FAMILIES; tests/test_families.py then checks it against the contract.
"""
from __future__ import annotations

import inspect
from typing import Callable

from vi_jax.array_types import Array, Params
from vi_jax.families.coupling import coupling_flow
from vi_jax.families.gaussian import diagonal_gaussian, full_covariance_gaussian
from vi_jax.families.iaf import inverse_autoregressive_flow
from vi_jax.families.interface import VariationalFamily
from vi_jax.families.mixture import MIXTURE_OFFSET, mixture_gaussian

__all__ = ["Array", "FAMILIES", "MIXTURE_OFFSET", "Params", "VariationalFamily", "coupling_flow",
           "diagonal_gaussian", "family_options", "full_covariance_gaussian", "get_family",
           "inverse_autoregressive_flow", "mixture_gaussian"]

# name -> builder(latent_dim, **options). The builder's keyword parameters are the options the
# family accepts, with their defaults; the family it builds carries the same name.
FAMILIES: dict[str, Callable[..., VariationalFamily]] = {
    "gaussian": diagonal_gaussian,
    "full_gaussian": full_covariance_gaussian,
    "flow": coupling_flow,
    "iaf": inverse_autoregressive_flow,
    "mixture": mixture_gaussian,
}


def _builder(name: str) -> Callable[..., VariationalFamily]:
    if name not in FAMILIES:
        raise ValueError(f"unknown variational family {name!r}; known: {list(FAMILIES)}")
    return FAMILIES[name]


def family_options(name: str) -> tuple[str, ...]:
    """The options family `name` accepts: its builder's parameters after latent_dim."""
    return tuple(inspect.signature(_builder(name)).parameters)[1:]


def get_family(name: str, latent_dim: int, **options) -> VariationalFamily:
    """The registered family `name` over R^latent_dim, with its default settings except the
    given options, e.g. get_family("flow", 8, num_layers=2, hidden=32)."""
    build = _builder(name)
    unknown = sorted(set(options) - set(family_options(name)))
    if unknown:
        raise ValueError(f"variational family {name!r} has no option(s) {unknown}; "
                         f"it accepts {list(family_options(name))}")
    return build(latent_dim, **options)
