"""log p(x) estimators beyond IWAE: annealed importance sampling (AIS) and naive prior Monte Carlo.

AIS (Neal 2001) anneals from a proposal q(z) (the prior, an encoder's q or a fitted q*) to the
unnormalized posterior p(x, z) along the geometric path

    f_t(z) = q(z)^(1 - beta_t) p(x, z)^beta_t,    0 = beta_0 < beta_1 < ... < beta_T = 1.

Each of C chains starts at z_0 ~ q and for t = 1..T accumulates

    log w += log f_t(z_{t-1}) - log f_{t-1}(z_{t-1}) = (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log q(z_{t-1})]

then (for t < T) moves z_{t-1} -> z_t with an HMC transition that leaves f_t invariant. Each w is
an unbiased estimate of p(x) = integral f_T / integral f_0, so log (1/C) sum_c w_c is a
stochastic lower bound on log p(x) (like IWAE's, whose special case T = 1 it is).
The HMC protocol is Cremer, Li & Duvenaud (2018)'s (from their public code): 10 leapfrog
steps, identity mass, step size multiplied by 1.02 after a transition whose acceptance rate
exceeded 0.65 and by 0.98 otherwise, kept within [1e-4, 0.5], starting at 0.1. Here the step
size is per datapoint, the acceptance rate is the mean Metropolis acceptance probability (not
the 0/1 outcomes: same expectation, less noise), and it comes from separate adaptation chains
so that the estimate stays unbiased (see `make_ais`). The HMC kernel is BlackJAX's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc import hmc

from vi_jax.array_types import Array, Params
from vi_jax.config import Rule, check_fields, count, one_of, real
from vi_jax.distributions import sample_and_log_prob
from vi_jax.elbo import IWAE_CHUNK_SIZE, IwaeTerms, log_mean_weight_stderr, make_iwae, map_datapoints
from vi_jax.families import VariationalFamily, diagonal_gaussian
from vi_jax.local import tile_rows
from vi_jax.models import LatentVariableModel

SCHEDULES = ("sigmoid", "linear")
SIGMOID_SHARPNESS = 4.0  # delta of the sigmoid schedule (Grosse et al. 2013; Wu et al. 2017)


@dataclasses.dataclass(frozen=True)
class AisConfig:
    """num_steps = T intermediate distributions f_1..f_T (T - 1 HMC transitions; T = 1 is plain
    importance sampling with q). adapt_chains: extra chains that only drive the step size
    (see `make_ais`); their weights are discarded."""

    num_chains: int = 16
    num_steps: int = 100
    schedule: str = "sigmoid"
    leapfrog_steps: int = 10
    initial_step_size: float = 0.1
    target_acceptance: float = 0.65
    adapt_rate: float = 0.02  # step size *= 1 + rate above the target, 1 - rate below it
    min_step_size: float = 1e-4
    max_step_size: float = 0.5
    adapt_chains: int = 4

    RULES: ClassVar[dict[str, Rule]] = {
        "num_chains": count(1), "num_steps": count(1), "schedule": one_of(SCHEDULES), "leapfrog_steps": count(1),
        "initial_step_size": real(0), "target_acceptance": real(0, 1), "adapt_rate": real(0, 1, low_closed=True),
        "min_step_size": real(0), "max_step_size": real(0), "adapt_chains": count(1)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if not self.min_step_size <= self.initial_step_size <= self.max_step_size:
            raise ValueError("need min_step_size <= initial_step_size <= max_step_size, got "
                             f"{self.min_step_size}, {self.initial_step_size}, {self.max_step_size}")

    def likelihood_evaluations(self) -> int:
        """Evaluations of log p(x, z) per datapoint (with or without its gradient), all chains:
        one at z_0, then per transition one (weight and gradient at the start) plus one per
        leapfrog step: (num_chains + adapt_chains) (1 + (T - 1)(leapfrog_steps + 1))."""
        return (self.num_chains + self.adapt_chains) * (1 + (self.num_steps - 1) * (self.leapfrog_steps + 1))


class AisTerms(NamedTuple):
    """log_px = log (1/C) sum_c w_c over the C estimator chains; stderr: its delta-method
    Monte-Carlo standard error sqrt(Var(w) / C) / mean(w) (as `IwaeTerms.stderr`);
    acceptance_rate: mean HMC acceptance probability over those chains and all transitions
    (nan when T = 1); step_size: the adapted step size after the last transition."""

    log_px: Array
    stderr: Array
    acceptance_rate: Array
    step_size: Array


def annealing_schedule(kind: str, num_steps: int) -> np.ndarray:
    """beta_0 = 0 < ... < beta_T = 1 (float32 [T + 1]).

    linear: beta_t = t / T. sigmoid: beta_t proportional to sigmoid(delta (2 t / T - 1)),
    shifted and scaled to [0, 1]: small steps near both ends, where log w changes fastest.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown annealing schedule {kind!r}; known: {SCHEDULES}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = np.linspace(0.0, 1.0, num_steps + 1)
    if kind == "sigmoid" and num_steps > 1:
        s = 1.0 / (1.0 + np.exp(-SIGMOID_SHARPNESS * (2.0 * u - 1.0)))
        u = (s - s[0]) / (s[-1] - s[0])
    return u.astype(np.float32)


_hmc_kernel = hmc.build_kernel()


def hmc_step(key: Array, state: hmc.HMCState, log_density: Callable[[Array], Array], step_size: Array,
             leapfrog_steps: int) -> tuple[hmc.HMCState, Array]:
    """One HMC transition (BlackJAX's kernel: momentum ~ N(0, I), `leapfrog_steps` velocity-Verlet
    steps, Metropolis accept/reject) leaving exp(log_density) invariant.
    Returns (new state, acceptance probability min(1, exp(-Delta H)))."""
    new_state, info = _hmc_kernel(key, state, log_density, step_size, jnp.ones_like(state.position),
                                  leapfrog_steps)
    return new_state, info.acceptance_rate


