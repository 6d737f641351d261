"""Per-datapoint (non-amortized) variational parameters: a table with a leading N axis whose
optimizer state is per row, and a full-set fit against a fixed model.

Minibatch mode (`RowOptimizer`): gather the rows of a batch and their optimizer states, update
them with the vmapped single-row optax update (so each row keeps its own step count and
moments), scatter them back. Rows outside the batch stay bit-for-bit unchanged; dense Adam over
the whole table would move them through their momentum.

Full-set mode (`make_local_fit`): every row against a fixed model in one jitted loop, with a
per-datapoint convergence rule. Rows are vmapped in blocks (LocalFitConfig.block_rows); at each
convergence check the rows still moving are gathered into the leading blocks, so converged rows
stop moving and stop being computed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vi_jax.config import Rule, check_fields, count, real
from vi_jax.elbo import make_elbo
from vi_jax.families import VariationalFamily
from vi_jax.models import LatentVariableModel
from vi_jax.provenance import usable_cores

Array = jax.Array
Params = Any


def tile_rows(params: Params, num_rows: int) -> Params:
    """A table of num_rows copies of one datapoint's params (leading N axis)."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (num_rows,) + p.shape), params)


def take_rows(table: Params, rows: Array) -> Params:
    """The given rows of every leaf; a row index past the end reads the last row."""
    return jax.tree.map(lambda t: jnp.take(t, rows, axis=0, mode="clip"), table)


def put_rows(table: Params, rows: Array, values: Params) -> Params:
    """table with the given rows set to values; writes to row indices past the end are dropped."""
    return jax.tree.map(lambda t, v: t.at[rows].set(v, mode="drop"), table, values)


