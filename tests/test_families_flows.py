"""What flow_family gives every flow (vi_jax.families.flows): unflatten is ravel_pytree's inverse
on the {"base", "flow"} pytree, and the identity flow of init() and from_gaussian has fixed,
nonzero hidden weights. The other checks every family meets are in test_families.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from vi_jax.families import coupling_flow, inverse_autoregressive_flow

FLOWS = {"coupling": coupling_flow(2), "iaf": inverse_autoregressive_flow(4, num_layers=3, hidden=5)}


def perturbed(family, seed):
    """A member with every leaf random (N(0, 1) draws of a fixed seed)."""
    leaves, tree = jax.tree.flatten(family.init())
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


@pytest.mark.parametrize("name", list(FLOWS))
def test_unflatten_inverts_ravel_pytree(name):
    family = FLOWS[name]
    params = perturbed(family, 0)
    flat, _ = ravel_pytree(params)
    assert flat.shape == (family.num_params,)
    jax.tree.map(np.testing.assert_array_equal, jax.jit(family.unflatten)(flat), params)


@pytest.mark.parametrize("name", list(FLOWS))
def test_identity_flow_has_fixed_nonzero_hidden_weights(name):
    """init() and from_gaussian(g) share one identity flow (q is then exactly the prior or g:
    test_families): its hidden weights are nonzero, so gradients reach the zero output layer,
    and fixed, the same in every row of a table."""
    family = FLOWS[name]
    d = family.latent_dim
    g_table = {"mean": jax.random.normal(jax.random.PRNGKey(11), (3, d)), "log_scale": jnp.zeros((3, d))}
    init_table, from_table = jax.jit(lambda g: (jax.vmap(lambda _: family.init())(jnp.arange(3)),
                                                jax.vmap(family.from_gaussian)(g)))(g_table)
    for layer in init_table["flow"] + from_table["flow"]:
        w_hidden = np.asarray(layer["w_hidden"])
        assert np.all(w_hidden != 0) and np.all(w_hidden == w_hidden[:1])
