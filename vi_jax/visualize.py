"""What a trained latent-variable model is looked at through: decoded prior samples,
reconstructions, straight-line interpolations in z, the 2-D latent manifold, training curves.

Pure numeric helpers (arrays in, arrays out); vi_jax.plotting draws them. Every picture shows
E[x | z; theta] (for a Bernoulli decoder: pixel probabilities), not a draw x ~ p(x | z).
"""
from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from vi_jax.array_types import Array, Params
from vi_jax.models import LatentVariableModel


def decode_means(model: LatentVariableModel, theta: Params, z: Array) -> Array:
    """E[x | z_n; theta] for every row of z [N, d] -> [N, D]."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"z must be [N, {model.latent_dim}], got shape {z.shape}")
    return jax.vmap(model.mean, in_axes=(None, 0))(theta, z)


def prior_samples(key: Array, model: LatentVariableModel, theta: Params, num: int) -> Array:
    """E[x | z_n; theta] for z_n ~ p(z) = N(0, I), n = 1..num -> [num, D]."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    return decode_means(model, theta, model.prior().sample(seed=key, sample_shape=(num,)))


def location(q: distrax.Distribution) -> Array:
    """A point summary of q(z): its mean E_q[z] where known in closed form (Gaussians,
    mixtures); for a flow q = T_# q_0, whose mean has none, T(E_{q_0}[u]), the image of the
    base distribution's mean."""
    try:
        return q.mean()
    except NotImplementedError:
        if isinstance(q, distrax.Transformed):
            return q.bijector.forward(q.distribution.mean())
        raise ValueError(f"no point summary for {type(q).__name__}: it has neither a mean nor a base "
                         "distribution") from None


def encoder_means(vae, encoder_params: Params, x: Array) -> Array:
    """location(q_phi(z | x_n)) for every row of x [N, D] -> [N, d]: the codes reconstructions
    and interpolations decode (the encoder mean for Gaussian families)."""
    q = vae.encode(encoder_params, jnp.asarray(x))
    return jax.vmap(lambda p: location(vae.family.distribution(p)))(q)


def reconstructions(vae, params: Params, x: Array) -> Array:
    """E[x | z = location(q)] with q = q_phi(z | x_n), for every row of x [N, D] -> [N, D]."""
    return decode_means(vae.model, params["decoder"], encoder_means(vae, params["encoder"], x))


def interpolation_path(z_a: Array, z_b: Array, num: int) -> Array:
    """z_t = (1 - t) z_a + t z_b at num evenly spaced t in [0, 1] -> [num, d] (row 0 is z_a,
    row num - 1 is z_b)."""
    z_a, z_b = jnp.asarray(z_a), jnp.asarray(z_b)
    if z_a.ndim != 1 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must be vectors of one shape, got {z_a.shape} and {z_b.shape}")
    if num < 2:
        raise ValueError(f"num must be >= 2 (the two endpoints), got {num}")
    t = jnp.linspace(0.0, 1.0, num)[:, None]
    return (1.0 - t) * z_a[None, :] + t * z_b[None, :]


def interpolate(vae, params: Params, x_a: Array, x_b: Array, num: int) -> Array:
    """E[x | z_t] along the straight line between the codes `encoder_means` gives x_a and x_b
    ([D] each) -> [num, D]; row 0 reconstructs x_a, row num - 1 reconstructs x_b."""
    z = encoder_means(vae, params["encoder"], jnp.stack([jnp.asarray(x_a), jnp.asarray(x_b)]))
    return decode_means(vae.model, params["decoder"], interpolation_path(z[0], z[1], num))


def grid_quantiles(num_per_axis: int) -> Array:
    """Phi^{-1}(u_i) for the uniform grid u_i = (i + 1/2) / n, i = 0..n-1, in (0, 1): n latent
    values with prior mass 1/n around each (increasing)."""
    if num_per_axis < 1:
        raise ValueError(f"num_per_axis must be >= 1, got {num_per_axis}")
    return ndtri((jnp.arange(num_per_axis) + 0.5) / num_per_axis)


def manifold_latents(num_per_axis: int) -> Array:
    """The 2-D latent grid of Kingma & Welling (2014, fig. 4): z = Phi^{-1}(u) with u on a
    uniform grid of (0, 1)^2 (`grid_quantiles` per coordinate), in row-major image order ->
    [n * n, 2]: row r (top to bottom) has z_2 = grid_quantiles[n - 1 - r], column c has
    z_1 = grid_quantiles[c], so the tiled picture has z_1 rising to the right and z_2 upwards."""
    z = grid_quantiles(num_per_axis)
    z1, z2 = jnp.meshgrid(z, z[::-1])
    return jnp.stack([z1.ravel(), z2.ravel()], axis=1)


def manifold(model: LatentVariableModel, theta: Params, num_per_axis: int) -> Array:
    """E[x | z] on `manifold_latents(num_per_axis)` -> [n * n, D]; only for a 2-D latent."""
    if model.latent_dim != 2:
        raise ValueError(f"the latent manifold picture needs latent_dim == 2, got {model.latent_dim}")
    return decode_means(model, theta, manifold_latents(num_per_axis))


def history_curves(history: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (epochs, values)} for every number train_vae's history records (train_elbo at every
    epoch; eval_elbo and eval_iwae_<K> at the evaluation epochs only)."""
    names = sorted({name for record in history for name in record} - {"epoch", "stage"})
    curves = {}
    for name in names:
        rows = [(record["epoch"], record[name]) for record in history if name in record]
        curves[name] = (np.array([r[0] for r in rows]), np.array([r[1] for r in rows], np.float64))
    return curves