def where_rows(mask: Array, new: Params, old: Params) -> Params:
    """Row i from `new` where mask[i], else from `old` (mask [N], leaves [N, ...])."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)


class RowOptimizer(NamedTuple):
    """An optax optimizer applied independently to every row of a table.

    init(table) -> per-row states (leading N axis, including per-row step counts);
    update(grads, states, rows_params) for a batch of gathered rows -> (new rows, new states).
    """

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params], tuple[Params, Any]]

    def step_rows(self, table: Params, states: Any, rows: Array, row_grads: Params):
        """Apply one update to the given rows only; every other row and state is untouched."""
        new_rows, new_states = self.update(row_grads, take_rows(states, rows), take_rows(table, rows))
        return put_rows(table, rows, new_rows), put_rows(states, rows, new_states)


def row_optimizer(optimizer: optax.GradientTransformation) -> RowOptimizer:
    def update(grads, states, params):
        updates, states = jax.vmap(optimizer.update)(grads, states, params)
        return optax.apply_updates(params, updates), states

    return RowOptimizer(jax.vmap(optimizer.init), update)


@dataclasses.dataclass(frozen=True)
class LocalFitConfig:
    """Convergence rule of the reference protocol (Cremer et al. 2018): every `check_every`
    steps, compare the mean ELBO estimate of those steps with the row's best so far; a row that
    has not improved for `patience` checks in a row has converged and stops moving (the
    authors' "stop when more than 10 checks did not improve" is patience = 11). At most
    `max_steps` steps (rounded up to whole checks). Bad values raise at construction.
    `LocalFitConfig.named(name)`: one of the named protocols of LOCAL_FIT_PROTOCOLS."""

    learning_rate: float = 1e-3
    num_samples: int = 1
    check_every: int = 100
    patience: int = 10
    max_steps: int = 20_000
    # Beyond the reference protocol: when a row plateaus, multiply its learning rate by
    # lr_reduction_factor and continue, up to lr_reductions times, before it counts as converged.
    # A constant step size leaves Adam hovering ~lr x gradient noise below the optimum (measured on
    # the oracles: BENCHMARKS.md, "Local fit accuracy on the oracles").
    lr_reductions: int = 0
    lr_reduction_factor: float = 0.1
    # Rows are fitted in blocks of at most block_rows, active rows first; blocks with no active
    # row are skipped, so converged rows stop costing time. 0: the backend's default
    # (CPU_BLOCK_ROWS on CPU; on GPU/TPU all rows in one block, since a step there costs about
    # the same for any number of rows); with it and several CPU cores, while many rows are
    # active, they run several blocks at a time (rows_per_wide_block). A row's result does not
    # depend on which rows share its block; between block sizes (so also between one core and
    # several) it may differ by float rounding.
    block_rows: int = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "learning_rate": real(0), "num_samples": count(1), "check_every": count(1), "patience": count(1),
        "max_steps": count(1), "lr_reductions": count(0), "lr_reduction_factor": real(0, 1),
        "block_rows": count(0)}

    def __post_init__(self):
        check_fields(self, self.RULES)

    @classmethod
    def named(cls, name: str) -> "LocalFitConfig":
        """The named protocol `name` (see LOCAL_FIT_PROTOCOLS)."""
        if name not in LOCAL_FIT_PROTOCOLS:
            raise ValueError(f"unknown local fit protocol {name!r}; known: {tuple(LOCAL_FIT_PROTOCOLS)}")
        return LOCAL_FIT_PROTOCOLS[name]

    def protocol_name(self) -> str:
        """The name of the named protocol these settings are, or "custom". block_rows is ignored:
        it changes how rows are batched, not the protocol."""
        plain = dataclasses.replace(self, block_rows=0)
        return next((name for name, config in LOCAL_FIT_PROTOCOLS.items() if config == plain), "custom")


# The named protocols (select one with LocalFitConfig.named, GapProtocol(local_fit=name) or
# `--set protocol.local_fit=name`). Each starts wherever its caller says (GapProtocol.local_init);
# the authors started from the prior.
LOCAL_FIT_PROTOCOLS: dict[str, LocalFitConfig] = {
    # the project's default (Cremer et al.'s rule with one sample per step)
    "reference": LocalFitConfig(),
    # the authors' code (lxuechen/inference-suboptimality local_ffg.py, k = 100; chriscremer's
    # optimize_local_q.py has the same rule with 50): Adam lr 1e-3, check every 100 steps, stop
    # after more than 10 checks without improvement, no step cap in practice (their loop runs to
    # 999,999 steps). Read as one q per datapoint with 100 draws per step (chriscremer's form):
    # lxuechen's tensors instead hold 100 independent copies of each q with 1 draw each, and stop
    # the whole batch together on its mean loss, which our per-row rule cannot express. Two more
    # differences stay: their q is parameterised by log-variance (an Adam step of 1e-3 on it moves
    # log sigma by 5e-4, half of ours), and they estimate log p(z) - log q(z) at the draws where
    # the caller's KL form here (analytic for Gaussians) has no noise.
    "authors": LocalFitConfig(num_samples=100, patience=11, max_steps=1_000_000),
    # within 1e-3 nats of the exact q*_FFG on the linear-Gaussian oracle (tests/test_oracles.py):
    # 10 draws per step at lr 1e-2, the row's step size divided by 10 at each of 3 plateaus
    "accurate": LocalFitConfig(learning_rate=1e-2, num_samples=10, lr_reductions=3),
}


# On CPU, small blocks let converged rows stop costing time, with little padding left in the long
# tail; smaller ones lose more to per-step overhead (measured: BENCHMARKS.md, "Measurements
# behind the code").
CPU_BLOCK_ROWS = 128
# XLA's CPU thread pool has a thread per core the process may run on, and a step over 125 rows
# splits poorly across them, so several cores run 4 blocks as one while enough rows are active
# (all rows at once: out of cache). On one core it costs a little, and block_rows, a bound on
# memory, turns it off (measured: BENCHMARKS.md, "Measurements behind the code").
WIDE_BLOCK_FACTOR = 4


def rows_per_block(config: LocalFitConfig, num_rows: int) -> int:
    """The block size a fit of num_rows rows uses: at most config.block_rows (or the backend's
    default), with the blocks as equal as possible, so that little padding is computed while
    every row is active (N = 2000: 16 blocks of 125, not 15 of 128 and one of 80 padded to 128)."""
    most = config.block_rows or (CPU_BLOCK_ROWS if jax.default_backend() == "cpu" else num_rows)
    blocks = -(-num_rows // most)
    return -(-num_rows // blocks)


def rows_per_wide_block(config: LocalFitConfig, num_rows: int) -> int:
    """While at least this many rows are active, they run this many at a time: WIDE_BLOCK_FACTOR
    blocks with the CPU default block size (block_rows = 0) and several cores, else one block
    (no wide blocks)."""
    block = rows_per_block(config, num_rows)
    if config.block_rows == 0 and jax.default_backend() == "cpu" and usable_cores() > 1:
        return WIDE_BLOCK_FACTOR * block
    return block


class LocalFit(NamedTuple):
    params: Params  # fitted table (leading N axis)
    converged: Array  # bool [N]
    steps: Array  # int32 [N]: steps taken by each row
    best_average_elbo: Array  # [N]: best `check_every`-step average of the training ELBO estimates


class LocalFitState(NamedTuple):
    """Everything a full-set fit carries between checks (what a checkpoint must hold)."""

    table: Params
    opt_states: Any
    active: Array  # bool [N]: rows still moving
    best: Array  # [N]
    stale: Array  # int32 [N]: checks since the last improvement
    steps: Array  # int32 [N]
    reductions: Array  # int32 [N]: learning-rate reductions so far
    checks: Array  # int32 scalar: checks done (step t = checks * check_every + i)


class LocalFitter(NamedTuple):
    """init(init_table) -> state; advance(key, theta, state, data, until_check) -> state after
    running checks up to `until_check` (or until every row has converged); finish(state) -> LocalFit.
    Advancing in segments gives the same result as one call, so a long fit can be checkpointed
    between segments (see fit_with_checkpoints)."""

    init: Callable[[Params], LocalFitState]
    advance: Callable[..., LocalFitState]
    finish: Callable[[LocalFitState], LocalFit]
    max_checks: int


def make_local_fitter(model: LatentVariableModel, family: VariationalFamily, config: LocalFitConfig,
                      *, kl: str = "analytic", estimator: str = "reparam") -> LocalFitter:
    """Maximise L(x_i; q_i) over each q_i, in blocks of rows (config.block_rows), with the
    convergence rule of LocalFitConfig. Every row runs Adam(config.learning_rate) on its own
    ELBO (config.num_samples draws per step; step t of row i uses key fold_in(fold_in(key, t), i);
    gradients by `estimator`, see make_elbo). Jit `advance`."""
    elbo_fn = make_elbo(model, family, num_samples=config.num_samples, kl=kl, estimator=estimator)
    adam = optax.adam(config.learning_rate)
    max_checks = -(-config.max_steps // config.check_every)

    def grad_and_elbo(key, theta, q, x):
        value, grad = jax.value_and_grad(lambda p: elbo_fn(key, theta, p, x).elbo)(q)
        return grad, value

    def init(init_table: Params) -> LocalFitState:
        n = jax.tree.leaves(init_table)[0].shape[0]
        zeros = jnp.zeros(n, jnp.int32)
        return LocalFitState(init_table, jax.vmap(adam.init)(init_table), jnp.ones(n, bool), jnp.full(n, -jnp.inf),
                             zeros, zeros, zeros, jnp.array(0, jnp.int32))

    def advance(key: Array, theta: Params, state: LocalFitState, data: Array, until_check) -> LocalFitState:
        n = data.shape[0]
        block = rows_per_block(config, n)
        wide = rows_per_wide_block(config, n)
        padded_rows = -(-n // block) * block

        def check(s: LocalFitState) -> LocalFitState:
            ts = s.checks * config.check_every + jnp.arange(config.check_every)
            lr_scale = config.lr_reduction_factor ** s.reductions.astype(jnp.float32)
            # active rows first (stable, so in row order), padded with out-of-range indices: padding
            # reads the last row (take_rows), never moves, and its writes are dropped (put_rows)
            order = jnp.concatenate([jnp.argsort(~s.active, stable=True).astype(jnp.int32),
                                     jnp.full(padded_rows - n, n, jnp.int32)])

            def one_block(size, first, carry):
                """check_every steps on the rows order[first : first + size]; those not active stay."""
                table, states, average = carry
                rows = jax.lax.dynamic_slice_in_dim(order, first, size)
                moving = take_rows(s.active, rows) & (rows < n)
                x, row_lr_scale = take_rows(data, rows), take_rows(lr_scale, rows)

                def one_step(carry, t):
                    q, q_states = carry
                    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, t), rows)
                    grads, elbos = jax.vmap(grad_and_elbo, (0, None, 0, 0))(keys, theta, q, x)
                    updates, new_states = jax.vmap(adam.update)(jax.tree.map(jnp.negative, grads), q_states, q)
                    if config.lr_reductions:  # Adam's update is linear in its learning rate
                        updates = jax.tree.map(lambda u: u * row_lr_scale.reshape((-1,) + (1,) * (u.ndim - 1)),
                                               updates)
                    new_q = optax.apply_updates(q, updates)
                    return (where_rows(moving, new_q, q), where_rows(moving, new_states, q_states)), elbos

                (q, q_states), elbos = jax.lax.scan(one_step, (take_rows(table, rows), take_rows(states, rows)), ts)
                return (put_rows(table, rows, q), put_rows(states, rows, q_states),
                        put_rows(average, rows, elbos.mean(axis=0)))

            def blocks_of(size, first, count, carry):
                """`count` blocks of `size` rows, the first one starting at order[first]."""
                return jax.lax.fori_loop(0, count, lambda b, c: one_block(size, first + b * size, c), carry)

            active_rows = jnp.sum(s.active)
            carry = (s.table, s.opt_states, jnp.full(n, -jnp.inf))
            done = 0  # active rows fitted in wide blocks, which only ever hold active rows
            if block < wide <= n:
                carry = blocks_of(wide, 0, active_rows // wide, carry)
                done = active_rows // wide * wide
            table, states, average = blocks_of(block, done, -(-(active_rows - done) // block), carry)
            improved = s.active & (average > s.best)
            stale = jnp.where(improved, 0, s.stale + s.active)
            plateau = stale >= config.patience
            reduce = s.active & plateau & (s.reductions < config.lr_reductions)
            return LocalFitState(table, states, s.active & (~plateau | reduce),
                                 jnp.where(improved, average, s.best), jnp.where(reduce, 0, stale),
                                 s.steps + jnp.where(s.active, config.check_every, 0),
                                 s.reductions + reduce, s.checks + 1)

        def keep_going(s: LocalFitState):
            return jnp.any(s.active) & (s.checks < jnp.minimum(until_check, max_checks))

        return jax.lax.while_loop(keep_going, check, state)

    def finish(state: LocalFitState) -> LocalFit:
        return LocalFit(state.table, ~state.active, state.steps, state.best)

    return LocalFitter(init, advance, finish, max_checks)


def make_local_fit(model: LatentVariableModel, family: VariationalFamily, config: LocalFitConfig,
                   *, kl: str = "analytic", estimator: str = "reparam") -> Callable:
    """fit(key, theta, init_table, data) -> LocalFit in one call (see make_local_fitter). Jit it."""
    fitter = make_local_fitter(model, family, config, kl=kl, estimator=estimator)

    def fit(key: Array, theta: Params, init_table: Params, data: Array) -> LocalFit:
        return fitter.finish(fitter.advance(key, theta, fitter.init(init_table), data, fitter.max_checks))

    return fit


def fit_with_checkpoints(fitter: LocalFitter, key: Array, theta: Params, init_table: Params, data: Array,
                         checkpointer, config: dict, *, checks_per_segment: int = 10,
                         resume: bool = False) -> tuple[LocalFit, float]:
    """Run a full-set fit in segments of `checks_per_segment` checks, saving the LocalFitState
    (table, per-row optimizer states, convergence bookkeeping, check counter) after each one
    with a vi_jax.checkpoint.Checkpointer; resume=True continues from the newest segment.
    Returns (the fit, which equals the uninterrupted fit's; the seconds spent fitting, summed
    over the segments of every process that ran them)."""
    advance = jax.jit(fitter.advance)
    state, seconds = fitter.init(init_table), 0.0
    if resume:
        _, state, metadata = checkpointer.restore(state, config)
        seconds = metadata.get("seconds", 0.0)
    while int(state.checks) < fitter.max_checks and bool(jnp.any(state.active)):
        start = time.perf_counter()
        state = jax.block_until_ready(advance(key, theta, state, data, state.checks + checks_per_segment))
        seconds += time.perf_counter() - start
        checkpointer.save(int(state.checks), state, {"config": config, "seconds": seconds})
    return fitter.finish(state), seconds


def make_refine(model: LatentVariableModel, family: VariationalFamily,
                optimizer: optax.GradientTransformation, *, num_samples: int = 1,
                kl: str = "analytic", estimator: str = "reparam", return_path: bool = False) -> Callable:
    """refine(key, theta, init_table, data, num_steps) -> table after num_steps ascent steps
    (with return_path: the tables after 0, 1, ..., num_steps steps, stacked on a leading axis).

    Semi-amortized inference (Kim et al. 2018): start every row from the encoder's output and
    take a fixed number of per-row optimizer steps on its own ELBO, with no convergence rule.
    Differentiable, so a caller may backpropagate through the refinement. Step t of row i uses
    the same key as in `make_local_fit`, so refining k steps gives a prefix of a longer path.
    `num_steps` must be static under jit. `estimator`: the ELBO gradient's, see make_elbo.
    """
    elbo_fn = make_elbo(model, family, num_samples=num_samples, kl=kl, estimator=estimator)
    row_opt = row_optimizer(optimizer)

    def grad_of_elbo(key, theta, q, x):
        return jax.grad(lambda p: elbo_fn(key, theta, p, x).elbo)(q)

    def refine(key: Array, theta: Params, init_table: Params, data: Array, num_steps: int) -> Params:
        rows = jnp.arange(data.shape[0])

        def one_step(carry, t):
            table, states = carry
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, t), rows)
            grads = jax.vmap(grad_of_elbo, (0, None, 0, 0))(keys, theta, table, data)
            table, states = row_opt.update(jax.tree.map(jnp.negative, grads), states, table)
            return (table, states), (table if return_path else None)

        (table, _), path = jax.lax.scan(one_step, (init_table, row_opt.init(init_table)),
                                        jnp.arange(num_steps))
        if return_path:
            return jax.tree.map(lambda p0, p: jnp.concatenate([p0[None], p]), init_table, path)
        return table

    return refine
