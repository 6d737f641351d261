"""VQ-VAE: nearest-code quantization, the straight-through gradient, which parameters each loss
term trains, codebook usage, a short training run, the experiment script."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax import data
from vi_jax.distributions import BERNOULLI
from vi_jax.metrics import read_metrics
from vi_jax.vqvae import (VQVAE, VQVAEConfig, build_vqvae, codebook_usage, evaluate, make_vqvae_loss,
                          quantize, straight_through, train_vqvae)

L, D, K, DATA_DIM = 2, 3, 4, 5


@pytest.fixture(scope="module")
def net():
    """A tiny VQ-VAE, its parameters and one binary datapoint."""
    network = VQVAE(DATA_DIM, BERNOULLI, L, D, K, encoder_hidden=(8,), decoder_hidden=(8,), activation="tanh")
    x = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
    return network, network.init(jax.random.PRNGKey(0), x), x


def grads_of(part, network, params, x):
    return jax.grad(lambda p: getattr(make_vqvae_loss(network)(p, x), part))(params)


def is_zero(tree):
    return all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(tree))


def test_quantize_picks_the_nearest_code_brute_force():
    key_z, key_e = jax.random.split(jax.random.PRNGKey(3))
    z_e, codebook = jax.random.normal(key_z, (6, D)), jax.random.normal(key_e, (K, D))
    z_q, codes = quantize(codebook, z_e)
    z_np, e_np = np.asarray(z_e, np.float64), np.asarray(codebook, np.float64)
    expected = [min(range(K), key=lambda k: sum((z_np[l, j] - e_np[k, j]) ** 2 for j in range(D)))
                for l in range(6)]
    assert np.asarray(codes).tolist() == expected
    np.testing.assert_array_equal(z_q, codebook[np.array(expected)])
    # forwards, the straight-through value is z_q up to float32 rounding of z_e + (z_q - z_e)
    np.testing.assert_allclose(straight_through(z_e, z_q), z_q, atol=1e-6)


def test_straight_through_gradient_equals_the_decoder_input_gradient(net):
    network, params, x = net
    out = network.apply(params, x)
    g = grads_of("reconstruction", network, params, x)["params"]
    # z_e = reshape(W h + b): d rec / d b is d rec / d z_e, flattened
    g_z_e = g["encoder"]["Dense_1"]["bias"]

    def decoder_loss(z):
        return -BERNOULLI.distribution(network.apply(params, z, method=VQVAE.decode)).log_prob(x)

    g_z_q = jax.grad(decoder_loss)(out.z_q).reshape(-1)
    assert float(jnp.max(jnp.abs(g_z_q))) > 1e-3
    # z_e + sg(z_q - z_e) equals z_q up to float32 rounding, hence rtol
    np.testing.assert_allclose(g_z_e, g_z_q, rtol=1e-5, atol=1e-7)
    assert is_zero(g["codebook"])  # the reconstruction never trains the codebook
    assert not is_zero(g["decoder"])


def test_codebook_loss_trains_only_the_codebook(net):
    network, params, x = net
    out = network.apply(params, x)
    g = grads_of("codebook", network, params, x)["params"]
    assert is_zero(g["encoder"]) and is_zero(g["decoder"])
    # d/d e_k sum_l ||z_e,l - e_{c_l}||^2 = sum_{l: c_l = k} 2 (e_k - z_e,l)
    codebook, z_e, codes = (np.asarray(a) for a in (params["params"]["codebook"], out.z_e, out.codes))
    expected = np.zeros((K, D), np.float32)
    for l in range(L):
        expected[codes[l]] += 2 * (codebook[codes[l]] - z_e[l])
    np.testing.assert_allclose(g["codebook"], expected, rtol=1e-6)
    assert np.abs(expected).max() > 0


def test_commitment_loss_trains_only_the_encoder(net):
    network, params, x = net
    out = network.apply(params, x)
    g = grads_of("commitment", network, params, x)["params"]
    assert is_zero(g["codebook"]) and is_zero(g["decoder"])
    # d/d z_e ||z_e - sg[z_q]||^2 = 2 (z_e - z_q), seen at the encoder's output bias
    np.testing.assert_allclose(g["encoder"]["Dense_1"]["bias"], (2 * (out.z_e - out.z_q)).reshape(-1), rtol=1e-6)


def test_loss_is_the_sum_of_its_parts(net):
    network, params, x = net
    terms = make_vqvae_loss(network, beta=0.25)(params, x)
    out = network.apply(params, x)
    rec = -BERNOULLI.distribution(network.apply(params, out.z_q, method=VQVAE.decode)).log_prob(x)
    np.testing.assert_allclose(terms.reconstruction, rec, rtol=1e-5)
    np.testing.assert_allclose(terms.codebook, np.sum((np.asarray(out.z_e) - np.asarray(out.z_q)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(terms.loss, terms.reconstruction + 1.25 * terms.codebook, rtol=1e-6)
    np.testing.assert_allclose(terms.elbo, -terms.reconstruction - L * math.log(K), rtol=1e-6)


@pytest.mark.parametrize("codes, size, counts, perplexity, dead", [
    ([[0, 1], [2, 3]], 4, [1, 1, 1, 1], 4.0, 0),   # uniform usage: perplexity K
    ([[0, 0], [0, 0]], 3, [4, 0, 0], 1.0, 2),      # one code: perplexity 1
    ([[0, 0], [1, 2]], 3, [2, 1, 1], math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))), 0),
])
def test_codebook_usage(codes, size, counts, perplexity, dead):
    usage = codebook_usage(np.array(codes), size)
    assert usage.counts.tolist() == counts
    assert usage.perplexity == pytest.approx(perplexity, rel=1e-6)
    assert usage.dead_codes == dead


def test_short_training_lowers_the_loss_and_counts_every_code():
    config = VQVAEConfig(num_latents=L, code_dim=D, codebook_size=8, encoder_hidden=(16,),
                         decoder_hidden=(16,), batch_size=50, num_epochs=10, learning_rate=1e-2)
    x = data.load_dataset("digits").train[:200]
    vq = build_vqvae(config, x.shape[1])
    result = train_vqvae(vq, config, x, progress=False)
    state, history = result.state, result.history
    initial = vq.algorithm.init(jax.random.fold_in(jax.random.PRNGKey(0), 0), x[0]).params
    before, after = (evaluate(vq, params, x, batch_size=64) for params in (initial, state.params))
    assert len(history) == 10 and int(state.step) == 10 * (200 // 50)
    assert float(after.loss.mean()) < float(before.loss.mean()) - 5.0
    assert float(after.reconstruction.mean()) < float(before.reconstruction.mean()) - 5.0
    usage = codebook_usage(after.codes, 8)
    assert usage.counts.sum() == 200 * L
    np.testing.assert_array_equal(usage.counts, np.bincount(np.asarray(after.codes).ravel(), minlength=8))


@pytest.mark.parametrize("call, message", [
    (lambda: quantize(jnp.zeros((K, D)), jnp.zeros((L, D + 1))), "same D"),
    (lambda: codebook_usage(np.array([[0, 4]]), 4), r"codes must lie in \[0, 4\)"),
    (lambda: codebook_usage(np.array([[0.0, 1.0]]), 4), "integer array"),
    (lambda: make_vqvae_loss(VQVAE(DATA_DIM, BERNOULLI, L, D, K, (8,), (8,)), beta=-1.0), "beta"),
    (lambda: VQVAEConfig(codebook_size=0).validate(), "VQVAEConfig.codebook_size must be an integer >= 1"),
    (lambda: VQVAEConfig(likelihood="poisson").validate(), "unknown likelihood"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_datapoint_shape_raises(net):
    network, params, _ = net
    with pytest.raises(ValueError, match=r"one datapoint of shape \(5,\), got \(2, 5\)"):
        network.apply(params, jnp.zeros((2, DATA_DIM)))


@pytest.mark.slow
def test_vqvae_script_writes_results_and_reproduces(tmp_path):
    from experiments import vqvae as script

    def run(workdir):
        script.main(["--workdir", str(workdir), "--quick", "--no-progress", "--set", "num_epochs=2"])
        with open(os.path.join(workdir, "metrics.json")) as f:
            return json.load(f)

    metrics = run(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == ["MANIFEST.json", "metrics.json", "metrics.jsonl", "reconstructions.png"]
    usage = metrics["codebook_usage"]
    assert sum(usage["counts"]) == metrics["n_test"] * metrics["config"]["num_latents"]
    assert usage["dead_codes"] == sum(c == 0 for c in usage["counts"])
    assert 1.0 <= usage["perplexity"] <= usage["max_perplexity"]
    assert set(metrics["test_reconstruction_nll"]) == {"mean", "stderr"}
    assert metrics["seed"] == 0 and metrics["environment"]["versions"]["jax"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    lines = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [{k: v for k, v in line.items() if k not in ("kind", "learning_rate", "seconds")}
            for line in lines] == metrics["history"]
    again = run(tmp_path / "b")
    for name in ("test_reconstruction_nll", "codebook_usage", "history"):
        assert again[name] == metrics[name]
