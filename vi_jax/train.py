"""Training a decoder with three kinds of inference, all as init/step algorithms, and a fused epoch.

    algo = amortized_vi(model, family, encoder, optax.adam(1e-3))
    state = algo.init(key, x_example)
    state, info = algo.step(key, state, batch)        # one minibatch
    state, infos = make_epoch(algo.step, batch_size)(key, state, data)   # a whole epoch, one jit call

amortized_vi: q_phi(z|x) from an encoder. non_amortized_vi: a table of per-datapoint q_i
trained jointly with the decoder (its batches are (row indices, x)). semi_amortized_vi: the
encoder's output refined by K per-datapoint steps (Kim et al. 2018).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax.elbo import make_elbo, make_iwae_objective
from vi_jax.families import VariationalFamily
from vi_jax.local import make_refine, row_optimizer, take_rows, tile_rows
from vi_jax.models import LatentVariableModel

Array = jax.Array
Params = Any


class TrainState(NamedTuple):
    params: Params  # {"encoder": phi, "decoder": theta} or {"local": q table, "decoder": theta}
    opt_state: optax.OptState
    step: Array  # int32 scalar: optimiser steps taken


class TrainInfo(NamedTuple):
    """Minibatch means (nats per datapoint) of the step's objective and its parts."""

    loss: Array  # -warmed_up(terms, kl_weight, warmup_term)
    elbo: Array
    reconstruction: Array
    kl: Array
    kl_weight: Array


class Algorithm(NamedTuple):
    init: Callable[..., TrainState]
    step: Callable[[Array, TrainState, Array], tuple[TrainState, TrainInfo]]


def kl_weight(step: Array, warmup_steps: int) -> Array:
    """KL warm-up: beta_t = min(1, (t + 1) / warmup_steps); 1 when warmup_steps = 0.

    Not optax.linear_schedule: its interpolation init + (end - init) * t / T rounds differently
    in the last bit, and trained runs (their checkpoints) must resume bit for bit."""
    if warmup_steps <= 0:
        return jnp.array(1.0)
    return jnp.minimum(1.0, (step + 1) / warmup_steps)


WARMUP_TERMS = ("kl", "entropy")


def warmed_up(terms, beta: Array, warmup_term: str) -> Array:
    """The per-datapoint objective during warm-up (beta = 1: the ELBO).

    "kl": E_q[log p(x|z)] - beta KL(q || p(z)). "entropy": E_q[log p(x|z) + log p(z)] + beta H(q)
    = ELBO - (1 - beta) H(q), the warm-up of Cremer et al.'s code (lxuechen/inference-suboptimality
    vae.py, `logpx + logpz - warmup_const * logqz`; chriscremer/Inference-Suboptimality likewise).
    """
    if warmup_term == "kl":
        return terms.reconstruction - beta * terms.kl
    return terms.elbo - (1.0 - beta) * terms.entropy


def _check_warmup_term(warmup_term: str) -> None:
    if warmup_term not in WARMUP_TERMS:
        raise ValueError(f"unknown warmup_term {warmup_term!r}; known: {WARMUP_TERMS}")


def _encoder_decoder_init(model: LatentVariableModel, encoder: nn.Module,
                          optimizer: optax.GradientTransformation) -> Callable[..., TrainState]:
    def init(key: Array, x_example: Array) -> TrainState:
        key_enc, key_dec = jax.random.split(key)
        params = {"encoder": encoder.init(key_enc, x_example), "decoder": model.init(key_dec)}
        return TrainState(params, optimizer.init(params), jnp.array(0, jnp.int32))

    return init


def gradient_step(objective: Callable, optimizer: optax.GradientTransformation,
                   kl_warmup_steps: int) -> Callable:
    """step(key, state, batch): one optimizer step on objective(params, key, batch, beta)."""

    def step(key: Array, state: TrainState, batch) -> tuple[TrainState, TrainInfo]:
        beta = kl_weight(state.step, kl_warmup_steps)
        grads, info = jax.grad(objective, has_aux=True)(state.params, key, batch, beta)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), info

    return step


OBJECTIVES = ("elbo", "iwae")


