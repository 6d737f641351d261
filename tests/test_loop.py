"""The one training loop (vi_jax.loop.run_epochs) on a toy epoch: keys, records, the NaN guard,
checkpoints and resume. The models' own loops are tested through it in test_train.py,
test_checkpoint.py, test_scale.py, test_cvae.py and test_vqvae.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax.checkpoint import Checkpointer
from vi_jax.loop import Checkpointing, run_epochs
from vi_jax.metrics import read_metrics
from vi_jax.train import TrainInfo

KEY = jax.random.PRNGKey(7)


def toy_epoch(key, state, data):
    """x + a draw of the epoch's key + data; three steps of loss = x."""
    x = state["x"] + jax.random.uniform(key) + data
    loss = jnp.full(3, x)
    return {"x": x}, TrainInfo(loss, -loss, loss, loss, jnp.ones(3))


START = {"x": jnp.float32(0)}


def summarize(epoch, infos):
    return {"train_elbo": float(infos.elbo.mean())}, {"train_loss": float(infos.loss.mean())}


def test_epoch_keys_records_and_evaluations(tmp_path):
    result = run_epochs(toy_epoch, START, jnp.float32(1), epoch_key=KEY, num_epochs=4,
                        summarize=summarize, evaluate=lambda epoch, state: {"eval": float(state["x"]) * 10}, eval_every=2,
                        metrics=str(tmp_path / "m.jsonl"), progress=False)
    expected = np.float32(0)
    for epoch in range(1, 5):  # epoch e draws fold_in(epoch_key, e)
        expected = expected + np.float32(jax.random.uniform(jax.random.fold_in(KEY, epoch))) + np.float32(1)
    assert float(result.state["x"]) == float(expected)
    assert [sorted(r) for r in result.history] == [["epoch", "train_elbo"], ["epoch", "eval", "train_elbo"]] * 2
    lines = read_metrics(str(tmp_path / "m.jsonl"))
    assert [(line["kind"], line["epoch"]) for line in lines] == [("train", 1), ("train", 2), ("eval", 2),
                                                                 ("train", 3), ("train", 4), ("eval", 4)]
    assert lines[0]["train_loss"] == -lines[0]["train_elbo"]


def test_a_resumed_loop_ends_where_the_uninterrupted_one_does(tmp_path):
    whole = run_epochs(toy_epoch, START, jnp.float32(1), epoch_key=KEY, num_epochs=5,
                       summarize=summarize, progress=False)
    plan = Checkpointing(Checkpointer(str(tmp_path)), {"toy": 1}, every=2)
    run_epochs(toy_epoch, START, jnp.float32(1), epoch_key=KEY, num_epochs=3, summarize=summarize,
               checkpointing=plan, progress=False)
    resumed = run_epochs(toy_epoch, START, jnp.float32(1), epoch_key=KEY, num_epochs=5,
                         summarize=summarize, checkpointing=plan._replace(resume=True), progress=False)
    assert float(resumed.state["x"]) == float(whole.state["x"]) and resumed.history == whole.history
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run_epochs(toy_epoch, START, jnp.float32(1), epoch_key=KEY, num_epochs=5, summarize=summarize,
                   checkpointing=plan, progress=False)


def test_the_nan_guard_names_the_step_the_quantity_and_the_last_verified_checkpoint(tmp_path):
    def diverging(key, state, data):  # the loss of the second step of epoch 3 is NaN
        x = state["x"] + 1
        loss = jnp.where((x == 3) & (jnp.arange(3) == 1), jnp.nan, x)
        return {"x": x}, TrainInfo(loss, jnp.full(3, -x), loss, loss, jnp.ones(3))

    plan = Checkpointing(Checkpointer(str(tmp_path)), {"toy": 1}, every=1)
    with pytest.raises(FloatingPointError, match=r"non-finite toy loss at epoch 3, step 1 of the epoch "
                                                 r"\(loss non-finite\): loss=nan, elbo=-3.0; try again; the last "
                                                 r"verified checkpoint is epoch 2 in "):
        run_epochs(diverging, START, None, epoch_key=KEY, num_epochs=5, summarize=summarize,
                   checkpointing=plan, progress=False, what="toy loss", advice="try again")
    assert Checkpointer(str(tmp_path)).latest_epoch() == 2  # nothing of the bad epoch was saved
