"""ELBO and IWAE estimators against truth: equal expectations of the two ELBO forms, the bound
ordering ELBO <= IWAE_K (non-decreasing in K), IWAE_1 = ELBO in distribution, pathwise
gradients against closed forms. Tolerances are 4 Monte-Carlo standard errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vi_jax.distributions import sample_and_log_prob
from vi_jax.elbo import (ELBO_DRAWS_PER_STEP, ElboTerms, elbo_rows_per_step, make_elbo, make_iwae, map_datapoints,
                         map_draws)
from vi_jax.families import mixture_gaussian

REPLICATES = 4000


def replicate(fn, tiny, n=REPLICATES, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(keys, tiny.theta, tiny.q_params, tiny.x)


def mean_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def test_kl_form_and_entropy_form_agree_in_expectation(tiny):
    analytic = replicate(make_elbo(tiny.model, tiny.family, kl="analytic"), tiny, seed=1)
    mc = replicate(make_elbo(tiny.model, tiny.family, kl="mc"), tiny, seed=2)
    (m_a, se_a), (m_m, se_m) = mean_se(analytic.elbo), mean_se(mc.elbo)
    assert abs(m_a - m_m) <= 4 * np.hypot(se_a, se_m), (m_a, m_m, se_a, se_m)
    # the parts add up, and the entropy form's KL estimate is unbiased for the closed form
    np.testing.assert_allclose(analytic.elbo, analytic.reconstruction - analytic.kl, rtol=1e-6)
    kl_mean, kl_se = mean_se(mc.kl)
    assert abs(kl_mean - float(tiny.family.kl_to_prior(tiny.q_params))) <= 4 * kl_se


def test_more_samples_reduce_variance_not_mean(tiny):
    one = replicate(make_elbo(tiny.model, tiny.family, num_samples=1), tiny, seed=3).elbo
    ten = replicate(make_elbo(tiny.model, tiny.family, num_samples=10), tiny, seed=4).elbo
    (m1, se1), (m10, se10) = mean_se(one), mean_se(ten)
    assert abs(m1 - m10) <= 4 * np.hypot(se1, se10)
    assert np.var(ten) < np.var(one) / 5  # variance ~ 1/M: expect 10x smaller


def test_iwae_bounds_increase_with_k_and_exceed_elbo(tiny):
    elbo = replicate(make_elbo(tiny.model, tiny.family), tiny, seed=5).elbo
    means = [mean_se(elbo)]
    for k in (5, 50):
        means.append(mean_se(replicate(make_iwae(tiny.model, tiny.family, num_samples=k), tiny,
                                       n=1000, seed=6 + k).bound))
    for (lo, lo_se), (hi, hi_se) in zip(means, means[1:]):
        # strictly larger here: q differs from the posterior, so the gain is many standard errors
        assert hi - lo > 4 * np.hypot(lo_se, hi_se), means


def test_iwae_1_equals_elbo_in_distribution(tiny):
    elbo = replicate(make_elbo(tiny.model, tiny.family, kl="mc"), tiny, seed=7).elbo
    iwae1 = replicate(make_iwae(tiny.model, tiny.family, num_samples=1), tiny, seed=8).bound
    assert stats.ks_2samp(np.asarray(elbo), np.asarray(iwae1)).pvalue > 1e-3


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_iwae_does_not_depend_on_chunk_size(tiny, chunk_size):
    key = jax.random.PRNGKey(9)
    full = make_iwae(tiny.model, tiny.family, num_samples=64, chunk_size=64)(key, tiny.theta, tiny.q_params, tiny.x)
    chunked = make_iwae(tiny.model, tiny.family, num_samples=64, chunk_size=chunk_size)(
        key, tiny.theta, tiny.q_params, tiny.x)
    np.testing.assert_allclose(chunked.bound, full.bound, rtol=1e-6)
    np.testing.assert_allclose(chunked.stderr, full.stderr, rtol=1e-4)


def test_iwae_stderr_matches_spread_across_replicates(tiny):
    """The delta-method standard error predicts the replicate-to-replicate std of the bound.

    The delta method needs Var(w) < inf, which holds when q is wider than the posterior, so q
    here has sigma = e^0.5 > 1 (the prior's width; the posterior is narrower). With R
    replicates the sample std has relative error 1/sqrt(2(R-1)) (2.2% at R=1000); allow 4.
    (tiny.q_params, with sigma_1 = e^-0.4 < 1/sqrt(2), gives weights of infinite variance:
    there the estimate comes out 12% low, as the IwaeTerms docstring warns.)
    """
    r = 1000
    wide_q = {"mean": tiny.q_params["mean"], "log_scale": jnp.array([0.5, 0.5])}
    keys = jax.random.split(jax.random.PRNGKey(10), r)
    iwae = make_iwae(tiny.model, tiny.family, num_samples=500)
    out = jax.jit(jax.vmap(iwae, in_axes=(0, None, None, None)))(keys, tiny.theta, wide_q, tiny.x)
    spread, predicted = float(np.std(out.bound, ddof=1)), float(np.mean(out.stderr))
    assert abs(predicted / spread - 1) <= 4 / np.sqrt(2 * (r - 1)), (predicted, spread)


def test_reparameterized_gradient_matches_closed_form(tiny):
    """f(z) = sum_j a_j z_j^2 + b_j z_j: E_q f = sum_j a_j (mu_j^2 + sigma_j^2) + b_j mu_j, so
    d/dmu = 2 a mu + b and d/dlog sigma = 2 a sigma^2."""
    a, b = jnp.array([0.7, -1.3]), jnp.array([0.5, 2.0])
    family = tiny.family

    def f_of_sample(params, key):
        z, _ = sample_and_log_prob(family.distribution(params), key)
        return jnp.sum(a * z**2 + b * z)

    keys = jax.random.split(jax.random.PRNGKey(11), 20000)
    grads = jax.jit(jax.vmap(jax.grad(f_of_sample), in_axes=(None, 0)))(tiny.q_params, keys)
    mu, sigma = tiny.q_params["mean"], jnp.exp(tiny.q_params["log_scale"])
    exact = {"mean": 2 * a * mu + b, "log_scale": 2 * a * sigma**2}
    for name in ("mean", "log_scale"):
        g = np.asarray(grads[name], np.float64)
        se = g.std(axis=0, ddof=1) / np.sqrt(len(g))
        assert np.all(np.abs(g.mean(axis=0) - exact[name]) <= 4 * se), (name, g.mean(0), exact[name], se)


def test_elbo_rows_per_step_bounds_the_draws_per_step():
    for draws in (1, 7, 100, 499, 500, 501, 1000, 5000):
        for max_rows in (1, 3, 100):
            rows = elbo_rows_per_step(draws, max_rows)
            assert 1 <= rows <= max_rows
            # as many rows as fit in the budget, and never zero
            assert rows * draws <= ELBO_DRAWS_PER_STEP or rows == 1
            assert rows == max_rows or (rows + 1) * draws > ELBO_DRAWS_PER_STEP


@pytest.mark.parametrize("draws", [1, 3])
def test_map_draws_equals_vmap_in_value_and_gradient(tiny, draws):
    """One draw skips the vmap (a layout matter for XLA); values and gradients must not change."""
    z = jax.random.normal(jax.random.PRNGKey(draws), (draws, tiny.model.latent_dim))

    def total(theta, over_draws):
        return jnp.sum(over_draws(lambda z_m: tiny.model.likelihood(theta, z_m).log_prob(tiny.x), z))

    value, grad = jax.value_and_grad(lambda theta: total(theta, map_draws))(tiny.theta)
    value_vmap, grad_vmap = jax.value_and_grad(lambda theta: total(theta, lambda f, z: jax.vmap(f)(z)))(tiny.theta)
    assert map_draws(jnp.sum, z).shape == (draws,)
    np.testing.assert_allclose(value, value_vmap, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad, grad_vmap)


def test_map_datapoints_batches_agree_and_keys_ignore_n(tiny):
    fn = make_iwae(tiny.model, tiny.family, num_samples=10)
    data = jnp.stack([tiny.x, 1 - tiny.x, tiny.x])
    q = jax.tree.map(lambda v: jnp.stack([v, v + 0.1, v - 0.1]), tiny.q_params)
    key = jax.random.PRNGKey(12)
    all_at_once = map_datapoints(fn, key, tiny.theta, q, data)
    batched = map_datapoints(fn, key, tiny.theta, q, data, batch_size=2)
    first_two = map_datapoints(fn, key, tiny.theta, jax.tree.map(lambda v: v[:2], q), data[:2])
    np.testing.assert_allclose(batched.bound, all_at_once.bound, rtol=1e-6)
    np.testing.assert_allclose(first_two.bound, all_at_once.bound[:2], rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    pytest.param({"num_samples": 0}, "num_samples must be an integer >= 1", id="zero-samples"),
    pytest.param({"kl": "exact"}, "unknown kl form 'exact'", id="unknown-kl"),
])
def test_bad_elbo_options_are_named(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_elbo(tiny.model, tiny.family, **kwargs)


# --- the stratified mixture ELBO against 2-D quadrature ---------------------------------------

MIXTURE_PARAMS = {"logits": jnp.array([0.5, -0.3, 0.1]),
                  "mean": jnp.array([[0.5, -1.0], [-0.8, 0.4], [0.2, 1.2]]),
                  "log_scale": jnp.array([[-0.5, -0.2], [0.1, -0.4], [-0.3, 0.0]])}


def quadrature_elbo_terms(tiny, family, q_params, box=7.0, points=141):
    """ElboTerms of q exactly, up to quadrature error: sums over a points^2 grid on [-box, box]^2
    of q(z) h^2 times log p(x|z) and log q(z) - log p(z). q's smallest sigma is 0.6 = 6 h, where
    the rule's error is ~exp(-2 pi^2 sigma^2 / h^2), and its mass beyond the box < 1e-8, so the
    sum equals the integral far below the tests' Monte-Carlo errors. Differentiable in q_params:
    jax.grad of it is the exact ELBO gradient."""
    axis = jnp.linspace(-box, box, points)
    z = jnp.stack(jnp.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    log_q = jax.vmap(family.distribution(q_params).log_prob)(z)
    weight = jnp.exp(log_q) * (axis[1] - axis[0]) ** 2
    log_lik = jax.vmap(lambda z_g: tiny.model.likelihood(tiny.theta, z_g).log_prob(tiny.x))(z)
    reconstruction = jnp.sum(weight * log_lik)
    kl = jnp.sum(weight * (log_q - jax.vmap(tiny.model.prior().log_prob)(z)))
    entropy = -jnp.sum(weight * log_q)
    return ElboTerms(reconstruction - kl, reconstruction, kl, entropy), jnp.sum(weight)


@pytest.fixture(scope="module")
def mixture_truth(tiny):
    """(family, exact ElboTerms, q's mass on the grid, exact gradient of the ELBO) at MIXTURE_PARAMS."""
    family = mixture_gaussian(2, 3)
    def elbo(p):
        terms, mass = quadrature_elbo_terms(tiny, family, p)
        return terms.elbo, (terms, mass)

    grad, (terms, mass) = jax.jit(jax.grad(elbo, has_aux=True))(MIXTURE_PARAMS)
    return family, terms, mass, grad


def test_stratified_mixture_elbo_and_its_parts_are_unbiased(tiny, mixture_truth):
    """Against the quadrature; and the reason for stratifying: a draw of the mixture itself
    (distrax.MixtureSameFamily) passes no gradient to the logits."""
    family, exact, mass, _ = mixture_truth
    naive = jax.jit(jax.grad(lambda p: sample_and_log_prob(family.distribution(p), jax.random.PRNGKey(0))[0].sum()))
    np.testing.assert_array_equal(naive(MIXTURE_PARAMS)["logits"], 0.0)
    assert abs(float(mass) - 1.0) < 1e-4
    fn = make_elbo(tiny.model, family, num_samples=2, kl="mc")
    keys = jax.random.split(jax.random.PRNGKey(13), REPLICATES)
    terms = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(keys, tiny.theta, MIXTURE_PARAMS, tiny.x)
    for name in ElboTerms._fields:
        mean, se = mean_se(getattr(terms, name))
        assert abs(mean - float(getattr(exact, name))) <= 4 * se, (name, mean, getattr(exact, name), se)


@pytest.mark.parametrize("seed,estimator", [(14, "reparam"), (15, "stl"), (16, "score_function")])
def test_mixture_gradients_are_unbiased_and_reach_the_weights(tiny, mixture_truth, seed, estimator):
    """Mean of per-key gradients (2 draws per component; score_function: 2 draws of the mixture)
    within 4 se of jax.grad of the quadrature ELBO, for every parameter; the exact gradient
    w.r.t. the logits is many se from 0."""
    family, _, _, exact = mixture_truth
    fn = make_elbo(tiny.model, family, num_samples=2, kl="mc", estimator=estimator)
    grad = jax.grad(lambda p, key: fn(key, tiny.theta, p, tiny.x).elbo)
    keys = jax.random.split(jax.random.PRNGKey(seed), REPLICATES)
    grads = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(MIXTURE_PARAMS, keys)
    for name in ("logits", "mean", "log_scale"):
        g = np.asarray(grads[name], np.float64)
        mean, se = g.mean(axis=0), g.std(axis=0, ddof=1) / np.sqrt(len(g))
        assert np.all(np.abs(mean - exact[name]) <= 4 * se), (name, mean, exact[name], se)
        if name == "logits":
            assert np.max(np.abs(exact[name]) / se) > 10, (exact[name], se)


def test_iwae_samples_the_mixture(tiny, mixture_truth):
    """make_iwae draws from the mixture directly (no gradient needed): IWAE_1 is an unbiased
    ELBO estimate, against the quadrature ELBO."""
    family, exact, _, _ = mixture_truth
    keys = jax.random.split(jax.random.PRNGKey(17), REPLICATES)
    iwae = jax.jit(jax.vmap(make_iwae(tiny.model, family, num_samples=1), in_axes=(0, None, None, None)))
    mean, se = mean_se(iwae(keys, tiny.theta, MIXTURE_PARAMS, tiny.x).bound)
    assert abs(mean - float(exact.elbo)) <= 4 * se, (mean, exact.elbo, se)


@pytest.mark.parametrize("factory", ["make_elbo", "make_iwae"])
def test_estimators_refuse_a_batch_and_non_integer_counts(tiny, factory):
    """A batch where one datapoint is expected would broadcast and mix the rows' terms."""
    from vi_jax import elbo as module

    make = getattr(module, factory)
    fn = make(tiny.model, tiny.family, num_samples=3)
    q = tiny.family.init()
    with pytest.raises(ValueError, match=r"takes one datapoint of shape .*: for a batch, jax.vmap it or use "
                                         r"vi_jax.elbo.map_datapoints"):
        fn(jax.random.PRNGKey(0), tiny.theta, q, jnp.stack([tiny.x, tiny.x]))
    with pytest.raises(ValueError, match=r"num_samples must be an integer >= 1, got 2.5"):
        make(tiny.model, tiny.family, num_samples=2.5)
