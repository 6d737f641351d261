"""Mixture of diagonal Gaussians: its density against scipy, its components, where init and
from_gaussian put the components, and a local fit that beats the Gaussian on a bimodal
posterior (exact ELBOs by quadrature). What every family must do is checked in test_families.py."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vi_jax.distributions import sample_and_log_prob
from vi_jax.families import diagonal_gaussian, get_family, mixture_gaussian
from vi_jax.local import LocalFitConfig, make_local_fit, tile_rows
from vi_jax.models import LatentVariableModel


MIXTURE_PARAMS = {"logits": jnp.array([0.5, -0.3, 0.1]),
                  "mean": jnp.array([[0.5, -1.0], [-0.8, 0.4], [0.2, 1.2]]),
                  "log_scale": jnp.array([[-0.5, -0.2], [0.1, -0.4], [-0.3, 0.0]])}


def test_mixture_log_prob_equals_the_weighted_sum_of_component_densities():
    """log q(z) = log sum_k pi_k N(z; mu_k, diag sigma_k^2), computed independently with scipy."""
    family = mixture_gaussian(2, 3)
    z = np.random.default_rng(0).normal(size=(6, 2)) * 2.0
    pi = np.exp(np.asarray(MIXTURE_PARAMS["logits"], np.float64))
    pi /= pi.sum()
    mean, scale = (np.asarray(MIXTURE_PARAMS[k], np.float64) for k in ("mean", "log_scale"))
    brute = np.log(sum(pi[k] * stats.multivariate_normal(mean[k], np.diag(np.exp(2 * scale[k]))).pdf(z)
                       for k in range(3)))
    q = family.distribution(MIXTURE_PARAMS)
    np.testing.assert_allclose(jax.vmap(q.log_prob)(jnp.asarray(z, jnp.float32)), brute, rtol=1e-5)
    log_pi, components = family.components(MIXTURE_PARAMS)
    np.testing.assert_allclose(np.exp(log_pi), pi, rtol=1e-6)
    assert components.batch_shape == (3,) and components.event_shape == (2,)


def test_mixture_init_and_from_gaussian_start_distinct_components_at_the_gaussian():
    """Equal weights, every sigma_k = sigma, distinct means whose average is mu (so gradient
    ascent can separate the components), q within a few hundredths of a nat of g; K = 1 is g."""
    family = get_family("mixture", 2)
    assert family.num_params == 4 * (1 + 2 * 2) and family.kl_to_prior is None and family.kl_form == "mc"
    flat = jnp.arange(family.num_params, dtype=jnp.float32)
    params = family.unflatten(flat)
    np.testing.assert_array_equal(params["logits"], flat[:4])
    np.testing.assert_array_equal(params["mean"], flat[4:12].reshape(4, 2))
    g = {"mean": jnp.array([1.0, -2.0]), "log_scale": jnp.array([-1.0, 0.5])}

    @jax.jit
    def log_ratios(start, gaussian):
        """log q(z) - log g(z) at 2000 draws z ~ q (their mean estimates KL(q || g))."""
        q, g_dist = family.distribution(start), diagonal_gaussian(2).distribution(gaussian)
        z, log_q = jax.vmap(lambda k: sample_and_log_prob(q, k))(jax.random.split(jax.random.PRNGKey(0), 2000))
        return log_q - jax.vmap(g_dist.log_prob)(z)

    for start, gaussian in [(family.init(), {"mean": jnp.zeros(2), "log_scale": jnp.zeros(2)}),
                            (family.from_gaussian(g), g)]:
        np.testing.assert_array_equal(start["logits"], jnp.zeros(4))
        np.testing.assert_allclose(start["log_scale"], jnp.broadcast_to(gaussian["log_scale"], (4, 2)))
        np.testing.assert_allclose(start["mean"].mean(axis=0), gaussian["mean"], atol=1e-6)
        offsets = np.asarray((start["mean"] - gaussian["mean"][None]) / jnp.exp(gaussian["log_scale"])[None])
        distances = np.linalg.norm(offsets[:, None] - offsets[None], axis=-1)[np.triu_indices(4, 1)]
        assert distances.min() > 0.01 and np.abs(offsets).max() < 0.5, offsets
        # KL is convex: KL(q || g) <= mean_k KL(q_k || g) = mean_k |offset_k|^2 / 2 (a few hundredths)
        ratios = np.asarray(log_ratios(start, gaussian), np.float64)
        bound = np.mean(np.sum(offsets**2, axis=1)) / 2
        assert ratios.mean() <= bound + 4 * ratios.std(ddof=1) / np.sqrt(ratios.size) and bound < 0.05, bound
    single = mixture_gaussian(2, 1).from_gaussian(g)
    np.testing.assert_allclose(single["mean"], g["mean"][None])
    with pytest.raises(ValueError, match="num_components must be >= 1"):
        mixture_gaussian(2, 0)


def bimodal_model(sigma=0.5):
    """p(z) = N(0, 1), p(x | z) = N(x; z^2, sigma^2): at x = 4 the posterior has two modes near
    z = +-2 (width ~1/8), far apart, of equal mass."""
    return LatentVariableModel(1, 1, lambda key: {},
                               lambda theta, z: distrax.MultivariateNormalDiag(z**2, jnp.full(1, sigma)),
                               lambda theta, z: z**2)


def test_mixture_local_fit_beats_the_gaussian_on_a_bimodal_posterior():
    """Both families fitted with the same local fit from their init(). The exact ELBOs of the
    fits come from 1-D quadrature (20001 nodes on [-6, 6], the posterior's modes ~1/8 wide), as
    does log p(x). A single Gaussian covers one mode only, so its gap KL(q || p(z|x)) is about
    log 2 = 0.69 or more (measured 0.72); the mixture can put components on both modes, which is
    worth about log 2: it must beat the Gaussian by at least half of that (measured: by 0.70)."""
    model, x = bimodal_model(), jnp.array([[4.0]])
    grid = jnp.linspace(-6.0, 6.0, 20001)[:, None]
    step = float(grid[1, 0] - grid[0, 0])
    log_joint = jax.vmap(lambda z: model.log_joint({}, x[0], z))(grid)
    log_px = float(jax.nn.logsumexp(log_joint)) + np.log(step)
    config = LocalFitConfig(learning_rate=5e-2, num_samples=8, check_every=100, patience=10, max_steps=5000)
    elbo = {}
    for family in (diagonal_gaussian(1), mixture_gaussian(1, 4)):
        fit = jax.jit(make_local_fit(model, family, config, kl="mc"))
        q = jax.tree.map(lambda t: t[0], fit(jax.random.PRNGKey(0), {}, tile_rows(family.init(), 1), x).params)
        log_q = jax.vmap(family.distribution(q).log_prob)(grid)
        elbo[family.name] = float(jnp.sum(jnp.exp(log_q) * (log_joint - log_q))) * step
    assert max(elbo.values()) <= log_px + 1e-4, (elbo, log_px)  # the quadrature respects the bound
    assert elbo["mixture"] - elbo["gaussian"] > 0.5 * np.log(2), (elbo, log_px)
