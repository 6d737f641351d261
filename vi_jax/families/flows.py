"""What every flow family shares: q = (T_L o ... o T_1)_# N(mu, diag sigma^2).

q(z) is the push-forward of the base q_0 = N(mu, diag sigma^2) through z = T(u) =
T_L(...T_1(u)). By the change of variables,

    log q(z) = log q_0(T^{-1}(z)) - sum_l log|det dT_l/du_l|,

with u_l the input of layer l on the path from u = T^{-1}(z).

All parameters, the conditioners' MLP weights included, live in one per-datapoint pytree
{"base": {"mean", "log_scale"}, "flow": [layer 1, ..., layer L]}, so the family serves both a
local table (leading N axis) and an amortized encoder (a flat vector read by `unflatten`).
`flow_family` builds such a family from any list of layer bijectors; the conditioner helpers
below (the 1/H output scaling, the soft-clipped log-scales, the fixed hidden weights of the
identity init) are shared by the coupling flow (coupling.py) and the IAF (iaf.py).
"""
from __future__ import annotations

from typing import Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vi_jax.array_types import Array, Params
from vi_jax.families.gaussian import diagonal_gaussian
from vi_jax.families.interface import VariationalFamily

# Bound on each layer's log-scale: s = MAX_LOG_SCALE * tanh(raw / MAX_LOG_SCALE).
MAX_LOG_SCALE = 2.0


def soft_clip(raw: Array) -> Array:
    """s = c tanh(raw / c), c = MAX_LOG_SCALE: slope 1 at raw = 0, so the identity init and its
    gradients are those of an unbounded log-scale, but a layer scales a dimension by at most
    e^{+-c} and L layers by at most e^{+-cL}; the flow cannot blow up or collapse whatever
    the raw conditioner output (the base's own sigma stays unbounded)."""
    return MAX_LOG_SCALE * jnp.tanh(raw / MAX_LOG_SCALE)


def affine_head(h: Array, w_out: Array, b_out: Array) -> tuple[Array, Array]:
    """Hidden units h [H] -> (t, s): (t, raw) = h W_o / H + b_o, s = soft_clip(raw).

    The 1/H (H = hidden units) output multiplier keeps the flow's step size that of the base:
    Adam moves every weight by ~lr per step, so without it one step could move each t and s by
    ~H lr, against ~lr for the base's mean. (On the tests' tiny model, local fits with Adam at
    lr 1e-3 / 1e-2 then end 0.01-0.02 / 0.1-0.17 nats below the Gaussian fit; with it, 0-0.007
    / 0.03-0.04.) And O(1) weights from an encoder give t, s = O(1/sqrt(H)), not O(sqrt(H))."""
    shift, raw_log_scale = jnp.split(h @ w_out / h.shape[-1] + b_out, 2)
    return shift, soft_clip(raw_log_scale)


def fixed_normal(layer: int, shape: tuple[int, ...]) -> Array:
    """Fixed N(0, 1) draws for layer `layer`'s initial hidden weights: jax.random.PRNGKey(0)
    folded with the layer index, the same for every datapoint and every call."""
    return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), layer), shape)


def flow_family(name: str, label: str, latent_dim: int, identity_flow: Callable[[], list[Params]],
                bijectors: Callable[[list[Params]], list[distrax.Bijector]]) -> VariationalFamily:
    """The family q = (T_L o ... o T_1)_# N(mu, diag sigma^2) with params {"base", "flow"}.

    identity_flow(): layer params [1..L] making every T_l the identity; bijectors(flow): the
    layers' distrax bijectors [T_1, ..., T_L]. init() = base N(0, I) with the identity flow
    (q = p(z) exactly); from_gaussian(g) = base g with the identity flow. No closed-form KL.
    """
    gaussian = diagonal_gaussian(latent_dim)

    def from_gaussian(gaussian_params: Params) -> Params:
        return {"base": gaussian_params, "flow": identity_flow()}

    def init() -> Params:
        return from_gaussian(gaussian.init())

    def distribution(params: Params) -> distrax.Distribution:
        # Chain([f_L, ..., f_1]) applies f_1 first.
        return distrax.Transformed(gaussian.distribution(params["base"]),
                                   distrax.Chain(bijectors(params["flow"])[::-1]))

    # unflatten needs only shapes: ravel zeros of init's shapes rather than running init eagerly.
    flat, unflatten = ravel_pytree(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(init)))
    return VariationalFamily(
        name=name,
        label=label,
        latent_dim=latent_dim,
        num_params=flat.size,
        unflatten=unflatten,
        init=init,
        distribution=distribution,
        kl_to_prior=None,
        from_gaussian=from_gaussian,
    )
