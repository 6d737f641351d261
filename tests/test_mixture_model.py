"""Gaussian mixture against brute force (scipy densities, Bayes' rule in float64), the tightness
identity of the enumeration ELBO, the score-function gradient against the exact gradient (4 Monte
Carlo standard errors), per-datapoint fits against the exact posterior, and the amortization gap."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from vi_jax import networks
from vi_jax.mixture_model import (GaussianMixture, amortized_mixture_vi, local_mixture_vi, make_mixture_elbo,
                                  make_posterior_fit, posterior_kl)
from vi_jax.train import make_epoch

MODEL = GaussianMixture(num_components=3, data_dim=2)
THETA = {"logits": jnp.array([0.2, -0.3, 0.1]),
         "means": jnp.array([[-1.0, 0.0], [1.0, 0.2], [0.0, 1.5]]),
         "log_scales": jnp.array([[0.0, -0.2], [-0.3, 0.1], [0.2, 0.0]])}
XS = jnp.array([[0.3, 0.4], [-2.0, 1.0], [1.5, -0.5], [0.0, 3.0]])
ETA = jnp.array([0.5, -1.0, 0.3])

# Per-datapoint fits: Adam with b2 = 0.9 (the gradient in eta_k shrinks like q_k, so the second-moment
# estimate must forget fast), learning rate decayed 0.1 -> 1e-3 over FIT_STEPS steps.
FIT_STEPS, FIT_LR, FIT_FINAL_LR = 1000, 0.1, 1e-3
FIT_OPTIMIZER = optax.adam(optax.exponential_decay(FIT_LR, FIT_STEPS, FIT_FINAL_LR / FIT_LR), b2=0.9)
# Near the optimum Adam moves each eta_k by at most ~lr per step, so |eta - eta*| = O(lr_final) (up to
# the softmax's shift) and KL ~ 1/2 d^T F d <= 1/2 K lr_final^2 (F = diag(q) - q q^T has eigenvalues <= 1),
# plus float32 rounding of the KL.
FIT_KL_TOL = 0.5 * MODEL.num_components * FIT_FINAL_LR ** 2 + 10 * np.finfo(np.float32).eps


def brute_force(theta, x):
    """(log p(x), p(z|x)) in float64 from scipy densities and Bayes' rule."""
    theta = jax.tree.map(lambda a: np.asarray(a, np.float64), theta)
    pi = np.exp(theta["logits"]) / np.exp(theta["logits"]).sum()
    joint = np.array([pi[k] * stats.multivariate_normal(theta["means"][k], np.diag(np.exp(2 * theta["log_scales"][k])))
                      .pdf(np.asarray(x, np.float64)) for k in range(len(pi))])
    return np.log(joint.sum()), joint / joint.sum()


@pytest.mark.parametrize("i", range(len(XS)))
def test_log_marginal_and_posterior_against_brute_force(i):
    log_px, posterior = brute_force(THETA, XS[i])
    np.testing.assert_allclose(MODEL.log_marginal(THETA, XS[i]), log_px, rtol=1e-6)
    probs = MODEL.posterior(THETA, XS[i]).probs
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, posterior, rtol=1e-5)


def test_enumeration_elbo_tightness_identity():
    elbo_fn = make_mixture_elbo(MODEL)
    for x in XS:
        log_px = MODEL.log_marginal(THETA, x)
        terms = elbo_fn(None, THETA, ETA, x)
        np.testing.assert_allclose(terms.elbo + posterior_kl(MODEL, THETA, ETA, x), log_px, rtol=1e-6)
        np.testing.assert_allclose(terms.elbo, terms.reconstruction - terms.kl, rtol=1e-6)
        assert posterior_kl(MODEL, THETA, ETA, x) > 1e-2  # q is not the posterior: the identity is not 0 = 0
        # the bound is tight at q = p(z|x), whose natural parameters are log p(x, z = k)
        optimum = elbo_fn(None, THETA, MODEL.log_joints(THETA, x), x).elbo
        np.testing.assert_allclose(optimum, log_px, rtol=1e-6)


def test_score_function_gradient_is_unbiased():
    """Mean of R independent score-function gradients (M = 2 draws each) against jax.grad of the
    enumeration ELBO, for eta and every theta leaf, within 4 standard errors per coordinate."""
    x, replicates = XS[0], 2000
    exact_fn, sf_fn = make_mixture_elbo(MODEL), make_mixture_elbo(MODEL, estimator="score_function", num_samples=2)
    exact_value, exact_grad = jax.value_and_grad(lambda t, e: exact_fn(None, t, e, x).elbo, argnums=(0, 1))(THETA, ETA)
    one = jax.value_and_grad(lambda k, t, e: sf_fn(k, t, e, x).elbo, argnums=(1, 2))
    values, grads = jax.jit(jax.vmap(one, (0, None, None)))(jax.random.split(jax.random.PRNGKey(0), replicates),
                                                            THETA, ETA)
    for estimate, exact in [(values, exact_value)] + list(zip(jax.tree.leaves(grads), jax.tree.leaves(exact_grad))):
        estimate = np.asarray(estimate, np.float64).reshape(replicates, -1)
        se = estimate.std(axis=0, ddof=1) / np.sqrt(replicates)
        assert np.all(se > 0)
        np.testing.assert_array_less(np.abs(estimate.mean(axis=0) - np.ravel(exact)), 4 * se)


