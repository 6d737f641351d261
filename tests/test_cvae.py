"""Conditional VAE against truth: the closed-form KL(q(z|x,c) || p(z|c)) against distrax and Monte
Carlo in z-space (the whitened model must not change it), the ELBO against a direct z-space
estimate, ELBO <= IWAE <= log p(x|c) with log p(x|c) by quadrature over a 2-D latent, training,
generation, and label validation. Tolerances are 4 Monte-Carlo standard errors."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax import data
from vi_jax.cvae import (CVAEConfig, build_cvae, generate, make_cvae_elbo, make_cvae_iwae, make_evaluator,
                         one_hot_labels, train_cvae)

TINY = CVAEConfig(num_classes=3, latent_dim=2, encoder_hidden=(8,), decoder_hidden=(8,), prior_hidden=(4,),
                  activation="tanh")
CVAE = build_cvae(TINY, data_dim=5)
PARAMS = jax.jit(CVAE.init)(jax.random.PRNGKey(0))
X = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
C = jax.nn.one_hot(2, 3)
REPLICATES = 4000


def mean_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def replicate(fn, n=REPLICATES, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(keys, PARAMS, C, X)


def z_space(params, x, c):
    """q(z|x,c) and p(z|c) as distrax distributions in the original coordinates."""
    q, p = CVAE.posterior_params(params, x, c), CVAE.prior_params(params, c)
    return (distrax.MultivariateNormalDiag(q["mean"], jnp.exp(q["log_scale"])),
            distrax.MultivariateNormalDiag(p["mean"], jnp.exp(p["log_scale"])))


ELBO_FN, ENTROPY_FN, IWAE_FN = make_cvae_elbo(CVAE), make_cvae_elbo(CVAE, kl="mc"), make_cvae_iwae(CVAE, num_samples=50)


@pytest.fixture(scope="module")
def draws():
    """REPLICATES independent draws (one jitted function) of: the z-space integrands of the KL and
    the ELBO, log q(z) - log p(z|c) and log p(x|z,c) + log p(z|c) - log q(z) with z ~ q computed
    directly with distrax; the library's KL-form and entropy-form one-sample ELBOs; IWAE_50."""

    def estimates(key, params, c, x):
        keys = jax.random.split(key, 4)
        q, prior = z_space(params, x, c)
        z = q.sample(seed=keys[0])
        log_lik = CVAE.likelihood.distribution(CVAE.decode(params, z, c)).log_prob(x)
        return {"kl_z": q.log_prob(z) - prior.log_prob(z), "elbo_z": log_lik + prior.log_prob(z) - q.log_prob(z),
                "elbo": ELBO_FN(keys[1], params, c, x).elbo, "elbo_entropy_form": ENTROPY_FN(keys[2], params, c, x).elbo,
                "iwae_50": IWAE_FN(keys[3], params, c, x).bound}

    return {name: mean_se(values) for name, values in replicate(estimates, seed=2).items()}


def test_kl_and_elbo_against_distrax_and_z_space_monte_carlo(draws):
    terms = jax.jit(ELBO_FN)(jax.random.PRNGKey(1), PARAMS, C, X)
    distrax_kl = jax.jit(lambda params: z_space(params, X, C)[0].kl_divergence(z_space(params, X, C)[1]))(PARAMS)
    np.testing.assert_allclose(terms.kl, distrax_kl, rtol=1e-5)
    assert float(terms.kl) > 0.1  # q differs from the prior: the comparison is not 0 = 0
    kl_mean, kl_se = draws["kl_z"]
    assert abs(kl_mean - float(terms.kl)) <= 4 * kl_se, (kl_mean, float(terms.kl), kl_se)
    m_z, se_z = draws["elbo_z"]
    for name in ("elbo", "elbo_entropy_form"):
        m, se = draws[name]
        assert abs(m - m_z) <= 4 * np.hypot(se, se_z), (name, m, m_z)


