"""Observation models against independent formulas (scipy), and the sampling helper."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vi_jax.distributions import (BERNOULLI, GAUSSIAN, GAUSSIAN_MIN_SCALE, get_likelihood,
                                  sample_and_log_prob, softplus, standard_normal)


def test_softplus_and_its_derivatives_match_float64_formulas():
    """Against log1p(exp(x)) and the sigmoid in float64, from -90 to 90 (where a naive float32
    exp overflows), at +-inf, and through a second derivative sigmoid(x)(1 - sigmoid(x)); NaN
    stays NaN (the training loops' divergence guard relies on it)."""
    x = jnp.array([-90.0, -20.0, -3.0, -0.1, 0.0, 1e-3, 2.5, 17.0, 90.0])
    x64 = np.asarray(x, np.float64)
    sigmoid = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(softplus(x), np.logaddexp(x64, 0), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(jax.vmap(jax.grad(softplus))(x), sigmoid, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(jax.vmap(jax.grad(jax.grad(softplus)))(x), sigmoid * (1 - sigmoid),
                               rtol=1e-5, atol=1e-30)
    inf = jnp.array([-jnp.inf, jnp.inf])
    np.testing.assert_array_equal(softplus(inf), [0.0, np.inf])
    np.testing.assert_array_equal(jax.vmap(jax.grad(softplus))(inf), [0.0, 1.0])
    assert bool(jnp.isnan(softplus(jnp.nan))) and bool(jnp.isnan(jax.grad(softplus)(jnp.nan)))


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
