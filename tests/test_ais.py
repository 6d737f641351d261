"""AIS and the naive prior Monte-Carlo estimator against exact log p(x) (linear-Gaussian oracles)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blackjax.mcmc import hmc

from experiments.marginal_likelihood import MarginalLikelihoodConfig, oracle_model
from vi_jax import oracles
from vi_jax.ais import AisConfig, annealing_schedule, hmc_step, make_ais, prior_monte_carlo
from vi_jax.elbo import make_iwae, map_datapoints
from vi_jax.families import diagonal_gaussian, get_family
from vi_jax.local import tile_rows


def mean_error_and_stderr(estimate, exact):
    """Mean over datapoints of estimate - exact, and its standard error from their spread."""
    err = np.asarray(estimate, np.float64) - exact
    return err.mean(), err.std(ddof=1) / np.sqrt(err.size)


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_schedules_run_from_zero_to_one(kind):
    betas = annealing_schedule(kind, 50)
    assert betas.shape == (51,) and betas[0] == 0.0 and betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    np.testing.assert_allclose(betas + betas[::-1], 1.0, atol=1e-6)  # both are symmetric about t = T / 2
    if kind == "linear":
        np.testing.assert_allclose(np.diff(betas), 1 / 50, atol=1e-6)
    else:  # smaller steps at the ends than in the middle
        assert np.diff(betas)[0] < np.diff(betas)[25] / 5


@pytest.mark.parametrize("changes,match", [
    pytest.param({"schedule": "cosine"}, "schedule must be one of", id="schedule"),
    pytest.param({"num_chains": 0}, "num_chains must be an integer >= 1", id="no-chains"),
    pytest.param({"initial_step_size": 1.0}, "initial_step_size <= max_step_size", id="step-size"),
    pytest.param({"target_acceptance": 1.0}, r"target_acceptance must be a finite number in \(0, 1\)", id="target"),
])
def test_bad_config_is_named(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(AisConfig(), **changes).validate()


def perturbed(key, params, scale=0.3):
    """params + scale * N(0, 1) noise on every leaf: a proposal that is not the prior."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([p + scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def test_one_step_is_importance_sampling_with_q():
    """T = 1: no transition, log w = log p(x, z_0) - log q(z_0) with make_iwae's draws, for any
    family (here a coupling flow with random parameters)."""
    theta = oracles.linear_gaussian_params(jax.random.PRNGKey(0), 2, 5)
    model = oracles.linear_gaussian(**theta)
    family = get_family("flow", 2)
    x = oracles.sample_data(jax.random.PRNGKey(1), theta, 3)
    q = tile_rows(perturbed(jax.random.PRNGKey(3), family.init()), 3)
    key = jax.random.PRNGKey(2)
    out = jax.jit(lambda k: map_datapoints(make_ais(model, family, AisConfig(num_chains=50, num_steps=1)),
                                           k, theta, q, x))(key)
    ref = jax.jit(lambda k: map_datapoints(make_iwae(model, family, num_samples=50, chunk_size=50),
                                           k, theta, q, x))(key)
    np.testing.assert_allclose(out.log_px, ref.bound, rtol=1e-5)
    np.testing.assert_allclose(out.stderr, ref.stderr, rtol=1e-4)
    assert np.all(np.isnan(out.acceptance_rate))


def test_one_step_from_the_prior_is_the_naive_estimator():
    """T = 1 with q = p(z) (the diagonal Gaussian family's init) is `prior_monte_carlo`."""
    theta = oracles.linear_gaussian_params(jax.random.PRNGKey(0), 2, 5)
    model = oracles.linear_gaussian(**theta)
    family = diagonal_gaussian(2)
    x = oracles.sample_data(jax.random.PRNGKey(1), theta, 3)
    key = jax.random.PRNGKey(2)
    out = jax.jit(lambda k: map_datapoints(make_ais(model, family, AisConfig(num_chains=50, num_steps=1)),
                                           k, theta, tile_rows(family.init(), 3), x))(key)
    naive = jax.jit(lambda k: prior_monte_carlo(k, model, theta, x, num_samples=50))(key)
    np.testing.assert_allclose(out.log_px, naive.bound, rtol=1e-5)
    np.testing.assert_allclose(out.stderr, naive.stderr, rtol=1e-4)


