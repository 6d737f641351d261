"""Observation models against independent formulas (scipy), and the sampling helper."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vi_jax.distributions import (BERNOULLI, GAUSSIAN, GAUSSIAN_MIN_SCALE, get_likelihood,
                                  sample_and_log_prob, standard_normal)


def test_bernoulli_log_prob_is_minus_binary_cross_entropy():
    logits = jnp.array([-2.0, 0.0, 1.5, 3.0])
    x = jnp.array([0.0, 1.0, 1.0, 0.0])
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    expected = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p))
    np.testing.assert_allclose(BERNOULLI.distribution(logits).log_prob(x), expected, rtol=1e-6)
    np.testing.assert_allclose(BERNOULLI.mean(logits), p, rtol=1e-6)


def test_bernoulli_log_prob_and_gradient_match_distrax():
    """Our single-softplus form against distrax's two-softplus form, for binary and grey x and
    logits out to +-80 (where a naive log(sigmoid) would overflow to -inf)."""
    logits = jnp.array([-80.0, -7.0, -0.5, 0.0, 0.3, 4.0, 80.0])
    for x in (jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), jnp.linspace(0.0, 1.0, 7)):
        ours = lambda l: BERNOULLI.distribution(l).log_prob(x)
        reference = lambda l: distrax.Independent(distrax.Bernoulli(logits=l), 1).log_prob(x)
        np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), rtol=1e-6, atol=1e-7)


def test_gaussian_log_prob_matches_scipy():
    out = jnp.array([0.1, -0.3, 0.5, -1.0, 0.0, 2.0])  # means (3), raw scales (3)
    x = jnp.array([0.0, 0.2, 1.0])
    scale = GAUSSIAN_MIN_SCALE + np.log1p(np.exp(np.asarray(out[3:], np.float64)))
    expected = stats.norm.logpdf(np.asarray(x), np.asarray(out[:3]), scale).sum()
    np.testing.assert_allclose(GAUSSIAN.distribution(out).log_prob(x), expected, rtol=1e-5)
    assert GAUSSIAN.num_outputs(3) == 6


def test_standard_normal_prior_matches_scipy():
    z = jnp.array([0.5, -1.0, 2.0])
    expected = stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(np.asarray(z))
    np.testing.assert_allclose(standard_normal(3).log_prob(z), expected, rtol=1e-6)


def test_sample_and_log_prob_is_consistent():
    dist = standard_normal(4)
    z, log_p = sample_and_log_prob(dist, jax.random.PRNGKey(0))
    assert z.shape == (4,)
    np.testing.assert_allclose(log_p, dist.log_prob(z), rtol=1e-6)


def test_unknown_likelihood_is_named():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        get_likelihood("poisson")
