"""Coupling-flow family: change of variables against a brute-force Jacobian, normalisation and
moments by quadrature, the parameter count, and use in the ELBO / local fits (what every
family must do is checked in test_families.py, what every flow does in test_families_flows.py).

LOG_TOL: log-densities of order 1-10 computed along two different float32 paths (forward vs
inverse pass, or an autodiff Jacobian vs the layers' own log-dets) are each a few dozen
operations of relative error eps = 1.2e-7, so they agree to ~1e-5; 1e-4 leaves a factor 10,
and the log-dets that a bug would drop or flip exceed it by >1000x here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax.distributions import sample_and_log_prob
from vi_jax.elbo import make_elbo, make_iwae
from vi_jax.families import coupling_flow, diagonal_gaussian
from vi_jax.families.flows import MAX_LOG_SCALE
from vi_jax.local import LocalFitConfig, make_local_fit, tile_rows

LOG_TOL = 1e-4
GRID_HALF_WIDTH, GRID_POINTS = 8.0, 321  # spacing h = 0.05
NUM_DRAWS = 100_000
NUM_REPLICATES = 10_000  # single-draw ELBO estimates per row
FIT_REPLICATES = 8  # independent local fits per datapoint


def perturbed(family, seed, scale=2.0):
    """Non-identity params from a fixed seed: a random base, conditioner output weights
    ~ scale * N(0, 1) and output biases ~ 0.2 N(0, 1). In 2-D with seed 1, log|det dT/du| then
    ranges over about [-1.3, 0.3], z_1 and z_2 correlate (~0.8), and no draw of 100k leaves
    the quadrature box."""
    rng = np.random.default_rng(seed)
    params = family.init()
    d = family.latent_dim
    base = {"mean": 0.5 * rng.standard_normal(d), "log_scale": 0.3 * rng.standard_normal(d)}
    flow = [dict(layer, w_out=scale * rng.standard_normal(layer["w_out"].shape),
                 b_out=0.2 * rng.standard_normal(layer["b_out"].shape))
            for layer in params["flow"]]
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {"base": base, "flow": flow})


def expected_num_params(latent_dim, num_layers, hidden):
    """Independent count: 2d for the base, and per layer |A| H + H + H 2|B| + 2|B| with the
    kept set A of parity l % 2 and B the rest."""
    total = 2 * latent_dim
    for layer in range(num_layers):
        kept = len(range(layer % 2, latent_dim, 2))
        moved = latent_dim - kept
        total += kept * hidden + hidden + hidden * 2 * moved + 2 * moved
    return total


@pytest.fixture(scope="module")
def q2():
    family = coupling_flow(2)
    return family.distribution(perturbed(family, 1))


@pytest.fixture(scope="module")
def grid(q2):
    """Midpoint quadrature on [-8, 8]^2: grid points [P, P, 2], spacing h, q(z) (float64)."""
    axis = np.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS)
    points = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1)
    log_q = jax.jit(jax.vmap(q2.log_prob))(jnp.asarray(points.reshape(-1, 2), jnp.float32))
    return points, axis[1] - axis[0], np.exp(np.asarray(log_q, np.float64)).reshape(points.shape[:2])


@pytest.fixture(scope="module")
def draws(q2):
    keys = jax.random.split(jax.random.PRNGKey(7), NUM_DRAWS)
    z, log_q = jax.jit(jax.vmap(lambda k: sample_and_log_prob(q2, k)))(keys)
    return np.asarray(z, np.float64), np.asarray(log_q)


def quadrature(values, h):
    """(integral, expected error) of the midpoint rule on the grid. Per cell of area h^2 the
    error is h^2/24 (f_xx + f_yy) h^2, so in total at most h^2/24 (int|f_xx| + int|f_yy|),
    the integrals of |f''| taken from second differences (|D2 f| / h^2 per cell)."""
    curvature = np.abs(np.diff(values, 2, axis=0)).sum() + np.abs(np.diff(values, 2, axis=1)).sum()
    return values.sum() * h * h, h * h / 24 * curvature


def outside_box(z, weight):
    """Estimate of E_q[weight(z) 1{z outside the box}] (what the quadrature misses) from the
    draws, with 3 extra draws of the largest weight (rule of three: a positive bound even when
    no draw falls outside)."""
    outside = np.any(np.abs(z) > GRID_HALF_WIDTH, axis=1)
    return (np.sum(weight[outside]) + 3 * weight.max()) / z.shape[0]


def test_latent_dim_one_is_rejected():
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        coupling_flow(1)


def test_change_of_variables_matches_autodiff_jacobian(q2):
    """log q(T(u)) = log q_0(u) - log|det J_T(u)|, J_T by jax.jacfwd of the forward map."""
    u = 1.5 * jax.random.normal(jax.random.PRNGKey(3), (6, 2))

    @jax.jit
    def both_sides(u):
        sign, log_det = jnp.linalg.slogdet(jax.vmap(jax.jacfwd(q2.bijector.forward))(u))
        log_q = jax.vmap(q2.log_prob)(jax.vmap(q2.bijector.forward)(u))
        return sign, log_det, log_q, jax.vmap(q2.distribution.log_prob)(u) - log_det

    sign, log_det, log_q, brute_force = both_sides(u)
    np.testing.assert_array_equal(sign, 1.0)  # positive scales: orientation-preserving
    assert np.ptp(log_det) > 1000 * LOG_TOL  # not volume-preserving, not even affine
    np.testing.assert_allclose(log_q, brute_force, atol=LOG_TOL)


def test_each_layer_is_a_bounded_affine_coupling():
    """Per layer (odd latent_dim): the kept dims pass through (their rows of J are identity
    rows), the others are scaled elementwise (J_BB diagonal), by at most e^{+-MAX_LOG_SCALE},
    and the layer's log-det is the sum of those log-scales."""
    family = coupling_flow(5, num_layers=2)
    params = perturbed(family, 5, scale=300.0)  # saturates the soft clip
    layers = family.distribution(params).bijector.bijectors[::-1]
    u0 = 2.0 * jax.random.normal(jax.random.PRNGKey(6), (5,))

    @jax.jit
    def jacobians_and_log_dets(u):
        out = []
        for layer in layers:
            out.append((jax.jacfwd(layer.forward)(u), layer.forward_log_det_jacobian(u)))
            u = layer.forward(u)
        return out

    log_scales = []
    for (jacobian, log_det), kept in zip(jacobians_and_log_dets(u0), ([0, 2, 4], [1, 3])):
        jacobian = np.asarray(jacobian)
        moved = np.setdiff1d(np.arange(5), kept)
        np.testing.assert_array_equal(jacobian[kept], np.eye(5)[kept])
        block = jacobian[np.ix_(moved, moved)]
        np.testing.assert_array_equal(block, np.diag(np.diag(block)))
        log_scales.append(np.log(np.diag(block)))
        np.testing.assert_allclose(log_det, log_scales[-1].sum(), atol=LOG_TOL)
    log_scales = np.concatenate(log_scales)
    assert np.all(np.abs(log_scales) <= MAX_LOG_SCALE + LOG_TOL)
    assert np.max(np.abs(log_scales)) > 0.9 * MAX_LOG_SCALE  # the bound was exercised


