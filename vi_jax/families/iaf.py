"""Inverse autoregressive flow (IAF; Kingma et al. 2016) with MADE conditioners (Germain et al.
2015), as a variational family.

Each layer is an autoregressive affine map of its input u (in the layer's order of dimensions),

    z_j = u_j exp(s_j(u_<j)) + t_j(u_<j),

with (t_j, s_j) computed from the u_i that precede j only. dz/du is then triangular (in that
order) with diagonal exp(s_j), so log|det dz/du| = sum_j s_j. Sampling, the direction VI needs
(log q at q's own draws comes with them: log q(z) = log q_0(u) - sum_l log|det|), is one pass
of the conditioner. The inverse is sequential: u_j = (z_j - t_j(u_<j)) exp(-s_j(u_<j)) needs
u_<j first, so density evaluation at an arbitrary z takes d passes.

The conditioner is a MADE with one tanh hidden layer: dimension i gets degree deg(i) in 1..d
(its position in the order), hidden unit k a degree m_k in 1..d-1, and the masks
    input i -> hidden k   iff deg(i) <= m_k,      hidden k -> output j   iff m_k < deg(j)
let output j see exactly the inputs with deg(i) < deg(j) (every path i -> k -> j needs
deg(i) <= m_k < deg(j)). The weight matrices hold only their unmasked entries (a masked entry
would be a parameter with zero gradient forever), placed by the masks. Layers alternate the
order 1..d and d..1, which is reversing the dimensions between layers (Kingma et al. 2016).

Like the coupling flow, it is built by vi_jax.families.flows.flow_family and shares its helpers
(the base, the parameter pytree, the 1/H output scaling and the soft-clipped log-scales): every
parameter lives in one per-datapoint pytree {"base": {"mean", "log_scale"}, "flow": [layer 1, ..., layer L]}.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.array_types import Array, Params
from vi_jax.families.flows import affine_head, fixed_normal, flow_family
from vi_jax.families.interface import VariationalFamily

Conditioner = Callable[[Array], tuple[Array, Array]]


class MadeMasks(NamedTuple):
    """The connectivity of one MADE: hidden [d, H] (input i -> unit k) and out [H, 2d]
    (unit k -> output j, for the shift heads then the log-scale heads)."""

    hidden: np.ndarray
    out: np.ndarray


def made_masks(degrees: np.ndarray, hidden: int) -> MadeMasks:
    """Masks for inputs of the given degrees [d] (a permutation of 1..d) and `hidden` units of
    degrees m_k = 1 + floor(k (d - 1) / H), spread evenly over 1..d-1 (each value used when
    H >= d - 1): hidden[i, k] = deg(i) <= m_k, out[k, j] = m_k < deg(j mod d)."""
    unit_degrees = 1 + (np.arange(hidden) * (degrees.size - 1)) // hidden
    return MadeMasks(degrees[:, None] <= unit_degrees[None, :],
                     unit_degrees[:, None] < np.tile(degrees, 2)[None, :])


def _place(free: Array, mask: np.ndarray) -> Array:
    """The masked weight matrix: zeros, with `free` at the mask's True entries (row-major)."""
    return jnp.zeros(mask.shape, free.dtype).at[np.nonzero(mask)].set(free)


def made(layer: Params, masks: MadeMasks) -> Conditioner:
    """u [..., d] -> (t, s) [..., d]: h = tanh(u (M_h * W_h) + b_h), (t, s) = affine_head(h)
    with output weights M_o * W_o, so (t_j, s_j) depend only on the u_i with deg(i) < deg(j)."""
    w_hidden, w_out = _place(layer["w_hidden"], masks.hidden), _place(layer["w_out"], masks.out)

    def one(u: Array) -> tuple[Array, Array]:
        return affine_head(jnp.tanh(u @ w_hidden + layer["b_hidden"]), w_out, layer["b_out"])

    return jnp.vectorize(one, signature="(d)->(d),(d)")