def _log_mean_exp_and_stderr(log_w: Array) -> tuple[Array, Array]:
    """log (1/C) sum_c w_c and its delta-method standard error (as make_iwae's)."""
    c = log_w.shape[0]
    lse = jax.nn.logsumexp(log_w)
    return lse - math.log(c), log_mean_weight_stderr(lse, jax.nn.logsumexp(2.0 * log_w), c)


def make_ais(model: LatentVariableModel, family: VariationalFamily,
             config: AisConfig = AisConfig()) -> Callable[[Array, Params, Params, Array], AisTerms]:
    """AIS estimate of log p(x) for ONE datapoint, from the proposal q = family(q_params).

    Keys: chain c starts at z_0 ~ q drawn with fold_in(key, c) (make_iwae's draw c, so T = 1
    reproduces make_iwae with K = num_chains and the same key) and its transition t uses
    fold_in(fold_in(key, c), t). All chains of a datapoint share one step size.

    Step-size adaptation without bias: the step size of transition t is set from the acceptance
    rates of transition t - 1 in `adapt_chains` separate chains (ids num_chains, ...), never from
    the estimator chains. Conditionally on those chains, every estimator chain runs AIS with a
    fixed sequence of kernels, each invariant for its f_t, so E[w] = p(x) exactly. (Adapting on
    the estimator chains' own acceptance, as Cremer et al.'s code does, makes a chain's kernel
    depend on that chain's past; invariance of each kernel then no longer makes w unbiased,
    only consistent as the number of chains grows: Beskos et al. 2016, adaptive SMC.)
    Cost: `config.likelihood_evaluations()` evaluations of log p(x, z).
    """
    config.validate()
    betas = annealing_schedule(config.schedule, config.num_steps)
    num_chains = config.num_chains
    chain_ids = jnp.arange(num_chains + config.adapt_chains)
    transitions = (jnp.arange(1, config.num_steps), betas[:-2], betas[1:-1])

    def ais(key: Array, theta: Params, q_params: Params, x: Array) -> AisTerms:
        q = family.distribution(q_params)

        def log_q(z):
            with jax.numpy_rank_promotion("allow"):  # distrax broadcasts internally (see sample_and_log_prob)
                return q.log_prob(z)

        def log_joint(z):
            return model.log_joint(theta, x, z)

        def path_state(z, beta):
            """(log p(x, z) - log q(z), HMC state of f_beta at z): one gradient of each."""
            lq, grad_q = jax.value_and_grad(log_q)(z)
            lp, grad_p = jax.value_and_grad(log_joint)(z)
            return lp - lq, hmc.HMCState(z, (1 - beta) * lq + beta * lp, (1 - beta) * grad_q + beta * grad_p)

        def transition(carry, inputs):
            z, log_w, step_size = carry
            t, beta_prev, beta = inputs
            log_ratio, state = jax.vmap(path_state, in_axes=(0, None))(z, beta)
            log_w = log_w + (beta - beta_prev) * log_ratio
            log_f = lambda z_: (1 - beta) * log_q(z_) + beta * log_joint(z_)
            state, accept = jax.vmap(lambda c, s: hmc_step(
                jax.random.fold_in(jax.random.fold_in(key, c), t), s, log_f, step_size,
                config.leapfrog_steps))(chain_ids, state)
            factor = jnp.where(jnp.mean(accept[num_chains:]) > config.target_acceptance,
                               1 + config.adapt_rate, 1 - config.adapt_rate)
            step_size = jnp.clip(step_size * factor, config.min_step_size, config.max_step_size)
            return (state.position, log_w, step_size), accept[:num_chains]

        z0, _ = jax.vmap(lambda c: sample_and_log_prob(q, jax.random.fold_in(key, c)))(chain_ids)
        init = (z0, jnp.zeros(chain_ids.shape[0]), jnp.array(config.initial_step_size, jnp.float32))
        (z, log_w, step_size), accept = jax.lax.scan(transition, init, transitions)
        log_ratio = jax.vmap(lambda z_: log_joint(z_) - log_q(z_))(z)
        log_w = log_w + (1 - betas[-2]) * log_ratio
        log_px, stderr = _log_mean_exp_and_stderr(log_w[:num_chains])
        return AisTerms(log_px, stderr, jnp.mean(accept), step_size)

    return ais


def prior_monte_carlo(key: Array, model: LatentVariableModel, theta: Params, data: Array, *,
                      num_samples: int, chunk_size: int = IWAE_CHUNK_SIZE,
                      batch_size: Optional[int] = None) -> IwaeTerms:
    """Naive Monte Carlo log p(x_i) ~ log (1/K) sum_k p(x_i | z_k), z_k ~ p(z), for every row.

    This is importance sampling with q = p(z) (the weights p(x, z_k) / p(z_k) = p(x | z_k)), so it
    is `make_iwae` with the diagonal Gaussian family at init() = N(0, I), mapped over the rows with
    `map_datapoints`. Its relative variance is chi^2(p(z|x) || p(z)), which grows exponentially
    with the latent dimension when the posterior is narrower than the prior: the estimate then
    falls far below log p(x) unless K is astronomically large. Returns IwaeTerms with [N] arrays.
    """
    family = diagonal_gaussian(model.latent_dim)
    iwae = make_iwae(model, family, num_samples=num_samples, chunk_size=chunk_size)
    return map_datapoints(iwae, key, theta, tile_rows(family.init(), data.shape[0]), data, batch_size)