@pytest.fixture(scope="module")
def poor_prior_case():
    """d = 20 oracle whose posteriors are narrow (sd ~0.25) and ~1.3 nats per dimension from the
    prior in KL: AIS from the prior and from q*_FFG, and the naive estimator (IWAE from the
    prior) with AIS's budget of log p(x, z) evaluations."""
    d, n = 20, 8
    theta = oracle_model(jax.random.PRNGKey(20), d)
    model = oracles.linear_gaussian(**theta)
    family = diagonal_gaussian(d)
    x = oracles.sample_data(jax.random.PRNGKey(1), theta, n)
    config = AisConfig(num_chains=16, num_steps=200)
    run = jax.jit(lambda k, q: map_datapoints(make_ais(model, family, config), k, theta, q, x))
    q_star = {k: jnp.asarray(v, jnp.float32) for k, v in oracles.optimal_ffg(theta, x).items()}
    key = jax.random.PRNGKey(3)
    return {"exact": oracles.log_marginal(theta, x), "ais_prior": run(key, tile_rows(family.init(), n)),
            "ais_q_star": run(key, q_star),
            "iwae_prior": jax.jit(lambda k: prior_monte_carlo(
                k, model, theta, x, num_samples=config.likelihood_evaluations(), chunk_size=2000))(key)}


@pytest.mark.xdist_group("poor_prior_case")
@pytest.mark.parametrize("proposal", ["ais_prior", "ais_q_star"])
def test_ais_is_within_its_standard_errors_of_exact_log_px(poor_prior_case, proposal):
    out, exact = poor_prior_case[proposal], poor_prior_case["exact"]
    error = np.mean(np.asarray(out.log_px, np.float64) - exact)
    stderr = np.sqrt(np.sum(np.asarray(out.stderr, np.float64) ** 2)) / exact.size
    assert abs(error) <= 4 * stderr, (proposal, error, stderr)
    assert np.all((0.3 < np.asarray(out.acceptance_rate)) & (np.asarray(out.acceptance_rate) < 1.0))


@pytest.mark.xdist_group("poor_prior_case")
def test_ais_beats_prior_importance_sampling_at_equal_cost(poor_prior_case):
    """Same number of log p(x, z) evaluations: IWAE from the prior is tens of nats low, AIS from
    the prior is not (both mean errors with 4 standard errors of their spread over datapoints)."""
    exact = poor_prior_case["exact"]
    ais_error, ais_se = mean_error_and_stderr(poor_prior_case["ais_prior"].log_px, exact)
    iwae_error, iwae_se = mean_error_and_stderr(poor_prior_case["iwae_prior"].bound, exact)
    assert abs(ais_error) + 4 * ais_se < -iwae_error - 4 * iwae_se, (ais_error, ais_se, iwae_error, iwae_se)


def test_naive_estimator_degrades_with_dimension_while_q_star_stays_accurate():
    """On oracles with narrow posteriors (data far from the prior in KL: W = 4 Q), the naive
    estimator's error grows with the latent dimension (each step beyond 4 standard errors of
    both means over datapoints), while importance sampling with q*_FFG (finite chi^2, as
    asserted) at the same K stays within 4 standard errors of exact."""
    naive, n, k = [], 40, 1000
    for d in (1, 5, 20, 50):
        theta = oracle_model(jax.random.PRNGKey(d), d, MarginalLikelihoodConfig(scale=4.0))
        model = oracles.linear_gaussian(**theta)
        x = oracles.sample_data(jax.random.PRNGKey(1), theta, n)
        exact = oracles.log_marginal(theta, x)
        family = diagonal_gaussian(d)
        iwae = jax.jit(lambda q: map_datapoints(make_iwae(model, family, num_samples=k), jax.random.PRNGKey(2),
                                                theta, q, x))
        # importance sampling with q = p(z) is the naive estimator (prior_monte_carlo, tested above)
        naive.append(mean_error_and_stderr(iwae(tile_rows(family.init(), n)).bound, exact))
        q_star = {name: jnp.asarray(v, jnp.float32) for name, v in oracles.optimal_ffg(theta, x).items()}
        assert np.all(np.isfinite(oracles.chi_square_to_posterior(theta, x, q_star)))
        error, stderr = mean_error_and_stderr(iwae(q_star).bound, exact)
        assert abs(error) <= 4 * stderr + 1e-3 * d, (d, error, stderr)  # + float32 rounding of log p(x, z)
    for (error, stderr), (next_error, next_stderr) in zip(naive, naive[1:]):
        assert -next_error > -error + 4 * np.hypot(stderr, next_stderr), naive


