"""The registry, and the contract every registered family meets, checked from one table (the way
optax tests every optimizer): parameter plumbing, draws and log-densities (shapes, finite values,
log_prob against the log q that comes with the draws), jit and vmap, reparameterized gradients,
init and from_gaussian against the Gaussians they stand for, and amortized training. Checks of
one family (closed forms, a flow's Jacobians and inverse, fits against oracles) are in
tests/test_families_<module>.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from vi_jax import networks
from vi_jax.distributions import sample_and_log_prob
from vi_jax.families import (FAMILIES, coupling_flow, diagonal_gaussian, family_options, get_family,
                             mixture_gaussian)
from vi_jax.train import amortized_vi

NAMES = list(FAMILIES)
D = 3  # odd: a coupling layer keeps two dimensions and moves one, or the reverse
# init() and from_gaussian(g) are the prior and g exactly, except in these families (whose own
# tests check how close they come: the mixture's offset components)
APPROXIMATE_FROM_GAUSSIAN = {"mixture"}
# log-densities of order 1-10 along two float32 paths (a flow's forward and inverse pass) agree
# to ~1e-5 (as in test_families_coupling)
LOG_TOL = 1e-4


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return get_family(request.param, D)


def random_params(family, seed, scale=0.5):
    """A member away from init(): the flat vector scale * N(0, I), unflattened."""
    return family.unflatten(scale * jax.random.normal(jax.random.PRNGKey(seed), (family.num_params,)))


# --- the registry --------------------------------------------------------------------------

def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown variational family 'student'"):
        get_family("student", 2)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_named_with_the_family(name):
    with pytest.raises(ValueError, match=rf"variational family '{name}' has no option\(s\) \['depth'\]"):
        get_family(name, D, depth=2)


def test_options_pass_through_the_registry():
    assert family_options("gaussian") == () and family_options("flow") == ("num_layers", "hidden")
    flow = get_family("flow", D, num_layers=2, hidden=5)
    assert len(flow.init()["flow"]) == 2 and flow.num_params == coupling_flow(D, 2, 5).num_params
    assert get_family("mixture", D, num_components=2).init()["logits"].shape == (2,)
    assert get_family("mixture", D).num_params == mixture_gaussian(D).num_params


def test_labels_are_distinct_and_those_in_result_keys_are_fixed():
    """Result JSON keys and file names use the labels: elbo_local_ffg, approximation_gap_flow."""
    labels = [get_family(name, D).label for name in NAMES]
    assert len(set(labels)) == len(labels), labels
    assert get_family("gaussian", D).label == "ffg" and get_family("flow", D).label == "flow"


# --- the contract --------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_registered_under_its_own_name(name):
    family = get_family(name, D)
    assert family.name == name and family.latent_dim == D
    assert family.kl_form == ("analytic" if family.kl_to_prior is not None else "mc")


def test_parameter_plumbing(family):
    """num_params is the size of init()'s pytree; unflatten puts every entry of a flat vector in
    exactly one place of a pytree shaped as init()'s, linearly, also for an encoder's [N, P]
    output under jit and vmap."""
    init = family.init()
    assert sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(family.init))) == family.num_params
    flat = jnp.arange(family.num_params, dtype=jnp.float32)
    params = jax.jit(family.unflatten)(flat)
    assert jax.tree.structure(params) == jax.tree.structure(init)
    jax.tree.map(lambda p, i: np.testing.assert_equal(p.shape, i.shape), params, init)
    np.testing.assert_array_equal(np.sort(ravel_pytree(params)[0]), flat)
    table = jax.jit(jax.vmap(family.unflatten))(jnp.stack([flat, 2 * flat]))
    jax.tree.map(lambda t, p: np.testing.assert_array_equal(t[1], 2 * p), table, params)


def test_draws_and_log_prob(family):
    """At a member away from init(): draws of shape [d], log q with them equal to log_prob at
    them, finite values, sample_shape batches; a mixture's components give its density."""
    params = random_params(family, 1)

    @jax.jit
    def draws(params):
        q = family.distribution(params)
        z, log_q = jax.vmap(lambda k: sample_and_log_prob(q, k))(jax.random.split(jax.random.PRNGKey(2), 6))
        batch = q.sample(seed=jax.random.PRNGKey(3), sample_shape=(5,))
        return z, log_q, jax.vmap(q.log_prob)(z), batch, jax.vmap(q.log_prob)(batch)

    z, log_q, log_prob, batch, batch_log_prob = draws(params)
    assert family.distribution(params).event_shape == (D,)
    assert z.shape == (6, D) and log_q.shape == (6,) and batch.shape == (5, D) and batch_log_prob.shape == (5,)
    assert all(np.all(np.isfinite(a)) for a in (z, log_q, batch, batch_log_prob))
    np.testing.assert_allclose(log_prob, log_q, atol=LOG_TOL)
    if family.components is not None:
        log_pi, components = family.components(params)
        assert log_pi.shape[0] == components.batch_shape[0] and components.event_shape == (D,)
        mixed = jax.vmap(lambda z_i: jax.nn.logsumexp(log_pi + components.log_prob(
            jnp.broadcast_to(z_i, (log_pi.shape[0], D)))))(z)
        np.testing.assert_allclose(mixed, log_prob, atol=LOG_TOL)


