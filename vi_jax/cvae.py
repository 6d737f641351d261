"""Conditional VAE (Sohn, Lee & Yan 2015): a target x given an observed condition c.

    prior    p(z | c)    = N(mu_p(c), diag sigma_p(c)^2)            (a small network on c)
    decoder  p(x | z, c) = likelihood(decoder([z, c]))
    encoder  q(z | x, c) = N(mu_q(x, c), diag sigma_q(x, c)^2)      (the diagonal Gaussian family)
    ELBO(x | c) = E_q[log p(x | z, c)] - KL(q(z | x, c) || p(z | c))  <=  log p(x | c)

For a fixed c the model is an ordinary LatentVariableModel in whitened coordinates
u = (z - mu_p(c)) / sigma_p(c), whose prior is N(0, I): the likelihood is p(x | mu_p + sigma_p u, c)
and q(z|x,c) maps to q(u) = N((mu_q - mu_p) / sigma_p, sigma_q / sigma_p). The map is a shared
bijection, so KL(q(u) || N(0, I)) = KL(q(z) || p(z|c)) and every importance weight p(x, z|c) / q(z)
is unchanged (the Jacobians cancel): vi_jax.elbo's ELBO (with the family's closed-form KL) and
IWAE apply as they are.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax import networks, streams
from vi_jax.config import Rule, check_fields, count, one_of, real, widths
from vi_jax.data import DATASETS
from vi_jax.distributions import Likelihood, get_likelihood
from vi_jax.elbo import (IWAE_CHUNK_SIZE, ElboTerms, IwaeTerms, elbo_rows_per_step, make_elbo, make_iwae,
                         map_datapoints)
from vi_jax.families import VariationalFamily, diagonal_gaussian
from vi_jax.loop import TrainResult, run_epochs
from vi_jax.metrics import MetricsTarget
from vi_jax.models import LatentVariableModel
from vi_jax.train import Algorithm, TrainInfo, TrainState, gradient_step, make_epoch

Array = jax.Array
Params = dict


@dataclasses.dataclass(frozen=True)
class CVAEConfig:
    """Everything that determines a CVAE run; `seed` fixes every random draw."""

    seed: int = 0
    dataset: str = "digits"  # must carry labels: the condition c
    likelihood: str = "bernoulli"
    num_classes: int = 10
    latent_dim: int = 8
    encoder_hidden: tuple[int, ...] = (200, 200)
    decoder_hidden: tuple[int, ...] = (200, 200)
    prior_hidden: tuple[int, ...] = (64,)
    activation: str = "relu"
    num_samples: int = 1  # reparameterized draws per datapoint in the training ELBO
    batch_size: int = 50
    learning_rate: float = 1e-3
    num_epochs: int = 200
    eval_elbo_samples: int = 100  # draws per datapoint for reported ELBOs
    final_iwae_samples: int = 5000  # K of the held-out IWAE estimate of log p(x | c)
    eval_batch_size: int = 100  # datapoints vmapped at once in evaluation (ELBOs: fewer, elbo_rows_per_step)
    samples_per_class: int = 10  # columns of the per-class sample grid

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "dataset": one_of(DATASETS), "num_classes": count(1), "latent_dim": count(1),
        "encoder_hidden": widths, "decoder_hidden": widths, "prior_hidden": widths, "num_samples": count(1),
        "batch_size": count(1), "learning_rate": real(0), "num_epochs": count(1), "eval_elbo_samples": count(1),
        "final_iwae_samples": count(1), "eval_batch_size": count(1), "samples_per_class": count(1)}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        get_likelihood(self.likelihood)
        networks.check_network_options(self.activation, "lecun_normal")


def one_hot_labels(labels, num_classes: int, num_rows: int | None = None) -> Array:
    """Validated one-hot conditions [N, num_classes] from integer class labels [N].

    ValueError if labels are not a 1-D integer array, do not match num_rows, or lie outside
    [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if num_rows is not None and labels.shape[0] != num_rows:
        raise ValueError(f"got {labels.shape[0]} labels for {num_rows} data rows")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    return jax.nn.one_hot(labels, num_classes)


class CVAE(NamedTuple):
    """The networks of a conditional VAE and the pure functions built on them.

    params = {"encoder", "prior", "decoder"}; c is a one-hot condition [num_classes].
    """

    latent_dim: int
    data_dim: int
    num_classes: int
    family: VariationalFamily  # diagonal Gaussian over z
    likelihood: Likelihood
    encoder: nn.Module  # [x, c] -> (mu_q, log sigma_q)
    prior_net: nn.Module  # c -> (mu_p, log sigma_p)
    decoder: nn.Module  # [z, c] -> likelihood parameters

    def init(self, key: Array) -> Params:
        k_enc, k_prior, k_dec = jax.random.split(key, 3)
        c = jnp.zeros(self.num_classes)
        return {"encoder": self.encoder.init(k_enc, jnp.zeros(self.data_dim + self.num_classes)),
                "prior": self.prior_net.init(k_prior, c),
                "decoder": self.decoder.init(k_dec, jnp.zeros(self.latent_dim + self.num_classes))}

    def prior_params(self, params: Params, c: Array) -> dict:
        """{"mean", "log_scale"} of p(z | c)."""
        return self.family.unflatten(self.prior_net.apply(params["prior"], c))

    def posterior_params(self, params: Params, x: Array, c: Array) -> dict:
        """{"mean", "log_scale"} of q(z | x, c)."""
        return self.family.unflatten(self.encoder.apply(params["encoder"], jnp.concatenate([x, c])))

    def whitened_posterior(self, params: Params, x: Array, c: Array) -> dict:
        """q(u | x, c) for u = (z - mu_p(c)) / sigma_p(c): N((mu_q - mu_p) / sigma_p, sigma_q / sigma_p)."""
        q, p = self.posterior_params(params, x, c), self.prior_params(params, c)
        return {"mean": (q["mean"] - p["mean"]) * jnp.exp(-p["log_scale"]),
                "log_scale": q["log_scale"] - p["log_scale"]}

    def decode(self, params: Params, z: Array, c: Array) -> Array:
        return self.decoder.apply(params["decoder"], jnp.concatenate([z, c]))

    def given(self, c: Array) -> LatentVariableModel:
        """p(x, u | c) for this c in whitened coordinates (prior N(0, I), theta = params)."""

        def z_of(params, u):
            p = self.prior_params(params, c)
            return p["mean"] + jnp.exp(p["log_scale"]) * u

        return LatentVariableModel(
            latent_dim=self.latent_dim, data_dim=self.data_dim, init=self.init,
            likelihood=lambda params, u: self.likelihood.distribution(self.decode(params, z_of(params, u), c)),
            mean=lambda params, u: self.likelihood.mean(self.decode(params, z_of(params, u), c)))


def build_cvae(config: CVAEConfig, data_dim: int) -> CVAE:
    config.validate()
    likelihood = get_likelihood(config.likelihood)
    family = diagonal_gaussian(config.latent_dim)
    return CVAE(
        latent_dim=config.latent_dim, data_dim=data_dim, num_classes=config.num_classes, family=family,
        likelihood=likelihood,
        encoder=networks.encoder(config.encoder_hidden, family.num_params, config.activation),
        prior_net=networks.MLP(tuple(config.prior_hidden), family.num_params, config.activation),
        decoder=networks.decoder(config.decoder_hidden, likelihood.num_outputs(data_dim), config.activation))


def make_cvae_elbo(cvae: CVAE, *, num_samples: int = 1, kl: str = "analytic") -> Callable:
    """Per-datapoint ELBO(x | c): fn(key, params, c, x) -> ElboTerms (vi_jax.elbo.make_elbo on the
    whitened model; kl="analytic" is KL(q(z|x,c) || p(z|c)) in closed form)."""
    make_elbo(cvae.given(jnp.zeros(cvae.num_classes)), cvae.family, num_samples=num_samples, kl=kl)  # check options

    def elbo(key: Array, params: Params, c: Array, x: Array) -> ElboTerms:
        fn = make_elbo(cvae.given(c), cvae.family, num_samples=num_samples, kl=kl)
        return fn(key, params, cvae.whitened_posterior(params, x, c), x)

    return elbo


def make_cvae_iwae(cvae: CVAE, *, num_samples: int, chunk_size: int = IWAE_CHUNK_SIZE) -> Callable:
    """Per-datapoint IWAE bound on log p(x | c) with proposal q(z|x,c): fn(key, params, c, x) ->
    IwaeTerms (vi_jax.elbo.make_iwae on the whitened model: chunked, with its MC standard error)."""
    make_iwae(cvae.given(jnp.zeros(cvae.num_classes)), cvae.family, num_samples=num_samples,
              chunk_size=chunk_size)  # check options

    def iwae(key: Array, params: Params, c: Array, x: Array) -> IwaeTerms:
        fn = make_iwae(cvae.given(c), cvae.family, num_samples=num_samples, chunk_size=chunk_size)
        return fn(key, params, cvae.whitened_posterior(params, x, c), x)

    return iwae


def conditional_vi(cvae: CVAE, optimizer: optax.GradientTransformation, *, num_samples: int = 1) -> Algorithm:
    """Maximise (1/B) sum_i ELBO(x_i | c_i) over encoder, prior network and decoder jointly.
    Batches are pytrees (x [B, D], c [B, num_classes]); make_epoch runs whole epochs of them."""
    elbo_fn = make_cvae_elbo(cvae, num_samples=num_samples)

    def init(key: Array) -> TrainState:
        params = cvae.init(key)
        return TrainState(params, optimizer.init(params), jnp.array(0, jnp.int32))

    def objective(params, key, batch, beta):
        x, c = batch
        keys = jax.random.split(key, x.shape[0])
        terms = jax.tree.map(jnp.mean, jax.vmap(elbo_fn, (0, None, 0, 0))(keys, params, c, x))
        loss = -(terms.reconstruction - beta * terms.kl)
        return loss, TrainInfo(loss, terms.elbo, terms.reconstruction, terms.kl, beta)

    return Algorithm(init, gradient_step(objective, optimizer, 0))


def generate(key: Array, cvae: CVAE, params: Params, labels) -> Array:
    """Conditional generation: for each label c_i, z_i ~ p(z | c_i) and x_i = E[x | z_i, c_i]; [N, D]."""
    return _generate(key, cvae, params, one_hot_labels(labels, cvae.num_classes))


@functools.partial(jax.jit, static_argnums=1)
def _generate(key: Array, cvae: CVAE, params: Params, c: Array) -> Array:
    def one(k, c_i):
        z = cvae.family.distribution(cvae.prior_params(params, c_i)).sample(seed=k)
        return cvae.likelihood.mean(cvae.decode(params, z, c_i))

    return jax.vmap(one)(jax.random.split(key, c.shape[0]), c)


class Evaluator(NamedTuple):
    """Jitted per-datapoint held-out ELBO(x|c) [N] and IWAE terms, fn(key, params, x, c_onehot)."""

    elbo: Callable
    iwae: Callable


def make_evaluator(cvae: CVAE, config: CVAEConfig, iwae_samples: int) -> Evaluator:
    """Datapoint i gets key fold_in(key, i) (vi_jax.elbo.map_datapoints, with c in the slot of the
    per-datapoint parameters), config.eval_batch_size rows vmapped at a time (ELBOs: fewer,
    vi_jax.elbo.elbo_rows_per_step)."""
    elbo_fn = make_cvae_elbo(cvae, num_samples=config.eval_elbo_samples)
    elbo_rows = elbo_rows_per_step(config.eval_elbo_samples, config.eval_batch_size)
    iwae_fn = make_cvae_iwae(cvae, num_samples=iwae_samples)

    def elbo(key, params, x, c):
        return map_datapoints(elbo_fn, key, params, c, x, elbo_rows).elbo

    def iwae(key, params, x, c):
        return map_datapoints(iwae_fn, key, params, c, x, config.eval_batch_size)

    return Evaluator(jax.jit(elbo), jax.jit(iwae))


def train_cvae(cvae: CVAE, config: CVAEConfig, x, labels, *, progress: bool = True,
               metrics: MetricsTarget = None) -> TrainResult:
    """config.num_epochs fused epochs of conditional_vi with Adam(config.learning_rate) on (x, one-hot
    labels), on vi_jax.loop. Keys (vi_jax.streams): init fold_in(seed, INIT), epoch e
    fold_in(fold_in(seed, EPOCHS), e). History: the
    mean training ELBO of each epoch. FloatingPointError at the first NaN/inf objective.
    metrics (a path or a vi_jax.metrics writer): one "train" line per epoch."""
    config.validate()
    x = jnp.asarray(x)
    c = one_hot_labels(labels, cvae.num_classes, x.shape[0])
    algorithm = conditional_vi(cvae, optax.adam(config.learning_rate), num_samples=config.num_samples)
    state = algorithm.init(streams.stream(config.seed, streams.INIT))

    def summarize(epoch, infos):
        # one transfer for all the epoch's means (the history's train_elbo as it always was)
        elbo, loss, beta = jax.device_get((infos.elbo.mean(), infos.loss.mean(), infos.kl_weight.mean()))
        return {"train_elbo": float(elbo)}, {"train_loss": float(loss), "kl_weight": float(beta),
                                             "learning_rate": config.learning_rate}

    return run_epochs(make_epoch(algorithm.step, config.batch_size), state, (x, c),
                      epoch_key=streams.stream(config.seed, streams.EPOCHS), num_epochs=config.num_epochs,
                      summarize=summarize, metrics=metrics, progress=progress)
