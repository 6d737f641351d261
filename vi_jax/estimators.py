"""Gradient estimators that are not pathwise: the score-function (REINFORCE) surrogate.

For latents that cannot be reparameterized (discrete z), grad_lambda E_{q_lambda}[f(z; lambda)]
= E_q[f(z) grad log q_lambda(z)] + E_q[grad f(z; lambda)] (Williams 1992). With M >= 2 draws the
leave-one-out baseline b_m = (1/(M-1)) sum_{j != m} f(z_j) is independent of z_m, so subtracting
it keeps the estimator unbiased while removing most of its variance (Kool et al. 2019).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def score_function_surrogate(f: Array, log_q: Array) -> Array:
    """A scalar whose value is mean_m f_m and whose gradient is the score-function estimate

        (1/M) sum_m [ (f_m - b_m) grad log q(z_m) + grad f_m ],   b_m = leave-one-out mean of f,

    for f [M] = f(z_m) and log_q [M] = log q(z_m) at draws z_m that carry no gradient
    (stop_gradient the samples before computing f and log_q). M must be >= 2.
    """
    num_samples = f.shape[0]
    if num_samples < 2:
        raise ValueError(f"the leave-one-out baseline needs >= 2 samples, got {num_samples}")
    f_const = jax.lax.stop_gradient(f)
    baseline = (jnp.sum(f_const) - f_const) / (num_samples - 1)
    score = log_q - jax.lax.stop_gradient(log_q)  # value 0, gradient grad log q
    return jnp.mean(f + (f_const - baseline) * score)