def test_vmap_over_a_table_equals_row_by_row(family):
    """A table of 3 members (leading axis) under jit(vmap) gives each row's own draws and log q."""
    table = jax.vmap(family.unflatten)(0.5 * jax.random.normal(jax.random.PRNGKey(4), (3, family.num_params)))
    keys = jax.random.split(jax.random.PRNGKey(5), 3)

    def one(params, key):
        return sample_and_log_prob(family.distribution(params), key)

    z, log_q = jax.jit(jax.vmap(one))(table, keys)
    row = jax.jit(one)
    for i in range(3):
        z_i, log_q_i = row(jax.tree.map(lambda t: t[i], table), keys[i])
        np.testing.assert_allclose(z[i], z_i, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(log_q[i], log_q_i, rtol=1e-5, atol=1e-5)


def test_reparameterized_gradients_reach_every_parameter(family):
    """d/d params of f(z) + log q(z) at a reparameterized draw z: finite, nonzero in every leaf
    (z and log q depend on all parameters; a mixture's weights through log q only)."""
    params = random_params(family, 6)

    def objective(params):
        z, log_q = sample_and_log_prob(family.distribution(params), jax.random.PRNGKey(7))
        return jnp.sum(jnp.square(z - 1.0)) + log_q

    grads = jax.jit(jax.grad(objective))(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in APPROXIMATE_FROM_GAUSSIAN])
def test_init_and_from_gaussian_are_exact_under_vmap(name):
    """3-row tables: init() is N(0, I) and from_gaussian(g) is N(g), in density and in draws,
    and in the closed-form KL where the family has one."""
    family, gaussian = get_family(name, D), diagonal_gaussian(D)
    k_mean, k_scale, k_z, k_draw = jax.random.split(jax.random.PRNGKey(11), 4)
    g_table = {"mean": jax.random.normal(k_mean, (3, D)), "log_scale": 0.5 * jax.random.normal(k_scale, (3, D))}
    z = 2.0 * jax.random.normal(k_z, (3, D))

    @jax.jit
    def tables_log_probs_and_draws(g_table):
        init_table = jax.vmap(lambda _: family.init())(jnp.arange(3))
        from_table = jax.vmap(family.from_gaussian)(g_table)

        def per_row(fam, table):
            lp = jax.vmap(lambda p, z_i: fam.distribution(p).log_prob(z_i))(table, z)
            return lp, jax.vmap(lambda p: sample_and_log_prob(fam.distribution(p), k_draw))(table)

        return (init_table, from_table, per_row(family, init_table), per_row(family, from_table),
                per_row(gaussian, g_table))

    init_table, from_table, (init_lp, _), (from_lp, from_draws), (gauss_lp, gauss_draws) = \
        tables_log_probs_and_draws(g_table)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves((init_table, from_table)))
    log_prior = -0.5 * np.sum(np.square(z), axis=1) - 0.5 * D * np.log(2 * np.pi)
    np.testing.assert_allclose(init_lp, log_prior, rtol=1e-6)
    np.testing.assert_allclose(from_lp, gauss_lp, rtol=1e-6)
    for from_out, gauss_out in zip(from_draws, gauss_draws):
        np.testing.assert_allclose(from_out, gauss_out, rtol=1e-6)
    if family.kl_to_prior is not None:
        assert float(family.kl_to_prior(family.init())) == 0.0
        np.testing.assert_allclose(jax.vmap(family.kl_to_prior)(from_table), jax.vmap(gaussian.kl_to_prior)(g_table),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_trains_amortized(tiny, name):
    """amortized_vi with a one-hidden-layer encoder whose output is the family's flat vector:
    the output layer has family.num_params units, unflatten gives init()'s structure, and a few
    steps give finite losses."""
    family = get_family(name, tiny.latent_dim)
    encoder = networks.encoder((8,), family.num_params)
    algo = amortized_vi(tiny.model, family, encoder, optax.adam(1e-2), kl=family.kl_form)
    data = jnp.stack([tiny.x, jnp.array([0.0, 1.0, 1.0, 0.0, 0.0]), jnp.ones(5), jnp.zeros(5)])
    state = algo.init(jax.random.PRNGKey(0), data[0])
    assert state.params["encoder"]["params"]["Dense_1"]["kernel"].shape == (8, family.num_params)
    q = family.unflatten(encoder.apply(state.params["encoder"], data[0]))
    assert jax.tree.structure(q) == jax.tree.structure(family.init())
    step = jax.jit(algo.step)
    losses = []
    for t in range(5):
        state, info = step(jax.random.PRNGKey(t), state, data)
        losses.append(float(info.loss))
    assert np.all(np.isfinite(losses)) and int(state.step) == 5, losses
