"""Variational families: analytic KL against Monte Carlo, parameter plumbing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax.distributions import sample_and_log_prob, standard_normal
from vi_jax.families import diagonal_gaussian, get_family


@pytest.mark.parametrize("mean,log_scale", [
    pytest.param([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], id="prior"),
    pytest.param([1.0, -2.0, 0.5], [-1.0, 0.3, 0.0], id="shifted"),
    pytest.param([0.2, 0.1, -0.3], [-2.0, -2.5, -1.5], id="narrow"),
])
def test_analytic_kl_equals_monte_carlo_kl(mean, log_scale):
    family = diagonal_gaussian(3)
    params = {"mean": jnp.array(mean), "log_scale": jnp.array(log_scale)}
    q, prior = family.distribution(params), standard_normal(3)
    keys = jax.random.split(jax.random.PRNGKey(0), 200_000)
    z, log_q = jax.vmap(lambda k: sample_and_log_prob(q, k))(keys)
    log_ratio = np.asarray(log_q - jax.vmap(prior.log_prob)(z), np.float64)
    mc, se = log_ratio.mean(), log_ratio.std(ddof=1) / np.sqrt(log_ratio.size)
    analytic = float(family.kl_to_prior(params))
    mu, s = np.array(mean), np.exp(np.array(log_scale))
    np.testing.assert_allclose(analytic, 0.5 * np.sum(mu**2 + s**2 - 2 * np.log(s) - 1), rtol=1e-5, atol=1e-6)
    assert abs(mc - analytic) <= 4 * se + 1e-6, (mc, analytic, se)


def test_unflatten_init_and_distribution():
    family = diagonal_gaussian(2)
    params = family.unflatten(jnp.array([1.0, 2.0, 0.0, np.log(3.0)]))
    np.testing.assert_allclose(params["mean"], [1.0, 2.0])
    np.testing.assert_allclose(family.distribution(params).stddev(), [1.0, 3.0], rtol=1e-6)
    assert family.num_params == 4
    np.testing.assert_allclose(family.kl_to_prior(family.init()), 0.0, atol=1e-7)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown variational family 'student'"):
        get_family("student", 2)
