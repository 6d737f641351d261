"""Amortized variational inference as an init/step algorithm, and a fused training epoch.

    algo = amortized_vi(model, family, encoder, optax.adam(1e-3))
    state = algo.init(key, x_example)
    state, info = algo.step(key, state, batch)        # one minibatch
    state, infos = make_epoch(algo.step, batch_size)(key, state, data)   # a whole epoch, one jit call
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vi_jax.elbo import make_elbo
from vi_jax.families import VariationalFamily
from vi_jax.models import LatentVariableModel

Array = jax.Array
Params = Any


class TrainState(NamedTuple):
    params: Params  # {"encoder": phi, "decoder": theta}
    opt_state: optax.OptState
    step: Array  # int32 scalar: optimiser steps taken


class TrainInfo(NamedTuple):
    """Minibatch means (nats per datapoint) of the step's objective and its parts."""

    loss: Array  # -(reconstruction - kl_weight * kl)
    elbo: Array
    reconstruction: Array
    kl: Array
    kl_weight: Array


class Algorithm(NamedTuple):
    init: Callable[..., TrainState]
    step: Callable[[Array, TrainState, Array], tuple[TrainState, TrainInfo]]


def kl_weight(step: Array, warmup_steps: int) -> Array:
    """KL warm-up: beta_t = min(1, (t + 1) / warmup_steps); 1 when warmup_steps = 0."""
    if warmup_steps <= 0:
        return jnp.array(1.0)
    return jnp.minimum(1.0, (step + 1) / warmup_steps)


def amortized_vi(model: LatentVariableModel, family: VariationalFamily, encoder: nn.Module,
                 optimizer: optax.GradientTransformation, *, num_samples: int = 1,
                 kl: str = "analytic", kl_warmup_steps: int = 0) -> Algorithm:
    """Jointly maximise (1/B) sum_i L(x_i; q_phi(z|x_i), theta) over encoder phi and decoder theta.

    q_phi(z|x) = family.distribution(family.unflatten(encoder(x))). During KL warm-up the
    objective is E_q[log p(x|z)] - beta_t KL; the logged `elbo` is always the true ELBO.
    """
    elbo_fn = make_elbo(model, family, num_samples=num_samples, kl=kl)

    def init(key: Array, x_example: Array) -> TrainState:
        key_enc, key_dec = jax.random.split(key)
        params = {"encoder": encoder.init(key_enc, x_example), "decoder": model.init(key_dec)}
        return TrainState(params, optimizer.init(params), jnp.array(0, jnp.int32))

    def objective(params: Params, key: Array, batch: Array, beta: Array):
        def per_datapoint(k, x):
            q_params = family.unflatten(encoder.apply(params["encoder"], x))
            return elbo_fn(k, params["decoder"], q_params, x)

        keys = jax.random.split(key, batch.shape[0])
        terms = jax.tree.map(jnp.mean, jax.vmap(per_datapoint)(keys, batch))
        loss = -(terms.reconstruction - beta * terms.kl)
        return loss, TrainInfo(loss, terms.elbo, terms.reconstruction, terms.kl, beta)

    def step(key: Array, state: TrainState, batch: Array) -> tuple[TrainState, TrainInfo]:
        beta = kl_weight(state.step, kl_warmup_steps)
        grads, info = jax.grad(objective, has_aux=True)(state.params, key, batch, beta)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), info

    return Algorithm(init, step)


def make_epoch(step: Callable, batch_size: int) -> Callable:
    """One epoch fused into a single jitted `lax.scan`: no Python dispatch per step.

    epoch(key, state, data) -> (state, infos): the rows of `data` are visited in the order of
    `jax.random.permutation(key)` in floor(N / batch_size) minibatches (the remainder is
    dropped); step t gets key fold_in(key, t). `state` is donated.
    """

    def epoch(key: Array, state, data: Array):
        num_steps = data.shape[0] // batch_size
        if num_steps == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {data.shape[0]} training rows")
        perm_key, step_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, data.shape[0])
        batches = order[: num_steps * batch_size].reshape(num_steps, batch_size)

        def body(state, inputs):
            t, idx = inputs
            return step(jax.random.fold_in(step_key, t), state, data[idx])

        return jax.lax.scan(body, state, (jnp.arange(num_steps), batches))

    return jax.jit(epoch, donate_argnums=1)


def first_nonfinite(infos: TrainInfo) -> int | None:
    """Index of the first step whose loss or ELBO is NaN/inf, or None if all are finite."""
    bad = ~(jnp.isfinite(infos.loss) & jnp.isfinite(infos.elbo))
    return int(jnp.argmax(bad)) if bool(bad.any()) else None