def amortized_vi(model: LatentVariableModel, family: VariationalFamily, encoder: nn.Module,
                 optimizer: optax.GradientTransformation, *, num_samples: int = 1,
                 kl: str = "analytic", kl_warmup_steps: int = 0, objective: str = "elbo",
                 estimator: str = "reparam", warmup_term: str = "kl") -> Algorithm:
    """Jointly maximise (1/B) sum_i L(x_i; q_phi(z|x_i), theta) over encoder phi and decoder theta.

    q_phi(z|x) = family.distribution(family.unflatten(encoder(x))). objective="elbo": L is the
    ELBO with `num_samples` draws; during warm-up the objective is `warmed_up(terms, beta_t,
    warmup_term)`.
    objective="iwae": L is the IWAE bound L_K with K = num_samples (Burda et al. 2015; no
    warm-up). The logged `elbo` is always the ELBO (for "iwae": estimated from the same K draws).
    estimator: how the ELBO's gradient w.r.t. the encoder is estimated, a name in
    vi_jax.estimators.ESTIMATORS (see vi_jax.elbo.make_elbo); the IWAE objective is reparameterized.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown training objective {objective!r}; known: {OBJECTIVES}")
    _check_warmup_term(warmup_term)
    if objective == "iwae" and (kl_warmup_steps > 0 or estimator != "reparam"):
        raise ValueError("objective='iwae' takes no KL warm-up and only the reparameterized estimator")
    if objective == "iwae":
        iwae_fn = make_iwae_objective(model, family, num_samples=num_samples)
    else:
        elbo_fn = make_elbo(model, family, num_samples=num_samples, kl=kl, estimator=estimator)

    def loss_fn(params: Params, key: Array, batch: Array, beta: Array):
        def per_datapoint(k, x):
            q_params = family.unflatten(encoder.apply(params["encoder"], x))
            if objective == "iwae":
                bound, terms = iwae_fn(k, params["decoder"], q_params, x)
                return -bound, terms
            terms = elbo_fn(k, params["decoder"], q_params, x)
            return -warmed_up(terms, beta, warmup_term), terms

        keys = jax.random.split(key, batch.shape[0])
        losses, terms = jax.tree.map(jnp.mean, jax.vmap(per_datapoint)(keys, batch))
        return losses, TrainInfo(losses, terms.elbo, terms.reconstruction, terms.kl, beta)

    return Algorithm(_encoder_decoder_init(model, encoder, optimizer),
                     gradient_step(loss_fn, optimizer, kl_warmup_steps))


def dynamically_binarized(algorithm: Algorithm) -> Algorithm:
    """The same algorithm trained on x_t ~ Bernoulli(x), resampled at every step: dynamic
    binarization of grey-scale images x in [0, 1] (Burda et al. 2015). The step's key is split
    into one for the binarization and one for the algorithm; batches are arrays x."""

    def step(key: Array, state: TrainState, batch: Array):
        binarize_key, step_key = jax.random.split(key)
        return algorithm.step(step_key, state, jax.random.bernoulli(binarize_key, batch).astype(batch.dtype))

    return Algorithm(algorithm.init, step)


def staged_learning_rate(stage_epochs, stage_rates, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise-constant rate: stage s lasts stage_epochs[s] epochs at stage_rates[s].

    The optimizer's update t (0-based) lies in epoch floor(t / steps_per_epoch) + 1; stage s + 1
    begins at update (stage_epochs[0] + ... + stage_epochs[s]) x steps_per_epoch.
    """
    if len(stage_epochs) != len(stage_rates) or not stage_epochs:
        raise ValueError(f"need one rate per stage, got {len(stage_epochs)} stages and {len(stage_rates)} rates")
    boundaries = [int(b) for b in np.cumsum(stage_epochs)[:-1] * steps_per_epoch]
    return optax.join_schedules([optax.constant_schedule(float(r)) for r in stage_rates], boundaries)


def stage_of_epoch(stage_epochs, epoch: int) -> int:
    """1-based stage of a staged schedule that (1-based) `epoch` belongs to."""
    ends = np.cumsum(stage_epochs)
    if not 1 <= epoch <= ends[-1]:
        raise ValueError(f"epoch {epoch} lies outside the schedule's epochs 1..{ends[-1]}")
    return int(np.searchsorted(ends, epoch)) + 1


def make_epoch(step: Callable, batch_size: int) -> Callable:
    """One epoch fused into a single jitted `lax.scan`: no Python dispatch per step.

    epoch(key, state, data) -> (state, infos): the rows of `data` (an array, or a pytree of
    arrays sharing the leading axis) are visited in the order of `jax.random.permutation(key)`
    in floor(N / batch_size) minibatches (the remainder is dropped); step t gets key
    fold_in(key, t). `state` is donated.
    """

    def epoch(key: Array, state, data):
        num_rows = jax.tree.leaves(data)[0].shape[0]
        num_steps = num_rows // batch_size
        if num_steps == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {num_rows} training rows")
        perm_key, step_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, num_rows)
        batches = order[: num_steps * batch_size].reshape(num_steps, batch_size)

        def body(state, inputs):
            t, idx = inputs
            return step(jax.random.fold_in(step_key, t), state, take_rows(data, idx))

        return jax.lax.scan(body, state, (jnp.arange(num_steps), batches))

    return jax.jit(epoch, donate_argnums=1)