@jax.jit
def hmc_chains(key, z, mean, cov_chol, step_size):
    """Three HMC transitions (10 leapfrog steps) of each chain (row of z) on N(mean, L L^T):
    (final z, acceptance probabilities [3, chains])."""
    log_density = lambda z_: -0.5 * jnp.sum(jax.scipy.linalg.solve_triangular(cov_chol, z_ - mean, lower=True) ** 2)

    def transition(states, t):
        keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), t))(jnp.arange(z.shape[0]))
        return jax.vmap(lambda k, s: hmc_step(k, s, log_density, step_size, 10))(keys, states)

    states = jax.vmap(lambda z_: hmc.init(z_, log_density))(z)
    states, accept = jax.lax.scan(transition, states, jnp.arange(3))
    return states.position, accept


CHAINS, DIM = 2000, 10  # the shapes of every hmc_chains call (one compilation)


def test_hmc_step_leaves_a_correlated_gaussian_invariant():
    """Chains started at exact draws of N(m, S) (d = 10, random rotation, standard deviations
    0.3 ... 1.5 along the axes) stay N(m, S): every mean and covariance entry within 4 standard
    errors. step / smallest sd = 1.2 makes the leapfrog error large (acceptance well below 1):
    without a correct accept/reject step the variance would drift by tens of percent."""
    rotation, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.PRNGKey(5), (DIM, DIM)), np.float64))
    cov = rotation @ np.diag(np.geomspace(0.3, 1.5, DIM) ** 2) @ rotation.T
    mean = jnp.linspace(-1.0, 1.0, DIM)
    chol = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
    z0 = mean[None, :] + jax.random.normal(jax.random.PRNGKey(0), (CHAINS, DIM)) @ chol.T
    z, accept = hmc_chains(jax.random.PRNGKey(1), z0, mean, chol, 0.36)
    z = np.asarray(z, np.float64)
    assert 0.3 < float(np.mean(accept)) < 0.9
    se_mean = np.sqrt(np.diag(cov) / CHAINS)
    assert np.all(np.abs(z.mean(axis=0) - np.asarray(mean)) <= 4 * se_mean)
    # se of a sample covariance entry: sqrt((S_jj S_kk + S_jk^2) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / CHAINS)
    assert np.all(np.abs(np.cov(z.T) - cov) <= 4 * se_cov), np.abs(np.cov(z.T) - cov) / se_cov


def test_step_size_adapts_toward_the_target_acceptance():
    """Two targets (AIS from the prior to the posteriors N(0, diag(s^2)) and N(0, diag((s / 20)^2)),
    s log-spaced in [0.3, 1], d = 10; unequal scales smooth out the resonances of fixed-length
    leapfrog trajectories), both started at step size 0.05: far too small for the first
    (acceptance ~1), far too large for the second (acceptance ~0). With identity mass, HMC on a
    rescaled target is the same chain at a rescaled step size, so adaptation must end with step
    sizes in about the ratio 20 : 1, and fresh transitions at the final step sizes must accept
    at about 0.65 (a bracket of +-0.2: the rule keeps jittering by factors of 1 +- adapt_rate)."""
    d = DIM
    sds = [np.geomspace(0.3, 1.0, d), np.geomspace(0.3, 1.0, d) / 20]
    thetas = [{"W": jnp.diag(jnp.asarray(np.sqrt(1 / s**2 - 1), jnp.float32)), "b": jnp.zeros(d),
               "log_psi": jnp.zeros(d)} for s in sds]  # posterior precision 1 + W_jj^2 = 1 / s_j^2
    model = oracles.linear_gaussian(**thetas[0])
    family = diagonal_gaussian(d)
    config = AisConfig(num_chains=4, num_steps=200, initial_step_size=0.05, max_step_size=5.0, adapt_rate=0.05)
    ais = jax.jit(jax.vmap(make_ais(model, family, config), in_axes=(None, 0, None, None)))
    out = ais(jax.random.PRNGKey(0), jax.tree.map(lambda *t: jnp.stack(t), *thetas), family.init(), jnp.zeros(d))
    step = np.asarray(out.step_size)
    assert step[0] / step[1] == pytest.approx(20, rel=0.3), step
    for s, final in zip(sds, step):
        z0 = jax.random.normal(jax.random.PRNGKey(1), (CHAINS, d)) * jnp.asarray(s, jnp.float32)[None, :]
        chol = jnp.diag(jnp.asarray(s, jnp.float32))
        before = float(np.mean(hmc_chains(jax.random.PRNGKey(2), z0, jnp.zeros(d), chol, 0.05)[1]))
        after = float(np.mean(hmc_chains(jax.random.PRNGKey(2), z0, jnp.zeros(d), chol, final)[1]))
        assert abs(after - 0.65) < 0.2 < abs(before - 0.65), (s, before, after, final)