def test_estimator_options_are_checked():
    with pytest.raises(ValueError, match="unknown mixture ELBO estimator 'reinforce'"):
        make_mixture_elbo(MODEL, estimator="reinforce")
    with pytest.raises(ValueError, match="num_samples >= 2"):
        make_mixture_elbo(MODEL, estimator="score_function", num_samples=1)
    fit = make_posterior_fit(MODEL, optax.adam(0.1), 1)
    with pytest.raises(ValueError, match=r"mixture data must have shape \[N, 2\], got \(4, 3\)"):
        fit(None, THETA, jnp.zeros((4, 3)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"eta_table must have shape \[N, K\] = \(4, 3\), got \(4, 2\)"):
        fit(None, THETA, jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"shape \[N, 2\], got \(1, 3\)"):
        amortized_mixture_vi(MODEL, networks.encoder((4,), 3), optax.adam(0.1)).init(None, jnp.zeros(3))


@pytest.fixture(scope="module")
def data():
    truth = MODEL.init(jax.random.PRNGKey(0), mean_scale=2.0)
    x, _ = jax.jit(MODEL.sample, static_argnums=2)(jax.random.PRNGKey(1), truth, 200)
    return truth, x


@jax.jit
def mean_kl(theta, eta, x):
    return jnp.mean(jax.vmap(posterior_kl, (None, None, 0, 0))(MODEL, theta, eta, x))


@jax.jit
def mean_elbo(theta, eta, x):
    return jnp.mean(jax.vmap(make_mixture_elbo(MODEL), (None, None, 0, 0))(None, theta, eta, x).elbo)


def test_per_datapoint_fit_reaches_the_exact_posterior(data):
    truth, x = data
    fit = jax.jit(make_posterior_fit(MODEL, FIT_OPTIMIZER, FIT_STEPS))
    start = jnp.zeros((x.shape[0], MODEL.num_components))
    eta = fit(jax.random.PRNGKey(2), truth, start, x)
    kl = jax.vmap(posterior_kl, (None, None, 0, 0))(MODEL, truth, eta, x)
    assert float(mean_kl(truth, start, x)) > 0.1  # the uniform start is far from the posteriors
    assert float(kl.max()) < FIT_KL_TOL, (float(kl.max()), FIT_KL_TOL)


def test_amortized_training_then_amortization_gap(data):
    """Encoder and theta trained jointly (EM-like) improve the ELBO; refitting each q_i from the
    encoder's output with theta fixed reaches the posterior, so KL(q_phi || p(z|x)) on average
    exceeds the per-datapoint KL: the amortization gap is L[q*] - L[q_phi] >= 0."""
    _, x = data
    encoder = networks.encoder((16,), MODEL.num_components, "tanh")
    algo = amortized_mixture_vi(MODEL, encoder, optax.adam(1e-2))
    state = algo.init(jax.random.PRNGKey(3), x[0])
    epoch = make_epoch(algo.step, 50)
    first = None
    for e in range(60):
        state, infos = epoch(jax.random.PRNGKey(e), state, x)
        first = infos.elbo[0] if first is None else first
    assert float(infos.elbo.mean()) > float(first) + 1.0, (float(first), infos.elbo)
    theta, eta_phi = state.params["model"], jax.jit(encoder.apply)(state.params["encoder"], x)
    eta_star = jax.jit(make_posterior_fit(MODEL, FIT_OPTIMIZER, FIT_STEPS))(jax.random.PRNGKey(4), theta, eta_phi, x)
    kl_phi, kl_star = float(mean_kl(theta, eta_phi, x)), float(mean_kl(theta, eta_star, x))
    assert kl_star < FIT_KL_TOL < kl_phi, (kl_star, kl_phi)


def test_local_training_moves_only_batch_rows_and_improves_elbo(data):
    """Joint training of theta and a q_i table on the first half of the rows: the other half, never
    in a batch, stays bit-identical; the ELBO of the trained rows rises."""
    _, x = data
    num_rows, half = x.shape[0], x.shape[0] // 2
    algo = local_mixture_vi(MODEL, num_rows, optax.adam(1e-2), optax.adam(0.1, b2=0.9),
                            estimator="score_function", num_samples=2)
    state = algo.init(jax.random.PRNGKey(3), x[0])
    before = float(mean_elbo(state.params["model"], state.params["local"][:half], x[:half]))
    untouched = np.asarray(state.params["local"][half:])
    epoch = make_epoch(algo.step, 20)
    for e in range(30):
        state, _ = epoch(jax.random.PRNGKey(e), state, (jnp.arange(half), x[:half]))
    np.testing.assert_array_equal(state.params["local"][half:], untouched)
    after = float(mean_elbo(state.params["model"], state.params["local"][:half], x[:half]))
    assert after > before + 1.0, (before, after)