def test_density_integrates_to_one(grid, draws):
    _, h, density = grid
    integral, discretisation = quadrature(density, h)
    z, _ = draws
    truncation = outside_box(z, np.ones(z.shape[0]))
    assert abs(integral - 1.0) <= discretisation + truncation, (integral, discretisation, truncation)


def test_samples_agree_with_the_density(q2, grid, draws):
    z, log_q = draws
    np.testing.assert_allclose(log_q, jax.jit(jax.vmap(q2.log_prob))(jnp.asarray(z, jnp.float32)), atol=LOG_TOL)
    # Moments E[z_i] and E[z_i z_j]: sample average vs quadrature, within 4 Monte-Carlo standard
    # errors + the quadrature's discretisation error + the part outside the box.
    points, h, density = grid
    moments = [(points[..., i], z[:, i]) for i in range(2)]
    moments += [(points[..., i] * points[..., j], z[:, i] * z[:, j]) for i, j in ((0, 0), (0, 1), (1, 1))]
    for on_grid, on_draws in moments:
        exact, discretisation = quadrature(on_grid * density, h)
        stderr = on_draws.std(ddof=1) / np.sqrt(on_draws.size)
        tol = 4 * stderr + discretisation + outside_box(z, np.abs(on_draws))
        assert abs(on_draws.mean() - exact) <= tol, (on_draws.mean(), exact, tol)


@pytest.mark.parametrize("latent_dim,num_layers,hidden", [(2, 4, 16), (3, 3, 5), (8, 4, 16), (50, 4, 16)])
def test_num_params(latent_dim, num_layers, hidden):
    family = coupling_flow(latent_dim, num_layers, hidden)
    assert family.num_params == expected_num_params(latent_dim, num_layers, hidden)
    assert sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(family.init))) == family.num_params


@pytest.fixture(scope="module")
def data(tiny):
    """FIT_REPLICATES copies of 3 datapoints; row r * 3 + i holds datapoint i."""
    points = jnp.stack([tiny.x, jnp.array([0.0, 1.0, 1.0, 0.0, 0.0]), jnp.ones(5)])
    return jnp.tile(points, (FIT_REPLICATES, 1))


def replicated_elbo(tiny, family, kl):
    """jit(key, table, data) -> [N, NUM_REPLICATES] single-draw ELBO estimates per row."""
    elbo = make_elbo(tiny.model, family, kl=kl)

    def per_row(key, q, x):
        keys = jax.random.split(key, NUM_REPLICATES)
        return jax.vmap(lambda k: elbo(k, tiny.theta, q, x).elbo)(keys)

    return jax.jit(lambda key, table, data: jax.vmap(per_row)(jax.random.split(key, data.shape[0]), table, data))


