"""Exact oracles, and the library's estimators and optimisers checked against them.

Closed forms of the linear-Gaussian model against independent computations (a direct
multivariate-normal density, the tightness identity, stationarity of q*_FFG); Monte-Carlo ELBO
and IWAE against the closed forms (4 standard errors); the per-datapoint optimiser and amortized
training against the known optima; the quadrature oracle against the closed form when the
decoder is linear. Tolerances are derived in each test's docstring.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from vi_jax import networks, oracles
from vi_jax.elbo import make_elbo, make_iwae
from vi_jax.families import diagonal_gaussian
from vi_jax.gap import GapProtocol
from vi_jax.local import LocalFitConfig, make_local_fit, tile_rows


def model_and_data(latent_dim, data_dim, n, seed=0):
    theta = oracles.linear_gaussian_params(jax.random.PRNGKey(seed), latent_dim, data_dim)
    x = np.asarray(oracles.sample_data(jax.random.PRNGKey(seed + 100), theta, n))
    return oracles.linear_gaussian(**theta), theta, x


def random_q(rng, n, d, full=False):
    mean = rng.normal(size=(n, d))
    if not full:
        return {"mean": mean, "log_scale": rng.normal(-1.0, 0.5, size=(n, d))}
    a = rng.normal(size=(n, d, d))
    return {"mean": mean, "cov": a @ np.swapaxes(a, 1, 2) / d + 0.05 * np.eye(d)}


def mean_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(len(values))


@pytest.fixture(scope="module")
def default_model():
    """The oracle_gap default shape: z in R^4, x in R^16."""
    return model_and_data(4, 16, 50)


# --- closed forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("latent_dim,data_dim", [(1, 3), (4, 16), (3, 3)], ids=["1x3", "4x16", "3x3"])
def test_log_marginal_equals_direct_multivariate_normal_density(latent_dim, data_dim):
    _, theta, x = model_and_data(latent_dim, data_dim, 20)
    direct = stats.multivariate_normal(np.asarray(theta["b"], np.float64),
                                       oracles.marginal_covariance(theta)).logpdf(x)
    np.testing.assert_allclose(oracles.log_marginal(theta, x), direct, rtol=1e-12, atol=1e-10)
    assert np.isclose(oracles.log_marginal(theta, x[0]), direct[0], rtol=1e-12)  # one row in, one value out


@pytest.mark.parametrize("full", [False, True], ids=["diagonal-q", "full-covariance-q"])
def test_log_px_equals_elbo_plus_kl_for_random_q(default_model, full):
    """log p(x) = L(x; q) + KL(q || p(z|x)): three independent closed forms (the marginal by
    Woodbury, the ELBO from expectations, the Gaussian KL) agree to float64 rounding."""
    _, theta, x = default_model
    q = random_q(np.random.default_rng(0), len(x), 4, full)
    elbo, kl = oracles.gaussian_elbo(theta, x, q), oracles.kl_to_posterior(theta, x, q)
    np.testing.assert_allclose(elbo + kl, oracles.log_marginal(theta, x), rtol=0, atol=1e-9)
    assert np.all(kl > 0)
    post = oracles.posterior(theta, x)  # the bound is tight at the posterior
    np.testing.assert_allclose(oracles.gaussian_elbo(theta, x, {"mean": post.mean, "cov": post.cov}),
                               oracles.log_marginal(theta, x), rtol=0, atol=1e-9)


def test_optimal_ffg_is_stationary_and_its_gap_is_the_closed_form(default_model):
    """q*_FFG: the closed-form ELBO's gradient vanishes there (central differences, step 1e-5,
    error O(step^2)), every perturbation lowers it, and log p(x) - L[q*] is the x-independent
    closed form 1/2 (sum log Lambda_jj - log det Lambda) > 0."""
    _, theta, x = default_model
    q_star = oracles.optimal_ffg(theta, x[:5])
    best = oracles.gaussian_elbo(theta, x[:5], q_star)
    step = 1e-5
    for name in ("mean", "log_scale"):
        for j in range(4):
            bump = np.zeros((5, 4))
            bump[:, j] = step
            up = oracles.gaussian_elbo(theta, x[:5], q_star | {name: q_star[name] + bump})
            down = oracles.gaussian_elbo(theta, x[:5], q_star | {name: q_star[name] - bump})
            np.testing.assert_allclose((up - down) / (2 * step), 0.0, atol=1e-5)
            assert np.all(up < best) and np.all(down < best)
    gap = oracles.log_marginal(theta, x[:5]) - best
    np.testing.assert_allclose(gap, oracles.ffg_approximation_gap(theta), atol=1e-10)
    np.testing.assert_allclose(oracles.kl_to_posterior(theta, x[:5], q_star), gap, atol=1e-10)
    assert oracles.ffg_approximation_gap(theta) > 0.05


def test_ffg_elbo_gradient_equals_central_differences_of_the_closed_form_elbo(default_model):
    """At random diagonal q (5 rows), every coordinate of ffg_elbo_gradient against central
    differences of gaussian_elbo (step 1e-5: truncation O(step^2), rounding ~1e-16 / step)."""
    _, theta, x = default_model
    q = random_q(np.random.default_rng(1), 5, 4)
    exact = oracles.ffg_elbo_gradient(theta, x[:5], q)
    step = 1e-5
    for name in ("mean", "log_scale"):
        for j in range(4):
            bump = np.zeros((5, 4))
            bump[:, j] = step
            up = oracles.gaussian_elbo(theta, x[:5], q | {name: q[name] + bump})
            down = oracles.gaussian_elbo(theta, x[:5], q | {name: q[name] - bump})
            np.testing.assert_allclose(exact[name][:, j], (up - down) / (2 * step), rtol=1e-6, atol=1e-6)
    one = oracles.ffg_elbo_gradient(theta, x[0], {k: v[0] for k, v in q.items()})  # one row in, one out
    np.testing.assert_allclose(one["mean"], exact["mean"][0], rtol=1e-12)


def test_model_is_the_closed_form_model_and_data_are_seeded(default_model):
    """The LatentVariableModel's float32 log-joint equals the float64 formula (relative 1e-6);
    init returns fresh copies of the true parameters; sample_data is deterministic given the key
    and its draws have mean b and covariance W W^T + diag(psi) (4 standard errors)."""
    model, theta, x = default_model
    init = model.init(jax.random.PRNGKey(5))
    assert all(np.array_equal(init[k], theta[k]) and init[k] is not theta[k] for k in theta)
    z = jnp.asarray(np.random.default_rng(1).normal(size=4), jnp.float32)
    W, b, psi = (np.asarray(theta[k], np.float64) for k in ("W", "b", "log_psi"))
    psi = np.exp(psi)
    mu = W @ np.asarray(z, np.float64) + b
    expected = (stats.multivariate_normal(mu, np.diag(psi)).logpdf(x[0])
                + stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(np.asarray(z, np.float64)))
    value = model.log_joint(theta, jnp.asarray(x[0]), z)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)

    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(oracles.sample_data(key, theta, 10), oracles.sample_data(key, theta, 10))
    draws = np.asarray(oracles.sample_data(key, theta, 20000), np.float64)
    mean, se = mean_se(draws)
    assert np.all(np.abs(mean - b) <= 4 * se)
    cov = oracles.marginal_covariance(theta)
    centred = draws - b
    products = centred[:, :, None] * centred[:, None, :]  # unbiased for C, elementwise
    m, s = mean_se(products)
    assert np.all(np.abs(m - cov) <= 4 * s + 1e-12)


def test_best_linear_encoder_outputs_q_star_exactly(default_model):
    """networks.encoder(hidden=(), 2d) with the closed-form parameters outputs q*_FFG(x): the
    amortization gap is 0 up to the float32 rounding of its parameters (~1e-10 nats)."""
    _, theta, x = default_model
    encoder = networks.encoder((), 8)
    q = jax.vmap(diagonal_gaussian(4).unflatten)(encoder.apply(oracles.best_linear_encoder(theta), jnp.asarray(x)))
    gap = oracles.amortization_gap(theta, x, {k: np.asarray(v, np.float64) for k, v in q.items()})
    assert np.all(np.abs(gap) < 1e-8), gap.max()


# --- Monte-Carlo estimators against the closed forms ----------------------------------------

@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_monte_carlo_elbo_is_unbiased(default_model, kl):
    """make_elbo on the oracle model, 4000 one-sample replicates per datapoint: each mean is
    within 4 standard errors of the closed-form ELBO (all 5 datapoints at once: a false alarm
    rate of about 5 * 6e-5)."""
    model, theta, x = default_model
    family = diagonal_gaussian(4)
    q = random_q(np.random.default_rng(2), 5, 4)
    q32 = {k: jnp.asarray(v, jnp.float32) for k, v in q.items()}
    elbo = make_elbo(model, family, kl=kl)
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    draws = jax.jit(jax.vmap(jax.vmap(lambda k, qi, xi: elbo(k, theta, qi, xi).elbo, (None, 0, 0)),
                             (0, None, None)))(keys, q32, jnp.asarray(x[:5]))
    mean, se = mean_se(draws)
    exact = oracles.gaussian_elbo(theta, x[:5], {k: np.asarray(v, np.float64) for k, v in q32.items()})
    assert np.all(np.abs(mean - exact) <= 4 * se), (mean - exact, se)


def test_iwae_rises_to_log_px_from_below():
    """IWAE_K with a proposal wider than the posterior (so the weights have finite variance):
    E[L_K] increases with K, stays below log p(x) (within 4 standard errors), and its bias
    log p(x) - E[L_K] is chi^2 / (2K) + O(1/K^2) with chi^2 = chi^2(posterior || q) in closed
    form; at K = 1000 the O(1/K^2) remainder is < 1e-5 nats, so the bias must match chi^2/(2K)
    within 4 standard errors plus that."""
    model, theta, x = model_and_data(2, 5, 1, seed=3)
    post = oracles.posterior(theta, x[0])
    scale = 1.0 / np.sqrt(np.linalg.eigvalsh(post.precision).min())  # Sigma_q = scale^2 I <= 2 S
    q = {"mean": post.mean, "log_scale": np.full(2, np.log(scale))}
    chi2 = float(oracles.chi_square_to_posterior(theta, x[0], q))
    assert np.isfinite(chi2)
    log_px = float(oracles.log_marginal(theta, x[0]))
    q32 = {k: jnp.asarray(v, jnp.float32) for k, v in q.items()}
    family = diagonal_gaussian(2)
    means = []
    for k, replicates in ((1, 4000), (10, 2000), (1000, 500)):
        iwae = make_iwae(model, family, num_samples=k)
        keys = jax.random.split(jax.random.PRNGKey(k), replicates)
        bounds = jax.jit(jax.vmap(lambda key: iwae(key, theta, q32, jnp.asarray(x[0])).bound))(keys)
        means.append((k, *mean_se(bounds)))
    for (_, lo, lo_se), (_, hi, hi_se) in zip(means, means[1:]):
        assert hi > lo - 4 * np.hypot(lo_se, hi_se), means
    for k, m, se in means:
        assert m <= log_px + 4 * se, (k, m, log_px)
    k, m, se = means[-1]
    assert abs((log_px - m) - chi2 / (2 * k)) <= 4 * se + 1e-5, (log_px - m, chi2 / (2 * k), se)
    assert (log_px - means[0][1]) > 20 * (log_px - m)  # from the ELBO's gap to ~nothing


# --- the per-datapoint optimiser and amortized training against the optima -----------------

def test_local_fit_reaches_q_star_from_prior_and_from_encoder(default_model):
    """make_local_fit reaches q*_FFG within 1e-3 nats from the prior and from an encoder.

    With a constant step size Adam on one-sample gradients hovers around the optimum (its
    ELBO deficit grows with learning_rate x gradient noise; the reference protocol, lr 1e-3
    and one sample, hovers ~1e-2 nats below and stops earlier still, see the next test), so
    the fit uses 10 samples per step at lr 1e-2 and divides each row's learning rate by 10 at
    each of 3 plateaus before the row counts as converged (one make_local_fit call; measured
    on 20 rows: 3e-4 nats short on average, 7e-4 at most). Tolerance: the exact ELBO
    deficit <= 1e-3 nats for every row. Since L(q*) - L(q) = 1/2 dmu^T Lambda dmu +
    sum_j f(e^{2 ds_j}) with f(t) = (t - 1 - log t) / 2 ~ ds_j^2, that bounds each mean error by
    sqrt(2e-3 S_jj) and each log-scale error by ~sqrt(1e-3) = 0.032, which are checked too.
    The encoder start: the best restricted encoder (sees 12 of 16 inputs), 0.07-0.9 nats away."""
    model, theta, x = default_model
    x = x[:10]
    family = diagonal_gaussian(4)
    affine, _ = oracles.optimal_affine_encoder(theta, default_model[2], tuple(range(12)))
    encoder = oracles.LinearEncoder(8, tuple(range(12)))
    from_encoder = jax.vmap(family.unflatten)(encoder.apply(encoder.params_from_affine(affine), jnp.asarray(x)))
    table = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), tile_rows(family.init(), len(x)), from_encoder)
    data = jnp.asarray(np.concatenate([x, x]))
    start = {k: np.asarray(v, np.float64) for k, v in table.items()}
    initial = oracles.amortization_gap(theta, np.asarray(data), start)[len(x):]
    assert initial.mean() > 0.2 and np.all(initial > 0.05), initial
    config = LocalFitConfig.named("accurate")  # the named protocol this test guards
    assert config == LocalFitConfig(learning_rate=1e-2, num_samples=10, lr_reductions=3)
    result = jax.jit(make_local_fit(model, family, config))(jax.random.PRNGKey(0), theta, table, data)
    assert bool(result.converged.all())
    table = result.params
    fitted = {k: np.asarray(v, np.float64) for k, v in table.items()}
    q_star = oracles.optimal_ffg(theta, np.asarray(data))
    deficit = oracles.amortization_gap(theta, np.asarray(data), fitted)
    assert np.all(deficit >= -1e-9) and np.all(deficit <= 1e-3), deficit
    s_diag = np.diag(oracles.posterior(theta, x[0]).cov)
    assert np.all(np.abs(fitted["mean"] - q_star["mean"]) <= np.sqrt(2e-3 * s_diag))
    assert np.all(np.abs(fitted["log_scale"] - q_star["log_scale"]) <= 0.04)


def test_reference_protocol_local_fit_accuracy(default_model):
    """What the gap protocol's own local fit (Cremer et al.: Adam lr 1e-3, one sample, stop
    when the 100-step average has not improved for 10 checks) reaches from an encoder-like start
    (q*_FFG with log-scales 0.3 too wide: 0.44 nats below): measured 0.019 (mean) / 0.041 (max)
    nats short of q*, i.e. not 1e-3. The constant step size leaves Adam hovering ~0.01 nats
    below the optimum, and the stopping rule compares 100-step averages whose noise (sd ~0.16
    nats) exceeds the late improvements, so rows stop early. Guarded: within 0.05 nats on
    average, and never above q*."""
    model, theta, x = default_model
    x = x[:20]
    family = diagonal_gaussian(4)
    q_star = oracles.optimal_ffg(theta, x)
    start = {"mean": jnp.asarray(q_star["mean"], jnp.float32),
             "log_scale": jnp.asarray(q_star["log_scale"] + 0.3, jnp.float32)}
    result = jax.jit(make_local_fit(model, family, GapProtocol().local_fit))(
        jax.random.PRNGKey(0), theta, start, jnp.asarray(x))
    deficit = oracles.amortization_gap(theta, x, {k: np.asarray(v, np.float64) for k, v in result.params.items()})
    assert np.all(deficit >= -1e-9) and deficit.mean() <= 0.05, deficit


def test_encoder_only_freezes_the_decoder():
    optimizer = oracles.encoder_only(optax.sgd(1.0))
    params = {"encoder": {"w": jnp.zeros(3)}, "decoder": {"W": jnp.zeros((2, 2))}}
    grads = {"encoder": {"w": jnp.ones(3)}, "decoder": {"W": jnp.ones((2, 2))}}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert np.all(updates["decoder"]["W"] == 0) and np.all(updates["encoder"]["w"] == -1)


def test_amortized_training_drives_the_amortization_gap_to_its_closed_form(default_model):
    """Amortized VI (vi_jax.train.amortized_vi, decoder frozen at the true model by
    `encoder_only`) of a linear encoder drives its exact amortization gap to ~0, and of a
    restricted encoder (sees 12 of the 16 coordinates) to the closed-form optimum of its class
    on the training set, from above. 6000 Adam steps decaying 3e-2 -> 1e-4 leave the trained
    encoders ~0.006 nats above the optimum (Monte-Carlo noise of the last steps; half as many
    steps leave 0.02); tolerance 0.03 nats, against a restricted optimum of 0.4 nats and an
    FFG approximation gap of 0.37."""
    model, theta, _ = default_model
    x = np.asarray(oracles.sample_data(jax.random.PRNGKey(11), theta, 100))
    family = diagonal_gaussian(4)
    for visible in (None, tuple(range(12))):
        encoder = oracles.LinearEncoder.standardized(x, 8, visible)
        params = oracles.train_encoder(jax.random.PRNGKey(3), model, family, encoder, x, num_epochs=600,
                                       batch_size=10)
        q = jax.vmap(family.unflatten)(encoder.apply(params, jnp.asarray(x)))
        gap = oracles.amortization_gap(theta, x, {k: np.asarray(v, np.float64) for k, v in q.items()}).mean()
        _, best = oracles.optimal_affine_encoder(theta, x, visible)
        assert best - 1e-9 <= gap <= best + 0.03, (visible, gap, best)
        if visible is not None:
            assert best > 0.2  # a restricted encoder keeps a clearly positive gap


# --- quadrature oracle -----------------------------------------------------------------------

@pytest.mark.parametrize("latent_dim", [1, 2])
def test_quadrature_agrees_with_closed_form_for_a_linear_decoder(latent_dim):
    """With a linear decoder every quadrature quantity has a closed form. Tolerances: log p(x)
    1e-6 (the coarse-grid treatment of the last 1e-6 of mass is ~1e-7 accurate), posterior
    moments 1e-5, ELBOs of arbitrary q 1e-9 (trapezoid rule on a Gaussian times a quadratic),
    q*_FFG's parameters 1e-6 and its ELBO 1e-9 (Newton to convergence, then polished on a grid
    centred on it); a brute-force 121^d grid (spacing 0.1, below the posterior widths) 1e-9."""
    model, theta, x = model_and_data(latent_dim, 5, 8, seed=latent_dim)
    config = oracles.QuadratureConfig(coarse_points=121, points=41, elbo_points=41, polish_points=41,
                                      fit_iterations=6)
    quad = oracles.quadrature_log_marginal(model, theta, x, config)
    exact = oracles.log_marginal(theta, x)
    np.testing.assert_allclose(quad.log_px, exact, rtol=0, atol=1e-6)
    assert np.all(quad.log_px_error < 1e-3) and np.all(quad.edge_mass < 1e-5)
    post = oracles.posterior(theta, x)
    np.testing.assert_allclose(quad.posterior_mean, post.mean, atol=1e-5)
    np.testing.assert_allclose(quad.posterior_cov, np.broadcast_to(post.cov, quad.posterior_cov.shape), atol=1e-5)
    np.testing.assert_allclose(quad.posterior_weights().sum(axis=1), 1.0 - quad.outside_mass, atol=1e-12)

    brute = oracles.grid_log_marginal(model, theta, x, box=6.0, points=config.coarse_points)
    np.testing.assert_allclose(brute.log_px, exact, rtol=0, atol=1e-9)

    q = random_q(np.random.default_rng(4), len(x), latent_dim)
    q["mean"] = post.mean + 0.3 * q["mean"]
    elbo = oracles.quadrature_elbo(model, theta, x, q, points=41)
    np.testing.assert_allclose(elbo.elbo, oracles.gaussian_elbo(theta, x, q), rtol=0, atol=1e-9)

    fit = oracles.quadrature_optimal_ffg(model, theta, x, quad, config, starts=[q])
    q_star = oracles.optimal_ffg(theta, x)
    np.testing.assert_allclose(fit.params["mean"], q_star["mean"], atol=1e-6)
    np.testing.assert_allclose(fit.params["log_scale"], q_star["log_scale"], atol=1e-6)
    np.testing.assert_allclose(fit.elbo, oracles.gaussian_elbo(theta, x, q_star), rtol=0, atol=1e-9)
    chi2 = oracles.quadrature_chi_square(quad, q_star)
    expected = oracles.chi_square_to_posterior(theta, x, q_star)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(chi2[finite], expected[finite], atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    pytest.param({}, "1-D or 2-D latent", id="3-d-latent"),
    pytest.param({"points": 40}, "points must be odd", id="even-points"),
])
def test_quadrature_refuses_what_it_cannot_do(kwargs, match):
    model, theta, x = model_and_data(3 if not kwargs else 2, 4, 2)
    with pytest.raises(ValueError, match=match):
        oracles.quadrature_log_marginal(model, theta, x, oracles.QuadratureConfig(**kwargs))
