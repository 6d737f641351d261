"""vi_jax.visualize (interpolation path, manifold grid, decoding helpers) and the figures of
vi_jax.plotting that draw them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vi_jax import networks, plotting, visualize
from vi_jax.distributions import BERNOULLI
from vi_jax.families import get_family
from vi_jax.models import decoder_model
from vi_jax.vae import VAE


def test_interpolation_path_runs_linearly_from_a_to_b():
    z_a, z_b = jnp.array([1.0, -2.0, 0.5]), jnp.array([-3.0, 4.0, 0.5])
    path = np.asarray(visualize.interpolation_path(z_a, z_b, 5))
    assert path.shape == (5, 3)
    np.testing.assert_array_equal(path[0], z_a)
    np.testing.assert_array_equal(path[-1], z_b)
    # equal steps along the line: z_t = z_a + t (z_b - z_a), t = 0, 1/4, ..., 1
    expected = np.asarray(z_a)[None] + np.linspace(0, 1, 5)[:, None] * np.asarray(z_b - z_a)[None]
    np.testing.assert_allclose(path, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.diff(path, axis=0), np.broadcast_to((z_b - z_a) / 4, (4, 3)), atol=1e-6)


@pytest.mark.parametrize("z_a, z_b, num, match", [
    (jnp.zeros(2), jnp.zeros(3), 4, "one shape"),
    (jnp.zeros((1, 2)), jnp.zeros((1, 2)), 4, "vectors"),
    (jnp.zeros(2), jnp.ones(2), 1, "num must be >= 2"),
], ids=["shape_mismatch", "not_vectors", "one_point"])
def test_interpolation_path_rejects_bad_input(z_a, z_b, num, match):
    with pytest.raises(ValueError, match=match):
        visualize.interpolation_path(z_a, z_b, num)


@pytest.mark.parametrize("n", [1, 6])
def test_manifold_latents_are_normal_quantiles_of_a_uniform_grid(n):
    u = (np.arange(n) + 0.5) / n
    quantiles = stats.norm.ppf(u)
    np.testing.assert_allclose(visualize.grid_quantiles(n), quantiles, rtol=1e-5, atol=1e-6)
    z = np.asarray(visualize.manifold_latents(n)).reshape(n, n, 2)
    # row r, column c: z_1 = Phi^-1(u_c), z_2 = Phi^-1(u_{n-1-r})
    np.testing.assert_allclose(z[..., 0], np.broadcast_to(quantiles[None, :], (n, n)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z[..., 1], np.broadcast_to(quantiles[::-1, None], (n, n)), rtol=1e-5, atol=1e-6)
    # every cell holds prior mass 1/n^2: Phi(z) is the uniform grid
    np.testing.assert_allclose(stats.norm.cdf(z), np.stack(np.meshgrid(u, u[::-1]), -1), atol=1e-6)


def test_manifold_needs_a_2d_latent(tiny):
    images = visualize.manifold(tiny.model, tiny.theta, 3)
    assert images.shape == (9, tiny.data_dim)
    np.testing.assert_allclose(images[4], tiny.model.mean(tiny.theta, jnp.zeros(2)), atol=1e-6)  # centre: z = 0
    dec = networks.decoder((4,), BERNOULLI.num_outputs(5), "tanh")
    model3 = decoder_model(dec, BERNOULLI, 3, 5)
    with pytest.raises(ValueError, match="latent_dim == 2, got 3"):
        visualize.manifold(model3, model3.init(jax.random.PRNGKey(0)), 3)
    with pytest.raises(ValueError, match="num_per_axis must be >= 1"):
        visualize.grid_quantiles(0)


def tiny_vae(tiny, family_name):
    family = get_family(family_name, tiny.latent_dim)
    encoder = networks.encoder((8,), family.num_params, "tanh")
    return VAE(tiny.model, family, encoder, None, "amortized"), {
        "encoder": encoder.init(jax.random.PRNGKey(2), jnp.zeros(tiny.data_dim)), "decoder": tiny.theta}


@pytest.mark.parametrize("family_name", ["gaussian", "flow"])
def test_interpolate_decodes_the_path_between_encoder_locations(tiny, family_name):
    vae, params = tiny_vae(tiny, family_name)
    x = jnp.stack([tiny.x, 1.0 - tiny.x])
    codes = visualize.encoder_means(vae, params["encoder"], x)
    if family_name == "gaussian":  # the encoder mean itself
        np.testing.assert_allclose(codes, vae.encode(params["encoder"], x)["mean"], atol=1e-6)
    images = visualize.interpolate(vae, params, x[0], x[1], 4)
    assert images.shape == (4, tiny.data_dim)
    recon = visualize.reconstructions(vae, params, x)
    np.testing.assert_allclose(images[0], recon[0], atol=1e-6)
    np.testing.assert_allclose(images[-1], recon[1], atol=1e-6)
    middle = visualize.decode_means(tiny.model, tiny.theta, (codes[:1] + 2 * codes[1:]) / 3)
    np.testing.assert_allclose(images[2], middle[0], atol=1e-5)


def test_flow_location_is_the_image_of_the_base_mean(tiny):
    family = get_family("flow", tiny.latent_dim)
    params = jax.tree.map(lambda p: p + 0.3, family.from_gaussian(tiny.q_params))  # a non-identity flow
    q = family.distribution(params)
    expected = q.bijector.forward(params["base"]["mean"])
    np.testing.assert_allclose(visualize.location(q), expected, atol=1e-6)
    assert not np.allclose(expected, params["base"]["mean"])


def test_prior_samples_decode_standard_normal_draws(tiny):
    key = jax.random.PRNGKey(3)
    images = visualize.prior_samples(key, tiny.model, tiny.theta, 6)
    z = tiny.model.prior().sample(seed=key, sample_shape=(6,))
    np.testing.assert_allclose(images, visualize.decode_means(tiny.model, tiny.theta, z), atol=1e-6)
    with pytest.raises(ValueError, match=r"z must be \[N, 2\]"):
        visualize.decode_means(tiny.model, tiny.theta, jnp.zeros(2))


def test_history_curves_split_train_and_evaluation_records():
    history = [{"epoch": 1, "train_elbo": -30.0}, {"epoch": 2, "train_elbo": -25.0, "eval_elbo": -26.0,
                                                   "eval_iwae_5": -24.0, "stage": 0}]
    curves = visualize.history_curves(history)
    assert set(curves) == {"train_elbo", "eval_elbo", "eval_iwae_5"}
    np.testing.assert_array_equal(curves["train_elbo"][0], [1, 2])
    np.testing.assert_array_equal(curves["train_elbo"][1], [-30.0, -25.0])
    np.testing.assert_array_equal(curves["eval_iwae_5"][0], [2])


def test_manifold_figure_tiles_images_in_row_major_order():
    n, shape = 3, (2, 3)
    images = np.repeat(np.arange(n * n, dtype=float)[:, None] / (n * n), 6, axis=1)  # image k is constant k / 9
    fig = plotting.manifold(images, shape, np.arange(n, dtype=float))
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.shape == (n * 2, n * 3)
    for r in range(n):
        for c in range(n):
            np.testing.assert_array_equal(canvas[2 * r:2 * r + 2, 3 * c:3 * c + 3], (r * n + c) / (n * n))
    plotting.close(fig)


def test_figures_draw_tiny_inputs(tiny):
    images = np.asarray(visualize.manifold(tiny.model, tiny.theta, 3))
    figures = [
        plotting.manifold(np.pad(images, ((0, 0), (0, 1))), (2, 3), np.asarray(visualize.grid_quantiles(3)), "m"),
        plotting.training_curves({"train_elbo": (np.arange(1, 4), np.array([-3.0, -2.0, -1.0])),
                                  "eval_elbo": (np.array([3]), np.array([-1.5]))}, "t"),
        plotting.gap_curves([1, 2], {s: {"gap": {"mean": [0.5, 0.4], "stderr": [0.1, 0.1]}} for s in ("train", "test")},
                            {"gap": "approximation"}, "g"),
    ]
    for fig in figures:
        fig.canvas.draw()
        plotting.close(fig)
    with pytest.raises(ValueError, match="do not fill a 2 x 2 grid"):
        plotting.manifold(images, (2, 3), np.zeros(2))
