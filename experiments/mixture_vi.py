"""Variational EM on a Gaussian mixture: per-datapoint and amortized categorical q(z) against the
exact posterior.

    python -m experiments.mixture_vi --workdir runs/mixture                 # about 10 s of CPU time
    python -m experiments.mixture_vi --workdir runs/mixture --set estimator=score_function
    python -m experiments.mixture_vi --workdir runs/mixture --quick         # smoke run

Data: num_train + num_test points drawn from a known K-component GMM in R^D (means ~ N(0, 2^2 I),
unit scales, equal weights; seeded). Two ways of fitting q jointly with theta by maximum ELBO
(vi_jax.mixture_model): "local", a table of eta_i (per-datapoint Adam), and "amortized", an MLP
encoder x -> eta. The family Cat(softmax(eta)) contains every posterior, so for each method
log p(x_i) - L(x_i; q_i) = KL(q_i || p(z|x_i)) (exact, under the method's own learned theta) is
all inference error. Refitting every q_i with theta fixed (from q's own output, Adam decayed to
refit_final_learning_rate) reaches the posterior; L[q*] - L[q] is the amortization gap for the
encoder (for the table: how far joint training left it from its optimum).

Writes --workdir/metrics.json (atomically): per method the mean over training points (with
stderr) of log p(x), ELBO, KL(q || p(z|x)) before and after the refit and their difference; the
encoder's KL on held-out points; held-out log p(x) under each learned theta and under the truth;
seed, config, environment, wall times.
Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only mixture_vi --no-peers --check experiments/benchmark/references/default.json
With the defaults the encoder's KL is below the table's: the table gets one step per row per
epoch, the encoder one per batch, so at equal epochs the table lags its posteriors and its lag
biases theta. (--set estimator=score_function: BENCHMARKS.md, "Figures no reference checks".)
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from vi_jax import networks, rundir, storage
from vi_jax.config import Rule, check_fields, count, one_of, real, widths
from vi_jax.mixture_model import (ESTIMATORS, GaussianMixture, amortized_mixture_vi, local_mixture_vi,
                                  make_mixture_elbo, make_posterior_fit, posterior_kl)
from vi_jax.stats import mean_and_stderr
from vi_jax.train import make_epoch

from ._common import Cli, header

METHODS = ("amortized", "local")


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    seed: int = 0
    num_components: int = 3
    data_dim: int = 2
    truth_mean_scale: float = 2.0  # the true means ~ N(0, truth_mean_scale^2 I)
    num_train: int = 500
    num_test: int = 500
    estimator: str = "enumeration"  # training ELBO: "enumeration" or "score_function"
    num_samples: int = 2  # draws per datapoint of the score-function estimator
    encoder_hidden: tuple[int, ...] = (32,)
    learning_rate: float = 1e-2  # Adam on theta and the encoder
    # Adam(b2 = 0.9) on each eta_i: the gradient in eta_k shrinks like q_k as q_k -> 0, so the
    # second-moment estimate must forget fast for q to approach near-one-hot posteriors
    local_learning_rate: float = 0.1
    batch_size: int = 50
    num_epochs: int = 200
    refit_steps: int = 1000
    refit_learning_rate: float = 0.1  # decayed exponentially to refit_final_learning_rate
    refit_final_learning_rate: float = 1e-3

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "num_components": count(1), "data_dim": count(1), "truth_mean_scale": real(0),
        "num_train": count(1), "num_test": count(1), "estimator": one_of(ESTIMATORS), "num_samples": count(1),
        "encoder_hidden": widths, "learning_rate": real(0), "local_learning_rate": real(0),
        "batch_size": count(1), "num_epochs": count(1), "refit_steps": count(1), "refit_learning_rate": real(0),
        "refit_final_learning_rate": real(0)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if self.batch_size > self.num_train:
            raise ValueError(f"batch_size {self.batch_size} exceeds num_train {self.num_train}")
        make_mixture_elbo(GaussianMixture(1, 1), estimator=self.estimator, num_samples=self.num_samples)


QUICK = ["num_train=100", "num_test=100", "num_epochs=20", "refit_steps=200"]

CLI = Cli(__doc__, MixtureConfig, workdir="runs/mixture_vi", writes="metrics.json", quick=QUICK, progress=False,
          example=f"--set estimator={ESTIMATORS[1]}")


def row_optimizer_for(config: MixtureConfig) -> optax.GradientTransformation:
    return optax.adam(config.local_learning_rate, b2=0.9)


@rundir.staged
def run(config: MixtureConfig, workdir: str) -> dict:
    """Draw the data, fit both methods, compare with the exact posteriors, write metrics.json."""
    config.validate()
    start = time.perf_counter()
    model = GaussianMixture(config.num_components, config.data_dim)
    root = jax.random.PRNGKey(config.seed)
    truth_key, train_key, test_key, fit_key, refit_key = (jax.random.fold_in(root, i) for i in range(5))
    truth = model.init(truth_key, config.truth_mean_scale)
    sample = jax.jit(model.sample, static_argnums=2)
    train, _ = sample(train_key, truth, config.num_train)
    test, _ = sample(test_key, truth, config.num_test)

    exact_elbo = jax.vmap(make_mixture_elbo(model), (None, None, 0, 0))
    refit_optimizer = optax.adam(optax.exponential_decay(
        config.refit_learning_rate, config.refit_steps, config.refit_final_learning_rate / config.refit_learning_rate),
        b2=0.9)
    refit = jax.jit(make_posterior_fit(model, refit_optimizer, config.refit_steps))

    @jax.jit
    def evaluate(theta, eta, x):
        """Per-datapoint log p(x), L(x; q) and KL(q || p(z|x)), all exact."""
        log_px = jax.vmap(model.log_marginal, (None, 0))(theta, x)
        kl = jax.vmap(posterior_kl, (None, None, 0, 0))(model, theta, eta, x)
        return log_px, exact_elbo(None, theta, eta, x).elbo, kl

    log_px_test = jax.jit(jax.vmap(model.log_marginal, (None, 0)))
    encoder = networks.encoder(config.encoder_hidden, config.num_components, "tanh")
    common = dict(estimator=config.estimator, num_samples=config.num_samples)
    algorithms = {
        "amortized": amortized_mixture_vi(model, encoder, optax.adam(config.learning_rate), **common),
        "local": local_mixture_vi(model, config.num_train, optax.adam(config.learning_rate),
                                  row_optimizer_for(config), **common),
    }
    metrics, seconds = {}, {}
    for i, method in enumerate(METHODS):
        algo = algorithms[method]
        batches = train if method == "amortized" else (jnp.arange(config.num_train), train)
        tic = time.perf_counter()
        state = algo.init(jax.random.fold_in(fit_key, i), train[0])
        epoch = make_epoch(algo.step, config.batch_size)
        for e in range(config.num_epochs):
            state, _ = epoch(jax.random.fold_in(jax.random.fold_in(fit_key, 10 + i), e), state, batches)
        theta = state.params["model"]
        eta = jax.jit(encoder.apply)(state.params["encoder"], train) if method == "amortized" else state.params["local"]
        log_px, elbo, kl = evaluate(theta, eta, train)
        eta_star = refit(jax.random.fold_in(refit_key, i), theta, eta, train)
        _, elbo_star, kl_star = evaluate(theta, eta_star, train)
        seconds[method] = round(time.perf_counter() - tic, 2)
        metrics[method] = {
            "train_log_px": mean_and_stderr(log_px),
            "train_elbo": mean_and_stderr(elbo),
            "train_kl_to_posterior": mean_and_stderr(kl),
            "train_elbo_refit": mean_and_stderr(elbo_star),
            "train_kl_to_posterior_refit": mean_and_stderr(kl_star),
            "refit_gain": mean_and_stderr(elbo_star - elbo),
            "test_log_px": mean_and_stderr(log_px_test(theta, test)),
        }
        if method == "amortized":
            eta_test = jax.jit(encoder.apply)(state.params["encoder"], test)
            metrics[method]["test_kl_to_posterior"] = mean_and_stderr(evaluate(theta, eta_test, test)[2])
    metrics["truth"] = {"train_log_px": mean_and_stderr(log_px_test(truth, train)),
                        "test_log_px": mean_and_stderr(log_px_test(truth, test))}
    metrics.update(header(config), wall_seconds={**seconds, "total": round(time.perf_counter() - start, 2)})
    storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def summary(metrics: dict) -> str:
    lines = []
    for method in METHODS:
        m = metrics[method]
        lines.append(f"{method:9s} KL(q || p(z|x)) {m['train_kl_to_posterior']['mean']:.5f} ± "
                     f"{m['train_kl_to_posterior']['stderr']:.5f}, after refit "
                     f"{m['train_kl_to_posterior_refit']['mean']:.2e}; test log p(x) {m['test_log_px']['mean']:.3f}")
    lines.append(f"truth     test log p(x) {metrics['truth']['test_log_px']['mean']:.3f}")
    return "\n".join(lines)


main = CLI.main(run, report=summary)


if __name__ == "__main__":
    main()