@pytest.fixture(scope="module")
def families(tiny):
    return coupling_flow(tiny.latent_dim), diagonal_gaussian(tiny.latent_dim)


@pytest.fixture(scope="module")
def elbo_estimates(tiny, families):
    flow, gaussian = families
    return replicated_elbo(tiny, flow, "mc"), replicated_elbo(tiny, gaussian, "analytic")


def by_datapoint(values):
    """[FIT_REPLICATES * 3, S] -> [3, FIT_REPLICATES * S]: all values of each datapoint."""
    return np.swapaxes(values.reshape(FIT_REPLICATES, 3, -1), 0, 1).reshape(3, -1)


def assert_not_below(a, b):
    """mean(a) >= mean(b) - 4 standard errors of the difference, for each row of [3, S] samples."""
    se = np.sqrt(a.var(axis=1, ddof=1) / a.shape[1] + b.var(axis=1, ddof=1) / b.shape[1])
    assert np.all(a.mean(axis=1) >= b.mean(axis=1) - 4 * se), (a.mean(axis=1), b.mean(axis=1), se)


def test_elbo_and_iwae_from_init_equal_the_prior_gaussians(tiny, data, families, elbo_estimates):
    """At init q = p(z), so the flow's Monte-Carlo-KL ELBO and the prior Gaussian's analytic-KL
    ELBO both estimate E_p[log p(x|z)], and their IWAE bounds agree: equal means within 4
    standard errors, from independent draws (IWAE: the delta-method stderr, valid here as the
    weights w = p(x|z) <= 1 of a Bernoulli likelihood have finite variance)."""
    flow, gaussian = families
    assert flow.name == "flow" and flow.kl_form == "mc"
    with pytest.raises(ValueError, match="no closed-form KL"):
        make_elbo(tiny.model, flow, kl="analytic")
    flow_elbo, gauss_elbo = elbo_estimates
    n = data.shape[0]
    flow_values = by_datapoint(np.asarray(flow_elbo(jax.random.PRNGKey(0), tile_rows(flow.init(), n), data)))
    gauss_values = by_datapoint(np.asarray(gauss_elbo(jax.random.PRNGKey(1), tile_rows(gaussian.init(), n), data)))
    assert_not_below(flow_values, gauss_values)
    assert_not_below(gauss_values, flow_values)

    def iwae(family, key):
        return jax.jit(make_iwae(tiny.model, family, num_samples=2000))(key, tiny.theta, family.init(), tiny.x)

    iwae_flow, iwae_gauss = iwae(flow, jax.random.PRNGKey(2)), iwae(gaussian, jax.random.PRNGKey(3))
    assert abs(iwae_flow.bound - iwae_gauss.bound) <= 4 * np.hypot(iwae_flow.stderr, iwae_gauss.stderr)


def test_local_fit_is_at_least_as_good_as_the_gaussian_fit(tiny, data, families, elbo_estimates):
    """A flow contains the Gaussian (it starts at the prior Gaussian and can keep its flow the
    identity), so in expectation over the fits' randomness its fitted ELBO must not fall below
    the Gaussian's. Both use the reference protocol (LocalFitConfig's defaults, pinned: Adam
    1e-3, convergence rule) and the same estimator (kl="mc"), so only the family differs. Each
    datapoint has FIT_REPLICATES independent fits (rows with their own keys); the standard error
    comes from their spread (fit + evaluation noise; with 8 fits, 4 SE is a one-sided t_7 tail
    of ~0.3%). At lr 1e-2 Adam's noise floor, larger for the flow's many weights, puts the flow
    0.01-0.04 nats below the Gaussian: the test is then about the optimiser, not the family."""
    flow, gaussian = families
    config = LocalFitConfig(learning_rate=1e-3, num_samples=1, check_every=100, patience=10, max_steps=20_000)
    n = data.shape[0]

    def fit(family, key):
        result = jax.jit(make_local_fit(tiny.model, family, config, kl="mc"))(
            key, tiny.theta, tile_rows(family.init(), n), data)
        assert np.all(result.converged)
        return result.params

    flow_fit, gauss_fit = fit(flow, jax.random.PRNGKey(0)), fit(gaussian, jax.random.PRNGKey(1))
    # The identity init does not block learning: Adam moves a weight only where its gradient
    # was nonzero, and every output layer (zero at init) has moved in every row.
    assert all(np.all(np.any(np.asarray(layer["w_out"]) != 0, axis=(1, 2))) for layer in flow_fit["flow"])
    flow_elbo, gauss_elbo = elbo_estimates
    flow_values = np.asarray(flow_elbo(jax.random.PRNGKey(2), flow_fit, data))
    gauss_values = np.asarray(gauss_elbo(jax.random.PRNGKey(3), gauss_fit, data))
    assert_not_below(by_datapoint(flow_values.mean(axis=1, keepdims=True)),
                     by_datapoint(gauss_values.mean(axis=1, keepdims=True)))
