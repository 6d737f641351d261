"""Amortized training: reproducibility, learning, jit hygiene, KL warm-up, divergence guard,
live metrics."""
import dataclasses
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax

from vi_jax import data
from vi_jax.elbo import make_elbo, map_datapoints
from vi_jax.local import make_refine
from vi_jax.metrics import JsonlWriter, read_metrics
from vi_jax.train import TrainInfo, first_nonfinite, kl_weight, make_epoch
from vi_jax.vae import VAEConfig, build_vae, make_evaluator, train_vae

SMALL = VAEConfig(latent_dim=2, encoder_hidden=(32,), decoder_hidden=(32,), batch_size=100,
                  num_epochs=3, eval_every=0, eval_elbo_samples=10, eval_iwae_samples=10,
                  final_iwae_samples=50)


@pytest.fixture(scope="module")
def digits():
    dataset = data.load_dataset("digits")
    return jnp.asarray(dataset.train), jnp.asarray(dataset.test)


def run_small(digits, metrics=None, **changes):
    config = dataclasses.replace(SMALL, **changes)
    train, test = digits
    vae = build_vae(config, train.shape[1], len(train) // config.batch_size)
    return vae, config, train_vae(vae, config, train, test, progress=False, metrics=metrics)


def test_same_seed_is_bit_identical_and_other_seed_differs(digits):
    _, _, first = run_small(digits, seed=0)
    _, _, again = run_small(digits, seed=0)
    _, _, other = run_small(digits, seed=1)
    chex.assert_trees_all_equal(first.state.params, again.state.params)
    assert first.history == again.history
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(first.state.params, other.state.params)
    assert first.history != other.history


def test_training_improves_held_out_elbo(digits):
    """Paired per-datapoint comparison of the held-out ELBO before and after 40 epochs."""
    vae, config, result = run_small(digits, num_epochs=40)
    train, test = digits
    evaluator = make_evaluator(vae, config, config.eval_iwae_samples)
    initial = vae.algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), train[0])
    key = jax.random.PRNGKey(5)
    gain = np.asarray(evaluator.elbo(key, result.state.params, test) - evaluator.elbo(key, initial.params, test))
    mean, se = gain.mean(), gain.std(ddof=1) / np.sqrt(gain.size)
    assert mean > 5.0 and mean > 4 * se, (mean, se)