@jax.jit
def log_px_given_c_by_quadrature(params, x, c):
    """log p(x|c) = log of the Riemann sum of p(x|z,c) p(z|c) over a 401 x 401 grid of z covering
    mu_p +- 9 sigma_p: a smooth (tanh decoder), Gaussian-tailed integrand, for which the sum converges
    exponentially fast in the number of points, and the prior mass outside is < 1e-18."""
    p = CVAE.prior_params(params, c)
    axes = [jnp.linspace(m - 9 * s, m + 9 * s, 401) for m, s in zip(p["mean"], jnp.exp(p["log_scale"]))]
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
    prior = z_space(params, x, c)[1]

    def log_joint(z):
        return CVAE.likelihood.distribution(CVAE.decode(params, z, c)).log_prob(x) + prior.log_prob(z)

    return jax.nn.logsumexp(jax.vmap(log_joint)(grid)) + jnp.log(cell)


def test_elbo_below_iwae_below_exact_log_likelihood(draws):
    exact = float(log_px_given_c_by_quadrature(PARAMS, X, C))
    (elbo, elbo_se), (iwae, iwae_se) = draws["elbo"], draws["iwae_50"]
    assert iwae - elbo > 4 * np.hypot(elbo_se, iwae_se), (elbo, iwae)
    assert iwae <= exact + 4 * iwae_se, (iwae, exact)
    big = jax.jit(make_cvae_iwae(CVAE, num_samples=5000, chunk_size=500))(jax.random.PRNGKey(7), PARAMS, C, X)
    assert abs(float(big.bound) - exact) <= 4 * float(big.stderr), (float(big.bound), exact, float(big.stderr))


def test_tiny_training_run_increases_the_elbo():
    dataset = data.load_dataset("digits")
    x, labels = dataset.train[:300], dataset.train_labels[:300]
    config = CVAEConfig(latent_dim=2, encoder_hidden=(16,), decoder_hidden=(16,), prior_hidden=(8,),
                        num_epochs=10, eval_elbo_samples=4)
    cvae = build_cvae(config, dataset.dim)
    result = train_cvae(cvae, config, x, labels, progress=False)
    assert len(result.history) == 10
    evaluator = make_evaluator(cvae, config, iwae_samples=2)
    c = one_hot_labels(labels, 10)
    start = cvae.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))  # train_cvae's initial params
    key = jax.random.PRNGKey(1)
    gain, se = mean_se(evaluator.elbo(key, result.state.params, jnp.asarray(x), c)
                       - evaluator.elbo(key, start, jnp.asarray(x), c))
    assert gain > 4 * se and gain > 1.0, (gain, se)


def test_generated_samples_have_the_right_shape_and_range():
    labels = np.array([0, 1, 2, 2])
    samples = generate(jax.random.PRNGKey(8), CVAE, PARAMS, labels)
    assert samples.shape == (4, 5)
    assert bool(jnp.all((samples >= 0) & (samples <= 1)))
    # same key and label, same draw; the condition changes the distribution
    np.testing.assert_array_equal(samples, generate(jax.random.PRNGKey(8), CVAE, PARAMS, labels))
    assert not np.allclose(samples[1], generate(jax.random.PRNGKey(8), CVAE, PARAMS, np.array([0, 0, 2, 2]))[1])


@pytest.mark.parametrize("labels, rows, message", [
    (np.array([0, 3]), None, r"labels must lie in \[0, 3\), got values in \[0, 3\]"),
    (np.array([-1, 2]), None, r"labels must lie in \[0, 3\)"),
    (np.array([[0], [1]]), None, r"1-D array of class indices, got shape \(2, 1\)"),
    (np.array([0.0, 1.5]), None, "must be integers"),
    (np.array([0, 1, 2]), 2, "got 3 labels for 2 data rows"),
])
def test_bad_labels_raise(labels, rows, message):
    with pytest.raises(ValueError, match=message):
        one_hot_labels(labels, 3, rows)


def test_bad_labels_are_caught_before_work():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        generate(jax.random.PRNGKey(0), CVAE, PARAMS, np.array([5]))
    with pytest.raises(ValueError, match="got 1 labels for 2 data rows"):
        train_cvae(CVAE, TINY, jnp.zeros((2, 5)), np.array([0]), progress=False)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        make_cvae_elbo(CVAE, num_samples=0)
