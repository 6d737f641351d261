"""Per-datapoint variational parameters: per-row optimizer state, full-set fits, refinement."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vi_jax import local
from vi_jax.elbo import make_elbo, map_datapoints
from vi_jax.local import (LocalFitConfig, make_local_fit, make_refine, row_optimizer, take_rows,
                          tile_rows)

N, D = 6, 3


def table_and_grads():
    table = {"mean": jax.random.normal(jax.random.PRNGKey(0), (N, D)), "log_scale": jnp.zeros((N, D))}
    grad_fn = lambda p: jax.tree.map(lambda v: jnp.sin(3.0 * v) + 0.5, p)  # a deterministic "gradient"
    return table, grad_fn


def test_rows_outside_the_batch_stay_bit_identical_where_dense_adam_moves_them():
    table, grad_fn = table_and_grads()
    rows = jnp.array([1, 4])
    opt = row_optimizer(optax.adam(0.1))
    states = opt.init(table)
    t, s = table, states
    dense = optax.adam(0.1)
    d_table, d_state = table, dense.init(table)
    for step in range(20):
        batch = rows if step < 10 else jnp.array([1])  # row 4 leaves the batch after 10 steps
        t, s = opt.step_rows(t, s, batch, grad_fn(take_rows(t, batch)))
        # dense Adam: zero gradient outside the batch, but the momentum keeps moving those rows
        g = jax.tree.map(lambda v: jnp.zeros_like(v).at[batch].set(grad_fn(v)[batch]), d_table)
        u, d_state = dense.update(g, d_state, d_table)
        d_table = optax.apply_updates(d_table, u)
    untouched = jnp.array([0, 2, 3, 5])
    for name in table:
        assert jnp.array_equal(t[name][untouched], table[name][untouched])
    assert jnp.array_equal(s[0].count, jnp.array([0, 20, 0, 0, 10, 0]))  # per-row step counts
    # row 4 stopped exactly when it left the batch; dense Adam kept moving it
    frozen = jax.tree.map(lambda v: v[4], t)
    assert not jnp.array_equal(d_table["mean"][4], frozen["mean"])


def test_row_trajectory_equals_a_single_row_optax_run():
    table, grad_fn = table_and_grads()
    opt, single = row_optimizer(optax.adam(0.05)), optax.adam(0.05)
    t, s = table, opt.init(table)
    row = jax.tree.map(lambda v: v[2], table)
    row_state = single.init(row)
    for step in range(15):
        batch = jnp.array([2, (step % 5) + (step % 5 >= 2)])  # row 2 plus a varying other row
        t, s = opt.step_rows(t, s, batch, grad_fn(take_rows(t, batch)))
        u, row_state = single.update(grad_fn(row), row_state, row)
        row = optax.apply_updates(row, u)
    for name in table:  # equal up to float32 rounding (vmapped vs plain code may fuse differently)
        np.testing.assert_allclose(t[name][2], row[name], rtol=1e-6, atol=1e-7)


FIT = LocalFitConfig(learning_rate=1e-2, check_every=20, patience=3, max_steps=3000)


@pytest.mark.xdist_group("trained")
def test_local_fit_beats_the_encoder_and_converged_rows_stop(trained):
    vae, params, x = trained
    encoder_q = vae.encode(params["encoder"], x)
    fit = jax.jit(make_local_fit(vae.model, vae.family, FIT))
    result = fit(jax.random.PRNGKey(0), params["decoder"], encoder_q, x)
    elbo = make_elbo(vae.model, vae.family, num_samples=500)
    evaluate = jax.jit(lambda k, q: map_datapoints(elbo, k, params["decoder"], q, x).elbo)
    gain = np.asarray(evaluate(jax.random.PRNGKey(1), result.params) - evaluate(jax.random.PRNGKey(2), encoder_q))
    assert gain.mean() > 4 * gain.std(ddof=1) / np.sqrt(gain.size), gain
    assert bool(result.converged.all()) and int(result.steps.max()) < FIT.max_steps
    # rows that converged within a shorter cap (the median row's steps) do not move when it is raised
    cap = int(np.median(np.asarray(result.steps)))
    short = jax.jit(make_local_fit(vae.model, vae.family, dataclasses.replace(FIT, max_steps=cap)))(
        jax.random.PRNGKey(0), params["decoder"], encoder_q, x)
    done = np.asarray(short.converged)
    assert 0 < done.sum() < len(done), np.asarray(result.steps)
    for name in result.params:
        np.testing.assert_array_equal(np.asarray(result.params[name])[done], np.asarray(short.params[name])[done])


@pytest.mark.xdist_group("trained")
def test_fitting_in_blocks_of_active_rows_changes_no_row(trained, monkeypatch):
    """The CPU default with blocks of 7 and two cores: a wide block of 4 x 7 rows while 28 or
    more rows are active, the rest in blocks of 7 (the last one padded; converged rows leave the
    blocks at different checks, so later blocks mix rows afresh), against one block of 40: every
    row takes the same steps to the same place. Parameters may differ by float32 rounding,
    because a 7-row GEMM may round differently from a 40-row one (measured: 6e-8). A row fitted
    among 28 rows ends where it does among all 40 (measured: exactly; checked to the same
    tolerance)."""
    monkeypatch.setattr(local, "CPU_BLOCK_ROWS", 7)
    monkeypatch.setattr(local, "usable_cores", lambda: 2)
    assert local.rows_per_wide_block(FIT, 40) == 28
    assert local.rows_per_wide_block(dataclasses.replace(FIT, block_rows=7), 40) == 7  # a set bound holds
    vae, params, x = trained
    encoder_q = vae.encode(params["encoder"], x)
    config = dataclasses.replace(FIT, lr_reductions=1)
    blocked = jax.jit(make_local_fit(vae.model, vae.family, config))
    whole = jax.jit(make_local_fit(vae.model, vae.family, dataclasses.replace(config, block_rows=40)))(
        jax.random.PRNGKey(0), params["decoder"], encoder_q, x)
    every = blocked(jax.random.PRNGKey(0), params["decoder"], encoder_q, x)
    some = blocked(jax.random.PRNGKey(0), params["decoder"], jax.tree.map(lambda v: v[:28], encoder_q), x[:28])
    steps = np.asarray(whole.steps)
    assert bool(whole.converged.all()) and len(set(steps.tolist())) > 3, steps  # rows left at different checks
    np.testing.assert_array_equal(np.asarray(every.steps), steps)
    np.testing.assert_array_equal(np.asarray(some.steps), steps[:28])
    for name in encoder_q:
        np.testing.assert_allclose(every.params[name], whole.params[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(some.params[name], every.params[name][:28], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="block_rows"):
        LocalFitConfig(block_rows=-1)


@pytest.mark.xdist_group("trained")
def test_refine_is_a_prefix_of_a_longer_refinement(trained):
    vae, params, x = trained
    refine = jax.jit(make_refine(vae.model, vae.family, optax.adam(1e-2)), static_argnums=4)
    q0 = vae.encode(params["encoder"], x)
    zero = refine(jax.random.PRNGKey(3), params["decoder"], q0, x, 0)
    assert all(jnp.array_equal(zero[k], q0[k]) for k in q0)
    three = refine(jax.random.PRNGKey(3), params["decoder"], q0, x, 3)
    # the same 3 steps taken by hand with the row optimizer and the same keys
    opt = row_optimizer(optax.adam(1e-2))
    elbo = make_elbo(vae.model, vae.family)
    t, s = q0, opt.init(q0)
    for step in range(3):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(jax.random.PRNGKey(3), step), jnp.arange(len(x)))
        g = jax.vmap(jax.grad(lambda p, k, xi: -elbo(k, params["decoder"], p, xi).elbo))(t, keys, x)
        t, s = opt.update(g, s, t)
    for k in q0:
        np.testing.assert_allclose(three[k], t[k], rtol=1e-5, atol=1e-6)


def test_tile_rows_makes_a_table():
    table = tile_rows({"mean": jnp.zeros(2)}, 4)
    assert table["mean"].shape == (4, 2)


@pytest.mark.xdist_group("trained")
def test_a_fit_checkpointed_in_segments_and_resumed_equals_one_call(trained, tmp_path):
    from vi_jax.checkpoint import Checkpointer
    from vi_jax.local import fit_with_checkpoints, make_local_fitter
    vae, params, x = trained
    encoder_q = vae.encode(params["encoder"], x)
    config = dataclasses.replace(FIT, max_steps=400)
    whole = jax.jit(make_local_fit(vae.model, vae.family, config))(jax.random.PRNGKey(0), params["decoder"], encoder_q, x)
    fitter = make_local_fitter(vae.model, vae.family, config)
    meta = {"fit": dataclasses.asdict(config)}
    # a first process stops after one 4-check segment (as if killed); a second resumes
    first = jax.jit(fitter.advance)(jax.random.PRNGKey(0), params["decoder"], fitter.init(encoder_q), x, 4)
    Checkpointer(str(tmp_path)).save(4, first, {"config": meta, "seconds": 1000.0})
    resumed, seconds = fit_with_checkpoints(fitter, jax.random.PRNGKey(0), params["decoder"], encoder_q, x,
                                            Checkpointer(str(tmp_path)), meta, checks_per_segment=4, resume=True)
    chex.assert_trees_all_equal(whole, resumed)
    assert seconds > 1000.0  # the first process's seconds carry over