def test_epoch_and_step_compile_once(digits):
    train, _ = digits
    vae = build_vae(SMALL, train.shape[1])
    state = vae.algorithm.init(jax.random.PRNGKey(0), train[0])
    epoch = make_epoch(vae.algorithm.step, SMALL.batch_size)
    for e in range(3):
        state, infos = epoch(jax.random.PRNGKey(e), state, train)
    assert epoch._cache_size() == 1
    assert infos.elbo.shape == (len(train) // SMALL.batch_size,)
    step = jax.jit(vae.algorithm.step)
    for i in range(3):
        state, info = step(jax.random.PRNGKey(i), state, train[i * 10:(i + 1) * 10])
    assert step._cache_size() == 1
    assert int(state.step) == 3 * (len(train) // SMALL.batch_size) + 3


def test_kl_warmup_schedule():
    weights = [float(kl_weight(jnp.array(t), 4)) for t in range(6)]
    np.testing.assert_allclose(weights, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert float(kl_weight(jnp.array(0), 0)) == 1.0


def test_kl_warmup_changes_the_objective_not_the_reported_elbo(digits):
    train, _ = digits
    vae = build_vae(dataclasses.replace(SMALL, kl_warmup_epochs=10), train.shape[1], steps_per_epoch=1)
    state = vae.algorithm.init(jax.random.PRNGKey(0), train[0])
    _, info = jax.jit(vae.algorithm.step)(jax.random.PRNGKey(1), state, train[:50])
    np.testing.assert_allclose(info.kl_weight, 0.1)
    np.testing.assert_allclose(info.loss, -(info.reconstruction - 0.1 * info.kl), rtol=1e-6)
    np.testing.assert_allclose(info.elbo, info.reconstruction - info.kl, rtol=1e-6)


def test_entropy_warmup_weighs_only_the_entropy():
    """warmed_up(.., "entropy") = E_q[log p(x|z) + log p(z)] + beta H(q): against the closed
    forms H(N(mu, s^2)) = sum_j log s_j + d/2 log(2 pi e) and E_q log N(z; 0, I) =
    -1/2 sum_j (mu_j^2 + s_j^2) - d/2 log(2 pi), for the analytic and the Monte-Carlo form."""
    from vi_jax.families import get_family
    from vi_jax.oracles import linear_gaussian
    from vi_jax.train import warmed_up

    d = 3
    family = get_family("gaussian", d)
    model = linear_gaussian(jnp.eye(4, d), jnp.zeros(4), jnp.full(4, -0.5))
    q = {"mean": jnp.array([0.3, -1.0, 0.5]), "log_scale": jnp.array([-0.2, 0.1, -0.7])}
    s2 = jnp.exp(2 * q["log_scale"])
    entropy = float(jnp.sum(q["log_scale"]) + 0.5 * d * np.log(2 * np.pi * np.e))
    cross = float(-0.5 * jnp.sum(q["mean"] ** 2 + s2) - 0.5 * d * np.log(2 * np.pi))
    x = jnp.array([0.2, -0.4, 1.0, 0.0])
    for kl, m, tol in (("analytic", 1, 1e-5), ("mc", 20000, None)):
        terms = make_elbo(model, family, num_samples=m, kl=kl)(jax.random.PRNGKey(0), model.init(None), q, x)
        if tol is None:  # 4 Monte-Carlo standard errors of the mean of -log q(z): sd(log q) = sqrt(d/2)
            tol = 4 * np.sqrt(d / 2 / m)
        np.testing.assert_allclose(float(terms.entropy), entropy, atol=tol)
        for beta in (0.0, 0.3, 1.0):
            expected = float(terms.reconstruction) + cross + beta * entropy
            np.testing.assert_allclose(float(warmed_up(terms, jnp.array(beta), "entropy")), expected,
                                       atol=tol + (2 * tol if kl == "mc" else 0))
        np.testing.assert_allclose(float(warmed_up(terms, jnp.array(1.0), "entropy")), float(terms.elbo),
                                   rtol=1e-6)


def test_unknown_warmup_term_is_named():
    with pytest.raises(ValueError, match="unknown warmup_term 'kld'"):
        dataclasses.replace(SMALL, warmup_term="kld").validate()


def test_first_nonfinite_finds_the_step():
    values = jnp.array([1.0, 2.0, jnp.nan, jnp.inf])
    info = TrainInfo(values, values, values, values, values)
    assert first_nonfinite(info) == 2
    finite = jnp.ones(3)
    assert first_nonfinite(TrainInfo(finite, finite, finite, finite, finite)) is None


def test_diverging_training_stops_with_a_named_error(digits):
    with pytest.raises(FloatingPointError, match=r"non-finite training objective at epoch 1, step \d+"):
        run_small(digits, learning_rate=1e9, num_epochs=1)


def test_non_amortized_training_moves_only_visited_rows(digits):
    """One epoch visits floor(N / B) * B rows once each; the dropped remainder stays at the prior."""
    train, _ = digits
    config = dataclasses.replace(SMALL, mode="non_amortized", num_epochs=1)
    vae = build_vae(config, train.shape[1], num_train=len(train))
    assert vae.encoder is None
    result = train_vae(vae, config, train, progress=False)
    table = result.state.params["local"]
    counts = np.asarray(result.state.opt_state[1][0].count)
    visited = counts == 1
    assert visited.sum() == (len(train) // config.batch_size) * config.batch_size
    assert set(np.unique(counts)) == {0, 1}
    for name, value in table.items():
        assert np.all(np.asarray(value)[~visited] == 0.0)  # prior: mean 0, log_scale 0
        assert np.all(np.any(np.asarray(value)[visited] != 0.0, axis=1))


@pytest.mark.parametrize("differentiate", [False, True], ids=["stop-gradient", "differentiate-through"])
def test_semi_amortized_training_learns_and_refinement_helps(digits, differentiate):
    train, test = digits
    config = dataclasses.replace(SMALL, mode="semi_amortized", num_epochs=8, refine_steps=3,
                                 refine_differentiate=differentiate)
    vae = build_vae(config, train.shape[1])
    result = train_vae(vae, config, train, progress=False)
    elbos = [h["train_elbo"] for h in result.history]
    assert elbos[-1] > elbos[0] + 5.0, elbos
    # K refinement steps from the trained encoder's output raise the ELBO (paired, > 4 SE)
    params, x = result.state.params, train[:200]
    q0 = vae.encode(params["encoder"], x)
    refine = make_refine(vae.model, vae.family, optax.adam(config.refine_learning_rate))
    q_k = jax.jit(refine, static_argnums=4)(jax.random.PRNGKey(1), params["decoder"], q0, x, config.refine_steps)
    elbo = make_elbo(vae.model, vae.family, num_samples=50)
    evaluate = jax.jit(lambda q: map_datapoints(elbo, jax.random.PRNGKey(2), params["decoder"], q, x).elbo)
    gain = np.asarray(evaluate(q_k) - evaluate(q0))
    assert gain.mean() > 4 * gain.std(ddof=1) / np.sqrt(gain.size), gain.mean()


def test_amortized_flow_family_trains(digits):
    """The encoder outputs every flow parameter (family.num_params); the ELBO is the entropy form."""
    train, test = digits
    config = dataclasses.replace(SMALL, family="flow", kl="mc", num_epochs=5)
    vae = build_vae(config, train.shape[1])
    assert vae.family.name == "flow" and vae.family.num_params > 2 * config.latent_dim
    result = train_vae(vae, config, train, progress=False)
    elbos = [h["train_elbo"] for h in result.history]
    assert np.all(np.isfinite(elbos)) and elbos[-1] > elbos[0] + 5.0, elbos


def test_iwae_objective_is_the_mc_elbo_at_k1_and_grows_with_k(tiny):
    """L_1 = the entropy-form ELBO on the same draw (exactly); E[L_K] increases with K
    (Burda et al. 2015, Theorem 1), checked on 4000 independent keys per K."""
    from vi_jax.elbo import make_iwae_objective

    key = jax.random.PRNGKey(3)
    bound, terms = make_iwae_objective(tiny.model, tiny.family, num_samples=1)(key, tiny.theta, tiny.q_params, tiny.x)
    elbo = make_elbo(tiny.model, tiny.family, num_samples=1, kl="mc")(key, tiny.theta, tiny.q_params, tiny.x)
    np.testing.assert_allclose(bound, elbo.elbo, rtol=1e-6)
    np.testing.assert_allclose(terms.elbo, elbo.elbo, rtol=1e-6)
    keys = jax.random.split(jax.random.PRNGKey(4), 4000)
    means, ses = [], []
    for k in (1, 5, 50):
        fn = make_iwae_objective(tiny.model, tiny.family, num_samples=k)
        values = np.asarray(jax.vmap(lambda kk: fn(kk, tiny.theta, tiny.q_params, tiny.x)[0])(keys), np.float64)
        means.append(values.mean())
        ses.append(values.std(ddof=1) / np.sqrt(values.size))
    for i in range(2):
        assert means[i + 1] - means[i] > 4 * np.hypot(ses[i], ses[i + 1]), (means, ses)


def test_iwae_objective_trains_and_rejects_warmup(digits):
    vae, config, result = run_small(digits, objective="iwae", num_samples=5, num_epochs=2)
    assert all(np.isfinite(h["train_elbo"]) for h in result.history)
    with pytest.raises(ValueError, match="objective=iwae needs"):
        run_small(digits, objective="iwae", kl_warmup_epochs=1)


def test_staged_rate_and_output_bias_and_dynamic_binarization(digits):
    """The staged schedule reaches Adam (the first update moves a weight by ~ the stage's rate),
    the output bias starts at the pixel-mean logits, and dynamic binarization trains on 0/1."""
    from vi_jax.train import Algorithm, dynamically_binarized, staged_learning_rate
    from vi_jax.vae import pixel_mean_logits

    schedule = staged_learning_rate((2, 1), (1e-2, 1e-3), steps_per_epoch=10)
    assert [float(schedule(t)) for t in (0, 19, 20, 29)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    train, _ = digits
    grey = train * 0.5
    _, _, result = run_small(digits, num_epochs=1, decoder_output_bias="data_mean", learning_rate=1e-12)
    bias = result.state.params["decoder"]["params"]["Dense_1"]["bias"]
    np.testing.assert_allclose(bias, pixel_mean_logits(train), atol=1e-6)
    assert float(jnp.max(jnp.abs(pixel_mean_logits(train)))) < 7.0  # clipped, finite

    seen = []
    inner = Algorithm(lambda key, x: 0, lambda key, state, batch: (seen.append(batch) or state, None))
    dynamically_binarized(inner).step(jax.random.PRNGKey(0), 0, grey[:200])
    binary = np.asarray(seen[0])
    assert set(np.unique(binary)) <= {0.0, 1.0}
    # each pixel is Bernoulli(grey): the binarized mean is within 4 standard errors of the grey mean
    se = np.sqrt(np.sum(np.asarray(grey[:200]) * (1 - np.asarray(grey[:200])))) / binary.size
    assert abs(binary.mean() - float(grey[:200].mean())) < 4 * se


@pytest.mark.parametrize("estimator", ["stl", "score_function"])
def test_vae_trains_with_each_gradient_estimator(digits, estimator):
    """The config's estimator reaches the encoder's ELBO (estimators are tested for
    unbiasedness in tests/test_estimators.py); training stays finite and improves the ELBO."""
    _, _, result = run_small(digits, estimator=estimator, kl="mc", num_samples=2, num_epochs=4)
    elbos = [h["train_elbo"] for h in result.history]
    assert all(np.isfinite(elbos)) and elbos[-1] > elbos[0], elbos
    with pytest.raises(ValueError, match="unknown gradient estimator"):
        run_small(digits, estimator="reinforce")


def test_iwae_objective_refuses_the_mixture_family(tiny):
    from vi_jax.elbo import make_iwae_objective
    from vi_jax.families import get_family

    with pytest.raises(ValueError, match="mixture weights"):
        make_iwae_objective(tiny.model, get_family("mixture", 2), num_samples=5)


class WatchedWriter(JsonlWriter):
    """A JsonlWriter that notes, before each write, how many lines are already on disk."""

    def __init__(self, path):
        super().__init__(path)
        self.on_disk = []

    def write(self, record):
        self.on_disk.append(len(read_metrics(self.path)))
        super().write(record)


def lines_as_history(lines):
    """The history records the metrics lines describe: each epoch's train line and its eval line
    merged, without the fields the history does not keep."""
    history = {}
    for line in lines:
        extra = ("kind", "seconds") + (("train_loss", "kl_weight", "learning_rate") if line["kind"] == "train" else ())
        history.setdefault(line["epoch"], {}).update({k: v for k, v in line.items() if k not in extra})
    return list(history.values())


def test_metrics_file_grows_a_line_per_epoch_and_evaluation_and_matches_the_history(digits, tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    writer = WatchedWriter(path)
    _, config, result = run_small(digits, eval_every=2, metrics=writer, stage_epochs=(1, 2),
                                  stage_learning_rates=(1e-3, 3e-4), kl_warmup_epochs=2)
    lines = read_metrics(path)
    assert [(line["kind"], line["epoch"]) for line in lines] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3)]
    assert writer.on_disk == [0, 1, 2, 3]  # each line reached the file while training went on
    assert lines_as_history(lines) == result.history
    train_lines = [line for line in lines if line["kind"] == "train"]
    assert [line["learning_rate"] for line in train_lines] == [1e-3, 3e-4, 3e-4]
    # warm-up over 2 epochs of 14 steps: beta_t = (t + 1) / 28, averaged over each epoch's steps
    assert [line["kl_weight"] for line in train_lines] == pytest.approx([7.5 / 28, 21.5 / 28, 1.0])
    seconds = [line["seconds"] for line in lines]
    assert seconds == sorted(seconds) and seconds[-1] <= result.seconds
    # without metrics nothing is written, and the numbers are the same
    _, _, plain = run_small(digits, eval_every=2, stage_epochs=(1, 2), stage_learning_rates=(1e-3, 3e-4),
                            kl_warmup_epochs=2)
    assert plain.history == result.history
    chex.assert_trees_all_equal(plain.state.params, result.state.params)


def test_resumed_run_appends_to_the_metrics_file_without_duplicates(digits, tmp_path):
    train, test = digits
    config = dataclasses.replace(SMALL, eval_every=1, checkpoint_every=1)
    vae = build_vae(config, train.shape[1], len(train) // config.batch_size)
    path, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "checkpoints"
    full = train_vae(vae, config, train, test, progress=False, checkpoint_dir=str(checkpoints), metrics=path)
    uninterrupted = read_metrics(path)
    # the run "died" after writing epoch 3's lines, before its checkpoint, in the middle of a line
    shutil.rmtree(checkpoints / "3")
    with open(path, "a") as f:
        f.write('{"kind": "train", "epo')
    resumed = train_vae(vae, config, train, test, progress=False, checkpoint_dir=str(checkpoints), resume=True,
                        metrics=path)
    lines = read_metrics(path)
    assert [(line["kind"], line["epoch"]) for line in lines] == [(k, e) for e in (1, 2, 3) for k in ("train", "eval")]
    assert lines[:4] == uninterrupted[:4]  # the lines before the checkpoint are kept as they were
    drop_time = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert drop_time(lines) == drop_time(uninterrupted)
    assert lines_as_history(lines) == resumed.history == full.history