def non_amortized_vi(model: LatentVariableModel, family: VariationalFamily, num_rows: int,
                     optimizer: optax.GradientTransformation,
                     local_optimizer: optax.GradientTransformation, *, num_samples: int = 1,
                     kl: str = "analytic", kl_warmup_steps: int = 0, estimator: str = "reparam",
                     warmup_term: str = "kl") -> Algorithm:
    """The seeds' non-amortized algorithm: one q_i per training datapoint, |theta| + N |lambda_i|.

    Each step takes a minibatch of (row indices i, x_i), updates theta with the gradient of
    (1/B) sum_i L(x_i; q_i, theta), and updates each q_i in the batch with grad_{lambda_i} L_i
    through a per-row optimizer (rows outside the batch and their optimizer states do not move).
    The table starts at the prior; theta starts where amortized_vi's decoder does for the same key.
    """
    _check_warmup_term(warmup_term)
    elbo_fn = make_elbo(model, family, num_samples=num_samples, kl=kl, estimator=estimator)
    rows_opt = row_optimizer(local_optimizer)

    def init(key: Array, x_example: Array) -> TrainState:
        table = tile_rows(family.init(), num_rows)
        _, key_dec = jax.random.split(key)  # the decoder key of amortized_vi's init
        params = {"local": table, "decoder": model.init(key_dec)}
        return TrainState(params, (optimizer.init(params["decoder"]), rows_opt.init(table)),
                          jnp.array(0, jnp.int32))

    def objective(theta, q_rows, key, x, beta):
        keys = jax.random.split(key, x.shape[0])
        terms = jax.vmap(elbo_fn, (0, None, 0, 0))(keys, theta, q_rows, x)
        per_point = warmed_up(terms, beta, warmup_term)
        terms = jax.tree.map(jnp.mean, terms)
        # sum over the batch: d/d lambda_i is the per-datapoint gradient of L_i
        return -jnp.sum(per_point), TrainInfo(-jnp.mean(per_point), terms.elbo, terms.reconstruction,
                                              terms.kl, beta)

    def step(key: Array, state: TrainState, batch) -> tuple[TrainState, TrainInfo]:
        rows, x = batch
        beta = kl_weight(state.step, kl_warmup_steps)
        theta_opt, rows_state = state.opt_state
        q_rows = take_rows(state.params["local"], rows)
        (g_theta, g_rows), info = jax.grad(objective, argnums=(0, 1), has_aux=True)(
            state.params["decoder"], q_rows, key, x, beta)
        g_theta = jax.tree.map(lambda g: g / x.shape[0], g_theta)  # theta follows the batch mean
        updates, theta_opt = optimizer.update(g_theta, theta_opt, state.params["decoder"])
        theta = optax.apply_updates(state.params["decoder"], updates)
        table, rows_state = rows_opt.step_rows(state.params["local"], rows_state, rows, g_rows)
        return TrainState({"local": table, "decoder": theta}, (theta_opt, rows_state), state.step + 1), info

    return Algorithm(init, step)


def semi_amortized_vi(model: LatentVariableModel, family: VariationalFamily, encoder: nn.Module,
                      optimizer: optax.GradientTransformation, *, refine_steps: int,
                      refine_optimizer: optax.GradientTransformation, differentiate: bool = False,
                      num_samples: int = 1, kl: str = "analytic", kl_warmup_steps: int = 0,
                      estimator: str = "reparam", warmup_term: str = "kl") -> Algorithm:
    """Semi-amortized VI (Kim et al. 2018): lambda_0 = encoder(x), lambda_K = K per-datapoint
    refinement steps from lambda_0 on the ELBO (with theta held fixed inside the refinement).

    The decoder maximises L(x; lambda_K, theta). differentiate=False: lambda_K is a constant
    (stop-gradient) and the encoder maximises its own L(x; lambda_0) against the same decoder;
    differentiate=True: the encoder maximises L(x; lambda_K(phi)), backpropagating through the
    K refinement steps. The logged `elbo` is L(x; lambda_K).
    """
    _check_warmup_term(warmup_term)
    elbo_fn = make_elbo(model, family, num_samples=num_samples, kl=kl, estimator=estimator)
    refine = make_refine(model, family, refine_optimizer, num_samples=num_samples, kl=kl, estimator=estimator)

    def objective(params, key, batch, beta):
        theta, theta_fixed = params["decoder"], jax.lax.stop_gradient(params["decoder"])
        q0 = jax.vmap(lambda x: family.unflatten(encoder.apply(params["encoder"], x)))(batch)
        refine_key, key_k, key_0 = jax.random.split(key, 3)
        start = q0 if differentiate else jax.lax.stop_gradient(q0)
        q_k = refine(refine_key, theta_fixed, start, batch, refine_steps)
        keys = jax.random.split(key_k, batch.shape[0])
        terms = jax.tree.map(jnp.mean, jax.vmap(elbo_fn, (0, None, 0, 0))(keys, theta, q_k, batch))
        loss = -warmed_up(terms, beta, warmup_term)
        if not differentiate:
            keys = jax.random.split(key_0, batch.shape[0])
            enc = jax.tree.map(jnp.mean, jax.vmap(elbo_fn, (0, None, 0, 0))(keys, theta_fixed, q0, batch))
            loss = loss - warmed_up(enc, beta, warmup_term)
        return loss, TrainInfo(loss, terms.elbo, terms.reconstruction, terms.kl, beta)

    return Algorithm(_encoder_decoder_init(model, encoder, optimizer),
                     gradient_step(objective, optimizer, kl_warmup_steps))


def first_nonfinite(infos: TrainInfo) -> int | None:
    """Index of the first step whose loss or ELBO is NaN/inf, or None if all are finite."""
    bad = ~(jnp.isfinite(infos.loss) & jnp.isfinite(infos.elbo))
    return int(jnp.argmax(bad)) if bool(bad.any()) else None