class InverseAutoregressiveAffine(distrax.Bijector):
    """z = u * exp(s(u)) + t(u) for an autoregressive conditioner u -> (t, s) (one IAF step).

    forward: one conditioner pass, log|det dz/du| = sum_j s_j(u).
    inverse: d passes of the fixed-point map u <- (z - t(u)) exp(-s(u)) from u = 0. After pass
    k the first k dimensions in the conditioner's order are exact (the j-th needs only the
    earlier ones), so d passes give u exactly, and the s of the last pass, computed from a u
    whose first d - 1 dimensions are exact, is s(u): log|det du/dz| = -sum_j s_j(u).
    """

    def __init__(self, conditioner: Conditioner, latent_dim: int):
        super().__init__(event_ndims_in=1)
        self.conditioner = conditioner
        self.latent_dim = latent_dim

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        shift, log_scale = self.conditioner(x)
        return x * jnp.exp(log_scale) + shift, jnp.sum(log_scale, axis=-1)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        def one_pass(_, carry):
            shift, log_scale = self.conditioner(carry[0])
            return (y - shift) * jnp.exp(-log_scale), log_scale

        x, log_scale = jax.lax.fori_loop(0, self.latent_dim, one_pass, (jnp.zeros_like(y), jnp.zeros_like(y)))
        return x, -jnp.sum(log_scale, axis=-1)


def inverse_autoregressive_flow(latent_dim: int, num_layers: int = 4, hidden: int = 16) -> VariationalFamily:
    """q(z) = (T_L o ... o T_1)_# N(mu, diag sigma^2) with IAF layers T_l, MADE conditioners of
    `hidden` tanh units, layer l in the order 1..d (l even) or d..1 (l odd).

    init(): base N(0, I) and every T_l the identity (output weights and biases zero), so
    q = p(z) exactly. The hidden weights must be nonzero for gradients to reach the output layer;
    they are fixed draws W_h ~ N(0, 1/m_k) (fan-in scale of unit k) from flows.fixed_normal,
    b_h = 0. from_gaussian(g): base g with that same identity flow.

    No closed-form KL (kl_to_prior is None): the ELBO uses the Monte-Carlo form.
    latent_dim must be >= 2: in one dimension an IAF layer is a constant affine map and the
    family would be the diagonal Gaussian. With hidden >= latent_dim - 1 every dependency of
    z_j on u_<j is representable (every hidden degree is present).
    """
    if latent_dim < 2:
        raise ValueError(f"inverse_autoregressive_flow needs latent_dim >= 2 (a 1-D IAF layer is a constant "
                         f"affine map and equals the Gaussian family); got latent_dim={latent_dim}")
    if num_layers < 1 or hidden < 1:
        raise ValueError(f"num_layers and hidden must be >= 1, got {num_layers}, {hidden}")
    order = np.arange(1, latent_dim + 1)
    masks = [made_masks(order if layer % 2 == 0 else order[::-1], hidden) for layer in range(num_layers)]
    # each free hidden weight's scale 1/sqrt(m_k): m_k = inputs of its unit k (the mask's column sum)
    hidden_scales = [(1.0 / np.sqrt(m.hidden.sum(axis=0)[np.nonzero(m.hidden)[1]])).astype(np.float32)
                     for m in masks]

    def identity_flow() -> list[Params]:
        return [{
            "w_hidden": fixed_normal(layer, scale.shape) * scale,
            "b_hidden": jnp.zeros(hidden),
            "w_out": jnp.zeros(int(m.out.sum())),
            "b_out": jnp.zeros(2 * latent_dim),
        } for layer, (m, scale) in enumerate(zip(masks, hidden_scales))]

    def bijectors(flow: list[Params]) -> list[distrax.Bijector]:
        return [InverseAutoregressiveAffine(made(layer, m), latent_dim) for layer, m in zip(flow, masks)]

    return flow_family("iaf", "iaf", latent_dim, identity_flow, bijectors)
